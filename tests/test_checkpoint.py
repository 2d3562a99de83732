"""Loading real checkpoints: round trip, legacy buffers, DataParallel prefixes, and refusals."""

import subprocess
import sys

import pytest
import torch
from helpers import PublicResnetGenerator

from fastcyclegan import Discriminator, FastGenerator, Generator, load_generator

# the model as CPU users run it: the op's PyTorch path (the kernels are tested in test_ops.py)
pytestmark = pytest.mark.usefixtures("torch_fallback")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("num_blocks, ngf", [(9, 64), (6, 16), (2, 8)])
def test_round_trip_through_a_file_infers_the_architecture(tmp_path, num_blocks, ngf):
    g = Generator(num_blocks, ngf=ngf)
    path = tmp_path / "latest_net_G.pth"
    torch.save(g.state_dict(), path)
    loaded = load_generator(path)
    assert type(loaded) is Generator
    assert (loaded.num_blocks, loaded.ngf, loaded.in_channels, loaded.out_channels) == (num_blocks, ngf, 3, 3)
    assert _same_weights(loaded, g)


def test_other_channel_counts_are_inferred(tmp_path):
    g = Generator(3, in_channels=1, out_channels=4, ngf=8)
    loaded = load_generator(g.state_dict())
    assert (loaded.in_channels, loaded.out_channels) == (1, 4)


def test_fast_loading_returns_a_fast_generator(tmp_path):
    g = Generator(2, ngf=8)
    path = tmp_path / "g.pth"
    torch.save(g.state_dict(), path)
    fast = load_generator(path, fast=True)
    assert type(fast) is FastGenerator and _same_weights(fast, g)


def test_public_resnet_generator_checkpoint_loads():
    public = PublicResnetGenerator(ngf=16, n_blocks=9)
    assert _same_weights(load_generator(public.state_dict()), public)


def test_legacy_instance_norm_buffers_are_stripped(tmp_path):
    """Pre-0.4 PyTorch saved running_mean/var (and later num_batches_tracked) for every InstanceNorm."""
    g = Generator(2, ngf=8)
    state = g.state_dict()
    legacy = dict(state)
    for index, channels in [(2, 8), (5, 16), (8, 32), (13, 16), (16, 8)]:  # the norms of Generator(2)
        legacy[f"model.{index}.running_mean"] = torch.zeros(channels)
        legacy[f"model.{index}.running_var"] = torch.ones(channels)
        legacy[f"model.{index}.num_batches_tracked"] = torch.tensor(0)
    legacy["model.10.conv_block.2.running_mean"] = torch.zeros(32)
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    assert _same_weights(load_generator(path), g)


def test_dataparallel_prefix_is_stripped():
    g = Generator(2, ngf=8)
    wrapped = {f"module.{k}": v for k, v in g.state_dict().items()}
    assert _same_weights(load_generator(wrapped), g)


def test_wrapped_state_dict_is_unwrapped():
    g = Generator(1, ngf=8)
    assert _same_weights(load_generator({"state_dict": g.state_dict()}), g)


