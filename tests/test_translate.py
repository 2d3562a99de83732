"""fastcyclegan translate: outputs equal the reference module's, resume, --overwrite, and the error cases."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastcyclegan import Generator
from fastcyclegan.cli import main
from fastcyclegan.translate import find_images, load_image, translate

# the model as CPU users run it: the op's PyTorch path (the kernels are tested in test_ops.py)
pytestmark = pytest.mark.usefixtures("torch_fallback")

SIZE = 24


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(3)
    g = Generator(1, ngf=8).eval()
    path = tmp_path / "latest_net_G.pth"
    torch.save(g.state_dict(), path)
    return path, g


@pytest.fixture
def images(tmp_path):
    """RGB, grayscale and RGBA images of odd sizes, one in a nested folder, one corrupt, one not an image."""
    root = tmp_path / "in"
    (root / "nested" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (31, 37, 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (20, 28), dtype=np.uint8), mode="L").save(root / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), mode="RGBA").save(root / "nested" / "rgba.PNG")
    Image.fromarray(rng.integers(0, 256, (40, 26, 3), dtype=np.uint8)).save(root / "nested" / "deeper" / "x.jpeg")
    good = (root / "rgb.png").read_bytes()
    (root / "corrupt.png").write_bytes(good[: len(good) // 3])
    (root / "notes.txt").write_text("not an image")
    return root


def _expected(generator, path):
    """The reference module on the same preprocessing, written the way the public tensor2im writes."""
    with torch.no_grad():
        y = generator(load_image(path, SIZE)[None])
    return ((y[0].permute(1, 2, 0) + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).numpy()


def test_preprocessing_matches_the_public_test_transform(images):
    img = Image.open(images / "gray.jpg").convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(load_image(images / "gray.jpg", SIZE), expected)


@pytest.mark.parametrize("backend, workers", [("fast", 0), ("eager", 2)])
def test_outputs_match_the_reference_module(tmp_path, checkpoint, images, backend, workers):
    path, generator = checkpoint
    out = tmp_path / "out"
    summary = translate(path, images, out, size=SIZE, batch_size=3, device="cpu", backend=backend,
                        workers=workers, progress=False)  # fmt: skip
    assert summary.images == 4
    assert [p.name for p, _ in summary.skipped] == ["corrupt.png"]
    assert "unreadable image" in summary.skipped[0][1]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["gray.png", "nested/deeper/x.png", "nested/rgba.png", "rgb.png"]
    for src in find_images(images):
        if src.name == "corrupt.png":
            continue
        got = np.asarray(Image.open(out / src.relative_to(images).with_suffix(".png")))
        assert got.shape == (SIZE, SIZE, 3)
        diff = np.abs(got.astype(int) - _expected(generator, src).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float32 noise may cross a truncation step


def test_resume_skips_existing_outputs_and_overwrite_replaces_them(tmp_path, checkpoint, images):
    path, _ = checkpoint
    out = tmp_path / "out"
    translate(path, images, out, size=SIZE, device="cpu", workers=0, progress=False)
    (out / "rgb.png").unlink()
    marker = Image.new("RGB", (2, 2))
    marker.save(out / "gray.png")
    resumed = translate(path, images, out, size=SIZE, device="cpu", workers=0, progress=False)
    assert resumed.images == 1 and (out / "rgb.png").exists()
    assert Image.open(out / "gray.png").size == (2, 2)  # left alone
    assert sum("output exists" in why for _, why in resumed.skipped) == 3
    again = translate(path, images, out, size=SIZE, device="cpu", workers=0, overwrite=True, progress=False)
    assert again.images == 4 and Image.open(out / "gray.png").size == (SIZE, SIZE)
    assert not list(out.rglob(".*.partial"))


def test_cli_summary_line(tmp_path, checkpoint, images, capsys):
    path, _ = checkpoint
    code = main(["translate", str(path), str(images), str(tmp_path / "out"), "--size", str(SIZE),
                 "--batch-size", "2", "--device", "cpu", "--workers", "0", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "translated 4 images in" in captured.out and "img/s), skipped 1" in captured.out
    assert "skipped" in captured.err and "corrupt.png" in captured.err


def test_empty_folder_exits_non_zero(tmp_path, checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["translate", str(checkpoint[0]), str(tmp_path / "empty"), str(tmp_path / "out"), "--quiet"]) == 1
    assert "no PNG or JPEG images" in capsys.readouterr().err


def test_bad_checkpoint_gives_the_loader_message(tmp_path, images, capsys):
    bad = tmp_path / "latest_net_D.pth"
    torch.save({"model.0.weight": torch.zeros(1)}, bad)
    assert main(["translate", str(bad), str(images), str(tmp_path / "out"), "--quiet"]) == 2
    assert "latest_net_D.pth" in capsys.readouterr().err


def test_missing_input_folder_and_bad_options(tmp_path, checkpoint, capsys):
    assert main(["translate", str(checkpoint[0]), str(tmp_path / "nope"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--size must be >= 5"):
        translate(checkpoint[0], tmp_path, tmp_path / "out", size=2)
