"""fastcyclegan translate: outputs equal the reference module's, resume, --overwrite, and the error cases."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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
    summary = translate(
        path, images, out, size=SIZE, batch_size=3, device="cpu", backend=backend, workers=workers, progress=False
    )
    assert summary.images == 4 and summary.skipped == []
    assert [p.name for p, _ in summary.failed] == ["corrupt.png"]
    assert "unreadable image" in summary.failed[0][1]
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
    assert resumed.other_size == [(out / "gray.png", (2, 2))]  # the marker was not made at this size: said
    assert f"skipped 3 existing (1 of them 2x2 or another size, not the {SIZE}x{SIZE} this run makes" in resumed.line()
    again = translate(path, images, out, size=SIZE, device="cpu", workers=0, overwrite=True, progress=False)
    assert again.images == 4 and Image.open(out / "gray.png").size == (SIZE, SIZE)
    assert not list(out.rglob(".*.partial"))


def test_cli_summary_line(tmp_path, checkpoint, images, capsys):
    path, _ = checkpoint
    code = main(
        [
            "translate",
            str(path),
            str(images),
            str(tmp_path / "out"),
            "--size",
            str(SIZE),
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # one input failed, named
    assert "translated 4 images in" in captured.out and "img/s), skipped 0 existing, failed 1; bound by" in captured.out
    assert "failed" in captured.err and "corrupt.png" in captured.err
    (images / "corrupt.png").unlink()
    again = main(["translate", str(path), str(images), str(tmp_path / "out"), "--size", str(SIZE), "--quiet"])
    assert again == 0 and "translated 0 images" in capsys.readouterr().out  # all there: a finished resume


def test_empty_folder_exits_non_zero(tmp_path, checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["translate", str(checkpoint[0]), str(tmp_path / "empty"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "no PNG or JPEG images" in capsys.readouterr().err


def test_bad_checkpoint_gives_the_loader_message(tmp_path, images, capsys):
    bad = tmp_path / "latest_net_D.pth"
    torch.save({"model.0.weight": torch.zeros(1)}, bad)
    assert main(["translate", str(bad), str(images), str(tmp_path / "out"), "--quiet"]) == 2
    assert "latest_net_D.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # a job that never ran leaves no output folder behind


def test_missing_input_folder_and_bad_options(tmp_path, checkpoint, capsys):
    assert main(["translate", str(checkpoint[0]), str(tmp_path / "nope"), str(tmp_path / "out"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--size must be >= 5"):
        translate(checkpoint[0], tmp_path, tmp_path / "out", size=2)


def test_an_output_that_is_a_file_fails_before_the_model_loads(tmp_path, images, capsys):
    taken = tmp_path / "out.png"
    taken.write_bytes(b"x")
    missing_checkpoint = tmp_path / "no.pth"  # never opened: the output is checked first
    assert main(["translate", str(missing_checkpoint), str(images), str(taken), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fastcyclegan translate: output '{taken}' exists and is not a folder"


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_folder_equal_to_the_input_is_refused(tmp_path, checkpoint, images, overwrite):
    before = {p: p.read_bytes() for p in images.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="is the input folder"):
        translate(checkpoint[0], images, images / "nested" / "..", overwrite=overwrite, progress=False)
    assert {p: p.read_bytes() for p in images.rglob("*") if p.is_file()} == before


def test_an_output_folder_inside_the_input_is_never_read_as_input(tmp_path, checkpoint, images):
    out = images / "out"
    first = translate(checkpoint[0], images, out, size=SIZE, device="cpu", workers=0, progress=False)
    second = translate(checkpoint[0], images, out, size=SIZE, device="cpu", workers=0, progress=False, overwrite=True)
    assert first.images == second.images == 4 and not (out / "out").exists()
    assert sorted(p.name for p in out.rglob("*.png")) == ["gray.png", "rgb.png", "rgba.png", "x.png"]


def test_a_full_disk_stops_names_what_was_not_written_and_leaves_no_temporaries(
    tmp_path, checkpoint, images, monkeypatch, capsys
):
    """A save that fails with ENOSPC after writing part of its file, as a full disk does."""
    import errno

    from PIL import Image as PILImage

    def full_disk(self, fp, format=None, **params):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", full_disk)
    out = tmp_path / "out"
    code = main(
        [
            "translate",
            str(checkpoint[0]),
            str(images),
            str(out),
            "--size",
            str(SIZE),
            "--batch-size",
            "1",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    for name in ("rgb.png", "gray.jpg", "rgba.PNG", "x.jpeg", "corrupt.png"):
        assert name in err, err  # every input not written is named
    assert "No space left on device" in err
    assert not [p for p in out.rglob("*") if p.is_file()]  # neither outputs nor temporaries


def test_two_writers_of_one_output_never_corrupt_it(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from fastcyclegan.translate import _write_png

    out = tmp_path / "same.png"
    arrays = [torch.full((64, 64, 3), v, dtype=torch.uint8) for v in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda a: _write_png(a, out), arrays))
    pixels = np.asarray(Image.open(out))
    assert pixels.shape == (64, 64, 3) and (pixels == pixels.flat[0]).all()
    assert [p.name for p in tmp_path.iterdir()] == ["same.png"]


def test_outputs_waiting_for_the_writers_are_bounded(tmp_path, checkpoint, monkeypatch):
    """With a slow writer (50 ms a PNG) the loop waits for it instead of holding every output in memory."""
    import time as _time

    from fastcyclegan import translate as module

    root = tmp_path / "many"
    root.mkdir()
    for k in range(60):
        Image.fromarray(np.full((8, 8, 3), k, dtype=np.uint8)).save(root / f"{k:02d}.png")
    written, produced, most = [], [0], [0]
    slow_write, real_to_uint8 = module._write_png, module.to_uint8

    def slow(array, out):
        _time.sleep(0.05)
        slow_write(array, out)
        written.append(out)

    def counting(y):
        produced[0] += y.shape[0]
        most[0] = max(most[0], produced[0] - len(written))
        return real_to_uint8(y)

    monkeypatch.setattr(module, "_write_png", slow)
    monkeypatch.setattr(module, "to_uint8", counting)
    summary = translate(
        checkpoint[0], root, tmp_path / "out", size=8, batch_size=2, device="cpu", workers=0, progress=False
    )
    assert summary.images == 60 and summary.stages["write"] > 0  # the loop did wait for the writers
    n_writers = max(2, min(8, os.cpu_count() or 1))
    assert most[0] <= max(2 * 2, 4 * n_writers) + 2 < 60  # the bound plus the batch being computed


def test_the_summary_names_the_stage_that_bounds_the_run():
    from fastcyclegan.translate import Summary

    for stage in ("decode", "compute", "write"):
        summary = Summary(images=10, seconds=2.0, stages={"decode": 0.1, "compute": 0.2, "write": 0.3} | {stage: 1.5})
        assert summary.bound_by == stage and f"bound by {stage} (decode " in summary.line()


def test_ctrl_c_is_one_line(tmp_path, checkpoint, images, monkeypatch, capsys):
    from fastcyclegan import translate as module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "translate", interrupted)
    assert main(["translate", str(checkpoint[0]), str(images), str(tmp_path / "out"), "--quiet"]) == 130
    assert capsys.readouterr().err.strip().count("\n") == 0


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_only_temporaries_whose_writer_is_gone_are_removed(tmp_path):
    """A killed run's temporaries (its pid dead on this host) go; another job's live writer's stay, however
    many jobs share the folder; another host's go only when a day old (a shared filesystem)."""
    from fastcyclegan.translate import _HOST, remove_stale_temporaries

    names = {
        "dead": f".fcgtmp-{_HOST}-{_dead_pid()}-k3j_x9a1.partial",
        "live": f".fcgtmp-{_HOST}-{os.getpid()}-q8w2e7r1.partial",
        "foreign_new": ".fcgtmp-0badc0de-17-aaaaaaaa.partial",
        "foreign_old": ".fcgtmp-0badc0de-18-bbbbbbbb.partial",
    }
    for name in (*names.values(), ".a.png", "a.png.partial", ".fcgtmp-notes.partial"):
        (tmp_path / name).write_bytes(b"x")
    day_ago = time.time() - 25 * 3600
    os.utime(tmp_path / names["foreign_old"], (day_ago, day_ago))
    assert remove_stale_temporaries([tmp_path / "a.png", tmp_path / "missing" / "c.png"]) == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([names["live"], names["foreign_new"], ".a.png", "a.png.partial", ".fcgtmp-notes.partial"])