def _save(tmp_path, state, name="bad.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_discriminator_checkpoint_is_refused_naming_the_file(tmp_path):
    path = _save(tmp_path, Discriminator().state_dict(), "latest_net_D.pth")
    with pytest.raises(ValueError, match=r"latest_net_D\.pth.*PatchGAN discriminator"):
        load_generator(path)


def test_dropout_variant_is_refused_with_its_keys(tmp_path):
    path = _save(tmp_path, PublicResnetGenerator(ngf=8, n_blocks=2, use_dropout=True).state_dict())
    with pytest.raises(ValueError, match=r"bad\.pth.*dropout.*'model\.10\.conv_block\.6'"):
        load_generator(path)


def test_unet_checkpoint_is_refused(tmp_path):
    unet_like = {"model.model.0.weight": torch.zeros(8, 3, 4, 4), "model.model.1.model.1.weight": torch.zeros(4)}
    with pytest.raises(ValueError, match="U-Net"):
        load_generator(_save(tmp_path, unet_like))


def test_wrong_shapes_are_refused(tmp_path):
    state = Generator(1, ngf=8).state_dict()
    state["model.4.weight"] = torch.zeros(16, 8, 5, 5)
    with pytest.raises(
        ValueError, match=r"'model\.4\.weight' \(down conv\) is \(16, 8, 5, 5\), expected \(16, 8, 3, 3\)"
    ):
        load_generator(_save(tmp_path, state))


def test_truncated_file_is_refused(tmp_path):
    good = _save(tmp_path, Generator(1, ngf=8).state_dict(), "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"truncated\.pth.*truncated or not a PyTorch checkpoint"):
        load_generator(truncated)


def test_missing_file_and_non_tensor_content_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.pth.*does not exist"):
        load_generator(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        load_generator(_save(tmp_path, {"epoch": 3}))


class _Exploit:
    """Pickles as a call to exec: loading it with a plain pickle would write the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model.1.weight": torch.zeros(1), "payload": _Exploit(marker)}, path)
    with pytest.raises(ValueError, match=r"evil\.pth.*run code"):
        load_generator(path)
    assert not marker.exists()


def test_a_text_file_is_no_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("garbage, not weights")
    with pytest.raises(ValueError, match=r"notes\.pth.*neither a PyTorch checkpoint nor a safetensors file"):
        load_generator(path)


def test_zip_bomb_is_refused_before_it_is_read(tmp_path):
    """A 64 MiB entry of zeros deflates to ~64 KB: torch.save never compresses, so this is refused unread."""
    import zipfile

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", bytes(64 << 20))
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"bomb\.pth.*'archive/data/0' inflates from .* zip bomb"):
        load_generator(path)


_UNDER_4_GIB = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from fastcyclegan import load_generator
start = time.perf_counter()
try:
    load_generator(sys.argv[1])
except ValueError as err:
    print(f"ValueError after {time.perf_counter() - start:.2f} s: {err}")
"""


@pytest.mark.parametrize(
    "build, why",
    [
        # 2,000 one-element block keys and a stem expanded from one float: ~600 KB that once asked for 5.6 GB
        (
            lambda: {
                "model.1.weight": torch.zeros(1).expand(64, 3, 7, 7),
                "model.1.bias": torch.zeros(64),
                **{f"model.{10 + i}.conv_block.1.weight": torch.zeros(1) for i in range(2000)},
            },
            "no layer of a ResNet generator",
        ),
        # a stem of 20,000 x 3 x 7 x 7 over 4 stored bytes (28.8 GB declared)
        (
            lambda: {"model.1.weight": torch.zeros(1).expand(20000, 3, 7, 7), "model.1.bias": torch.zeros(20000)},
            "expanded tensor under 'model.1.weight'",
        ),
    ],
    ids=["many-blocks", "wide-stem"],
)
def test_checkpoint_bombs_are_refused_under_a_4_gib_address_limit(tmp_path, build, why):
    path = tmp_path / "bomb.pth"
    torch.save(build(), path)
    assert path.stat().st_size < 700_000
    done = subprocess.run([sys.executable, "-c", _UNDER_4_GIB, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ValueError after"), done.stderr[-2000:]
    assert why in done.stdout and float(done.stdout.split()[2]) < 10


def test_nan_weights_are_refused_naming_the_key(tmp_path):
    state = Generator(1, ngf=8).state_dict()
    state["model.10.conv_block.5.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"diverged\.pth.*non-finite weights: 'model\.10\.conv_block\.5\.weight' has 1"
    ):
        load_generator(path)


def test_a_json_file_is_named_as_no_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text('{"model.1.weight": [1, 2]}')
    with pytest.raises(ValueError, match=r"weights\.pth.*neither a PyTorch checkpoint nor a safetensors file") as info:
        load_generator(path)
    assert "run code" not in str(info.value)


def _fan_out(state, keys=300, levels=3):
    """One state dict reached through `levels` levels of one shared dict of `keys` keys: {k_i: {k_i: {k_i:
    state}}} in a ~225 KB pickle, 27 million paths when every reference is followed."""
    node = state
    for _ in range(levels):
        node = {f"k{i}": node for i in range(keys)}
    return node


def test_a_fan_out_checkpoint_is_searched_once_per_dict_under_a_3_gib_address_limit(tmp_path):
    path = tmp_path / "fanout.pth"
    torch.save(_fan_out(Generator(1, ngf=8).state_dict()), path)
    assert path.stat().st_size < 1_000_000
    script = _UNDER_4_GIB.replace("4 << 30", "3 << 30").replace(
        "    load_generator(sys.argv[1])", "    load_generator(sys.argv[1])\n    print('loaded')"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # one state dict, shared: taken (under the first path that reaches it), in seconds, in bounded memory
    assert done.stdout.strip() == "loaded", done.stdout


def test_a_checkpoint_that_nests_too_many_entries_is_refused_naming_the_file(tmp_path):
    loaded = {f"run{i}": {f"k{j}": {"note": j} for j in range(200)} for i in range(600)}  # 120,000 distinct dicts
    with pytest.raises(ValueError, match=r"checkpoint the given state dict nests more than 100,000 dict entries"):
        load_generator(loaded)


@pytest.mark.parametrize(
    "dtype", ["float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "int8"]
)
def test_weights_of_a_dtype_the_generator_does_not_compute_in_are_refused_naming_file_and_key(tmp_path, dtype):
    if not hasattr(torch, dtype):
        pytest.skip(f"this torch has no {dtype}")
    state = Generator(1, ngf=8).state_dict()
    state["model.1.weight"] = state["model.1.weight"].to(getattr(torch, dtype))
    path = tmp_path / "low.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"low\.pth.*{dtype} tensor under 'model\.1\.weight'; weights are float16"):
        load_generator(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_map_location_cuda_without_cuda_says_so_not_truncated(tmp_path):
    path = tmp_path / "g.pth"
    torch.save(Generator(1, ngf=8).state_dict(), path)
    with pytest.raises(ValueError, match=r"onto cuda: no CUDA device is available"):
        load_generator(path, map_location="cuda")