def test_a_second_job_leaves_a_live_writers_temporary_alone(tmp_path, checkpoint, images, monkeypatch):
    """Job 1 is writing out/rgb.png (its temporary open) when job 2 starts on the same folder and outputs:
    job 2's clean-up of killed runs' temporaries must not take job 1's, whose rename would then fail."""
    from fastcyclegan import translate as module
    from fastcyclegan.translate import plan_translation

    path, _ = checkpoint
    out = tmp_path / "out"
    writing, release = threading.Event(), threading.Event()
    real_pil = module._pil()

    class SlowImage:  # job 1's PNG encoder, held open until job 2 has started
        @staticmethod
        def fromarray(array):
            picture = real_pil.fromarray(array)

            class Held:
                def save(self, f, format):
                    writing.set()
                    release.wait(30)
                    picture.save(f, format=format)

            return Held()

    monkeypatch.setattr(module, "_pil", lambda: SlowImage)
    errors = []
    writer = threading.Thread(
        target=lambda: _record(
            errors, module._write_png, torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8), out / "rgb.png"
        )
    )
    writer.start()
    assert writing.wait(30)
    plan_translation(path, images, out, size=SIZE, device="cpu", workers=0, progress=False)  # job 2 starts
    release.set()
    writer.join(30)
    assert errors == [] and (out / "rgb.png").exists()


def _record(errors, fn, *args):
    try:
        fn(*args)
    except Exception as err:
        errors.append(err)


def test_names_up_to_the_filesystem_limit_are_translated(tmp_path, checkpoint):
    path, _ = checkpoint
    root = tmp_path / "in"
    root.mkdir()
    name = "x" * 251 + ".png"  # 255 bytes: the longest name most filesystems take
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / name)
    summary = translate(path, root, tmp_path / "out", size=SIZE, device="cpu", workers=0, progress=False)
    assert summary.images == 1 and not summary.failed and (tmp_path / "out" / name).exists()


def test_a_grayscale_generator_reads_and_writes_grayscale_pngs(tmp_path, images):
    """The public code's --input_nc 1 --output_nc 1: inputs converted to grayscale, outputs written as
    one-channel PNGs equal to the reference module's."""
    torch.manual_seed(3)
    generator = Generator(1, in_channels=1, out_channels=1, ngf=8).eval()
    path = tmp_path / "gray.pth"
    torch.save(generator.state_dict(), path)
    out = tmp_path / "out"
    summary = translate(path, images, out, size=SIZE, device="cpu", workers=0, progress=False)
    assert summary.images == 4
    written = Image.open(out / "rgb.png")
    assert written.mode == "L" and written.size == (SIZE, SIZE)
    with torch.no_grad():
        y = generator(load_image(images / "rgb.png", SIZE, channels=1)[None])
    expected = ((y[0, 0] + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(np.asarray(written).astype(int) - expected).max() <= 1


def test_a_generator_of_other_channel_counts_is_refused_before_any_work(tmp_path, images, capsys):
    path = tmp_path / "four.pth"
    torch.save(Generator(1, in_channels=4, ngf=8).state_dict(), path)
    code = main(["translate", str(path), str(images), str(tmp_path / "out"), "--size", str(SIZE), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "4 input and 3 output channels; translate reads and writes RGB (3) or grayscale (1)" in err
    assert "\n" not in err and not (tmp_path / "out").exists()


def test_only_the_png_and_jpeg_decoders_read_inputs_whatever_their_names(tmp_path, checkpoint, monkeypatch):
    """An EPS file named .png would go to Ghostscript (a PostScript interpreter) through Image.open; TIFF,
    WebP, BMP and ICO under .png/.jpg names would be decoded. Each is named as not PNG/JPEG and never opened."""
    path, _ = checkpoint
    root = tmp_path / "in"
    root.mkdir()
    picture = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    picture.save(root / "real.png")
    for name, fmt in (("tiff.png", "TIFF"), ("webp.jpg", "WEBP"), ("bmp.png", "BMP"), ("ico.jpeg", "ICO")):
        picture.save(root / name, format=fmt)
    (root / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(Path(p).name) or real_open(p, *a, **k))
    summary = translate(path, root, tmp_path / "out", size=SIZE, device="cpu", workers=0, progress=False)
    assert summary.images == 1 and opened == ["real.png"]
    failed = {p.name: why for p, why in summary.failed}
    assert sorted(failed) == ["bmp.png", "eps.png", "ico.jpeg", "tiff.png", "webp.jpg"]
    assert all("not a PNG or JPEG file" in why for why in failed.values()), failed


def test_a_folder_that_cannot_be_listed_is_named_and_the_run_exits_1(tmp_path, checkpoint, images, capsys, monkeypatch):
    locked = images / "locked"
    locked.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(locked / "hidden.png")
    real_scandir = os.scandir

    def scandir(path="."):  # as chmod 000 does for a user (the tests may run as root, who reads anything)
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    path, _ = checkpoint
    out = tmp_path / "out"
    code = main(["translate", str(path), str(images), str(out), "--size", str(SIZE), "--quiet", "--workers", "0"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1 and f"failed {locked}: folder could not be listed: Permission denied" in err


def test_a_symlinked_folder_is_followed_once_even_when_it_loops(tmp_path):
    root = tmp_path / "in"
    (root / "real").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "real" / "a.png")
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "elsewhere" / "b.png")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # a link back up the tree
    assert [p.relative_to(root).as_posix() for p in find_images(root)] == ["linked/b.png", "real/a.png"]


@pytest.fixture(scope="module")
def long_job(tmp_path_factory):
    """A run of several seconds on a CPU: 300 photos-sized inputs for a 6-block generator at 192x192."""
    root = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    for k in range(300):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "in" / f"{k:03d}.png")
    torch.manual_seed(0)
    torch.save(Generator(6, ngf=16).state_dict(), root / "g.pth")
    return root


def _start(job, out, *command_prefix):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TRITON_INTERPRET"))}
    command = [*command_prefix, sys.executable, "-m", "fastcyclegan", "translate", str(job / "g.pth"), str(job / "in")]
    command += [str(out), "--size", "192", "--batch-size", "4", "--workers", "2", "--quiet"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_outputs(out, process, count=8):
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.png"))) < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"


@pytest.mark.parametrize("when", ["starting", "running"])
def test_sigterm_to_the_process_group_is_an_interrupt_one_line_exit_130(long_job, tmp_path, when):
    """GNU timeout, docker stop and Slurm signal the whole process group, the decoding workers included;
    while the program starts (torch loading) or while it runs."""
    out = tmp_path / "out"
    process = _start(long_job, out, "setsid")  # its own process group, as under GNU timeout
    if when == "running":
        _wait_for_outputs(out, process)
    else:
        time.sleep(1.0)  # the command line's handler is in place within ~50 ms; torch takes seconds to load
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip() == "fastcyclegan translate: interrupted; finished outputs are kept, rerun to resume"
    assert not list(out.glob(".*.partial")) and all(Image.open(p).size == (192, 192) for p in out.glob("*.png"))


def test_a_killed_decoding_worker_ends_the_run_with_exit_1_naming_what_was_not_written(long_job, tmp_path):
    out = tmp_path / "out"
    process = _start(long_job, out)
    _wait_for_outputs(out, process)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGKILL)  # as the OOM killer does
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr[-2000:]
    written = {p.stem for p in out.glob("*.png")}
    named = {line.split()[1] for line in stderr.splitlines() if line.startswith("failed ")}
    assert len(written) + len(named) == 300 and not written & {Path(n).stem for n in named}
    assert "stopped after a decoding process died" in stderr and "Traceback" not in stderr
    assert re.search(r"translated \d+ images in .*, failed [1-9]\d*;", stdout)


def test_what_stands_at_an_output_name_counts_as_done_only_when_it_is_a_png(tmp_path, checkpoint, images):
    """A folder in the way is named; an empty file or a link at an output name is no finished output: the
    run writes it again."""
    path, _ = checkpoint
    out = tmp_path / "out"
    (out / "nested").mkdir(parents=True)
    (out / "rgb.png").mkdir()  # a folder where rgb.png goes
    (out / "gray.png").write_bytes(b"")  # an empty file
    (out / "nested" / "rgba.png").symlink_to(tmp_path / "elsewhere.png")  # a dangling link
    summary = translate(path, images, out, size=SIZE, device="cpu", workers=0, progress=False)
    failed = {p.name: why for p, why in summary.failed}
    assert "a folder is where its output" in failed["rgb.png"]
    assert summary.images == 3 and not summary.skipped
    assert Image.open(out / "gray.png").size == (SIZE, SIZE) and not (out / "nested" / "rgba.png").is_symlink()


def test_small_choices_are_said_or_bounded(tmp_path, checkpoint, images, capsys):
    """--size 30 makes 32x32 outputs (said, once); --workers 64 for 5 inputs starts 5 decoding processes."""
    from fastcyclegan.translate import plan_translation

    plan = plan_translation(checkpoint[0], images, tmp_path / "out", size=30, device="cpu", workers=64, progress=False)
    assert plan.workers == len(plan.todo) == 5 and plan.summary.size == 32  # 4 images and a corrupt one
    assert "at --size 30 the generator's outputs are 32x32" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["/proc/self/fcg-out", "/sys/fcg-out"])
def test_an_output_under_a_kernel_filesystem_is_refused_before_the_model_loads(tmp_path, images, capsys, where):
    code = main(["translate", str(tmp_path / "missing.pth"), str(images), where, "--quiet"])
    assert code == 2 and "a kernel filesystem, not storage" in capsys.readouterr().err


def test_a_leftover_world_size_of_one_is_a_plain_run(tmp_path, checkpoint, images, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    code = main(["translate", str(checkpoint[0]), str(images), str(tmp_path / "out"), "--size", str(SIZE), "--quiet"])
    assert code == 1 and "translated 4 images" in capsys.readouterr().out  # the corrupt input fails, named


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_take_the_mode_the_umask_gives_any_new_file(tmp_path, umask, mode):
    """As a file the user writes by hand: not mkstemp's 0600 (a shared results folder would be unreadable)."""
    target = str(tmp_path / "a.png")
    code = (
        f"import os, torch; os.umask({umask}); from pathlib import Path; from fastcyclegan.translate import "
        f"_write_png; _write_png(torch.zeros(8, 8, 3, dtype=torch.uint8), Path({target!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_grayscale_png_reads_as_its_8_bit_copy_not_white(tmp_path, channels):
    """Pillow's convert clips 16-bit values at 255: 99.9% of such a picture came out white."""
    gradient = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64 - 1)
    wide = (gradient * 65535).round().astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray((wide / 257).round().astype(np.uint8), mode="L").save(tmp_path / "narrow.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    from fastcyclegan.translate import load_image

    wide_in, narrow_in = (load_image(tmp_path / n, 32, channels) for n in ("wide.png", "narrow.png"))
    assert torch.equal(wide_in, narrow_in)
    assert (wide_in >= 0.99).float().mean() < 0.1  # a gradient, not a white picture


def test_the_exif_orientation_is_applied_as_image_tools_do(tmp_path):
    """A phone photo is stored sideways with orientation 6 (rotate 90 degrees clockwise to view)."""
    from fastcyclegan.translate import load_image

    upright = Image.new("RGB", (40, 20), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue, right half red, as a viewer shows it
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    phone, reference = load_image(tmp_path / "phone.jpg", 32), load_image(tmp_path / "upright.jpg", 32)
    assert (phone - reference).abs().mean() < 0.05


_SPIN_ENV = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def _spin_after(prelude: str, **env) -> str:
    """GOMP_SPINCOUNT as a fresh process sees it after `prelude` and `cli.short_openmp_spin()`, then torch."""
    code = f"import os\n{prelude}\nfrom fastcyclegan import cli\ncli.short_openmp_spin()\nimport torch\n"
    code += "print(os.environ.get('GOMP_SPINCOUNT'))"
    clean = {k: v for k, v in os.environ.items() if k not in _SPIN_ENV}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_translate_lets_openmp_threads_sleep_soon_unless_the_user_chose(monkeypatch):
    from fastcyclegan import cli

    assert _spin_after("") == cli.OPENMP_SPIN  # set before torch loads libgomp, which reads it then
    assert _spin_after("", OMP_WAIT_POLICY="active") == "None"  # the user's choice
    assert _spin_after("", GOMP_SPINCOUNT="7") == "7"
    assert _spin_after("import torch") == "None"  # too late to take effect: left alone
    calls = []
    monkeypatch.setattr(cli, "short_openmp_spin", lambda: calls.append(1))
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # pytest keeps its own Ctrl-C handling
    for command in (["translate"], ["export"]):
        with pytest.raises(SystemExit):  # arguments missing: argparse exits after main's first lines
            main(command)
    assert calls == [1]  # translate only


def test_decoding_processes_fork_with_the_stop_signals_held_back(tmp_path, checkpoint, images, monkeypatch):
    """A SIGTERM to the process group while the decoding processes start (GNU timeout right after launch) must
    not kill one before it ignores the signal: they fork with SIGINT and SIGTERM blocked, and unblock them once
    ignored. Without it the run ended as 'a decoding process died' (exit 1) instead of interrupted (130)."""
    path, _ = checkpoint
    masks = []
    start = torch.utils.data.DataLoader.__iter__

    def recorded(loader):
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))
        return start(loader)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", recorded)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    translate(path, images, tmp_path / "out", size=SIZE, device="cpu", workers=1, progress=False)
    assert masks and {signal.SIGINT, signal.SIGTERM} <= masks[0]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before  # restored after the fork

    code = (
        "import os, signal\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # before any thread starts\n"
        "from fastcyclegan.translate import _leave_signals_to_the_main_process\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # held back, as in a worker that was just forked\n"
        "_leave_signals_to_the_main_process(0)\n"
        "print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, set())), 'alive')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[] alive", (done.returncode, done.stdout, done.stderr)
