"""Drop-in for the generators people actually have: ResNet generators written independently of this project
(affine norms, other attribute names, nesting, wrappers, bias-free convs, nested checkpoints, safetensors),
the refusals that name the real reason, and the CPU path's precision on a near-white photo.

The classes below are small stand-ins for third-party code, written here from their descriptions.
"""

import importlib.util
import pathlib

import numpy as np
import pytest
import torch
from helpers import PublicResnetGenerator, ThirdPartyGenerator, learned_affine
from torch import nn

from fastcyclegan import FastGenerator, Generator, load_generator
from fastcyclegan.parity import rms_error


@pytest.fixture(autouse=True)
def _pytorch_path(torch_fallback):
    """The op's PyTorch implementation: the path a CPU user of these checkpoints runs."""


class MainResGenerator(nn.Module):
    """Encoder `main`, residual stack `res` (blocks whose convs pad by themselves with padding_mode='reflect'
    and carry no bias), decoder `up`: other names, other nesting, same network."""

    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1 = nn.Conv2d(c, c, 3, padding=1, padding_mode="reflect", bias=False)
            self.n1 = nn.InstanceNorm2d(c)
            self.act = nn.ReLU()
            self.c2 = nn.Conv2d(c, c, 3, padding=1, padding_mode="reflect", bias=False)
            self.n2 = nn.InstanceNorm2d(c)

        def forward(self, x):
            return x + self.n2(self.c2(self.act(self.n1(self.c1(x)))))

    def __init__(self, num_blocks=2, ngf=8):
        super().__init__()
        self.main = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(),
            nn.Conv2d(ngf, 2 * ngf, 3, 2, 1),
            nn.InstanceNorm2d(2 * ngf),
            nn.ReLU(),
            nn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1),
            nn.InstanceNorm2d(4 * ngf),
            nn.ReLU(),
        )
        self.res = nn.Sequential(*[self.Res(4 * ngf) for _ in range(num_blocks)])
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, 1),
            nn.InstanceNorm2d(2 * ngf),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, 1),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(),
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, 3, 7),
            nn.Tanh(),
        )

    def forward(self, x):
        return self.up(self.res(self.main(x)))


def _photo(size=64) -> torch.Tensor:
    """A real photograph (matplotlib's sample Grace Hopper portrait), resized, in [-1, 1], (1, 3, size, size)."""
    from PIL import Image

    path = pathlib.Path(importlib.util.find_spec("matplotlib").origin).parent / "mpl-data/sample_data/grace_hopper.jpg"
    if not path.exists():
        pytest.skip(f"matplotlib's sample photograph is not installed ({path})")
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def _assert_same_outputs(original: nn.Module, fast: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = original(x), fast(x)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    assert diff < 1e-3, f"max |diff| {diff:.3g} in [-1, 1]"


def test_third_party_affine_generator_on_a_photograph(tmp_path):
    original = learned_affine(ThirdPartyGenerator(num_blocks=9)).eval()
    x = _photo()
    via_module = FastGenerator.from_module(original)
    assert (via_module.num_blocks, via_module.ngf, via_module.affine) == (9, 8, True)
    _assert_same_outputs(original, via_module, x)
    path = tmp_path / "third_party.pth"
    torch.save(original.state_dict(), path)
    via_file = load_generator(path, fast=True).eval()
    _assert_same_outputs(original, via_file, x)
    assert isinstance(via_file, FastGenerator) and via_file.affine


def test_affine_generator_round_trip_and_gradients():
    ref = learned_affine(Generator(2, ngf=8, affine=True))
    fast = FastGenerator.from_module(ref)
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert "model.2.weight" in ref.state_dict() and "model.10.conv_block.6.bias" in ref.state_dict()
    x, target = torch.randn(2, 3, 20, 20), torch.randn(2, 3, 20, 20)
    for model in (ref, fast):
        ((model(x) - target) ** 2).mean().backward()
    fast_params = dict(fast.named_parameters())
    for name, p in ref.named_parameters():  # conv biases before a norm: exactly 0 in FastGenerator, ~0 here
        assert fast_params[name].grad is not None, name
        torch.testing.assert_close(fast_params[name].grad, p.grad, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize(
    "build",
    [
        lambda: MainResGenerator(),
        lambda: nn.Sequential(Generator(2, ngf=8)),
        lambda: nn.DataParallel(PublicResnetGenerator(ngf=8, n_blocks=2)),
        pytest.param(lambda: torch.compile(learned_affine(ThirdPartyGenerator(num_blocks=2))), marks=pytest.mark.slow),
    ],
    ids=["main-res-names", "sequential-wrapped", "dataparallel", "torch-compile-wrapper"],
)
def test_any_layout_converts_and_loads(build, tmp_path):
    original = build().eval()
    x = torch.rand(1, 3, 28, 24) * 2 - 1
    _assert_same_outputs(original, FastGenerator.from_module(original).eval(), x)
    path = tmp_path / "g.pth"
    torch.save(original.state_dict(), path)
    _assert_same_outputs(original, load_generator(path, fast=True).eval(), x)


@pytest.mark.parametrize("nest", ["netG_A", "model", "state_dict", "G_A2B/params"])
def test_nested_checkpoints_say_which_key(tmp_path, nest, caplog):
    g = Generator(1, ngf=8)
    checkpoint = {"epoch": 3, "optimizer": {"lr": 2e-4}}
    node = checkpoint
    *parents, last = nest.split("/")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = {f"_orig_mod.{k}": v for k, v in g.state_dict().items()}
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    with caplog.at_level("INFO", logger="fastcyclegan"):
        loaded = load_generator(tmp_path / "ckpt.pth")
    assert loaded.checkpoint_key == nest and f"'{nest}'" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), g.state_dict().values()))


def test_several_nested_state_dicts_need_a_key(tmp_path):
    a, b = Generator(1, ngf=8), Generator(1, ngf=8)
    torch.save({"netG_A": a.state_dict(), "netG_B": b.state_dict()}, tmp_path / "both.pth")
    with pytest.raises(ValueError, match=r"several state dicts \(netG_A, netG_B\).*key="):
        load_generator(tmp_path / "both.pth")
    loaded = load_generator(tmp_path / "both.pth", key="netG_B")
    assert torch.equal(loaded.state_dict()["model.1.weight"], b.state_dict()["model.1.weight"])


def test_safetensors_checkpoint(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors is an optional dependency")
    g = learned_affine(Generator(1, ngf=8, affine=True))
    safetensors.save_file({k: v.contiguous() for k, v in g.state_dict().items()}, tmp_path / "g.safetensors")
    loaded = load_generator(tmp_path / "g.safetensors", fast=True)
    assert loaded.affine and torch.equal(loaded.state_dict()["model.2.weight"], g.state_dict()["model.2.weight"])


class ZeroPadBlockGenerator(PublicResnetGenerator):
    """padding_type='zero' in the public code: the block convs pad by themselves with zeros."""

    def __init__(self):
        super().__init__(ngf=8, n_blocks=2)
        for block in self.model[10:12]:
            layers = [m for m in block.conv_block if not isinstance(m, nn.ReflectionPad2d)]
            for conv in layers[0], layers[3]:
                conv.padding = (1, 1)
            block.conv_block = nn.Sequential(*layers)


class UpsampleDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        g = Generator(1, ngf=8)
        self.model = nn.Sequential(*list(g.model)[:11], nn.Upsample(scale_factor=2), nn.Conv2d(32, 16, 3, padding=1))


@pytest.mark.parametrize(
    "module, reason",
    [
        (PublicResnetGenerator(ngf=8, n_blocks=2, norm="batch"), r"batch norm.*layer 'model\.2'"),
        (PublicResnetGenerator(ngf=8, n_blocks=2, use_dropout=True), r"dropout.*'model\.10\.conv_block\.4'"),
        (ZeroPadBlockGenerator(), r"zero padding: conv 'model\.10\.conv_block\.0'"),
        (UpsampleDecoder(), r"upsample \+ conv decoder.*layer 'model\.11'"),
        (
            nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 8, 7), nn.InstanceNorm2d(8, track_running_stats=True)),
            r"running statistics: layer '2'",
        ),
    ],
    ids=["batch-norm", "dropout", "zero-padding", "upsample-decoder", "running-stats"],
)
def test_from_module_refusals_name_the_layer(module, reason):
    with pytest.raises(ValueError, match=reason):
        FastGenerator.from_module(module)


def _discriminator_state():
    from fastcyclegan import Discriminator

    return Discriminator(ndf=8).state_dict()


def _unet_state():
    down = nn.Conv2d(3, 8, 4, 2, 1)
    return {"model.model.0.weight": down.weight, "model.model.1.model.1.weight": torch.zeros(16, 8, 4, 4)}


@pytest.mark.parametrize(
    "state, reason",
    [
        (lambda: PublicResnetGenerator(ngf=8, n_blocks=2, norm="batch").state_dict(), r"batch norm.*'model\.2\."),
        (_discriminator_state, "PatchGAN discriminator"),
        (_unet_state, "U-Net"),
        (
            lambda: {**Generator(1, ngf=8).state_dict(), "model.11.weight": torch.zeros(16, 32, 3, 3)},
            r"'model\.11\.weight' \(up conv\) is \(16, 32, 3, 3\).*upsample \+ conv decoder",
        ),
        (lambda: {1: torch.zeros(3)}, "key that is not a string: 1"),
        (
            lambda: {**Generator(1, ngf=8).state_dict(), "model.1.weight": torch.zeros(8, 3, 7, 7, dtype=torch.int64)},
            r"torch\.int64 tensor under 'model\.1\.weight'",
        ),
        (
            lambda: {**Generator(1, ngf=8).state_dict(), "model.1.weight": torch.zeros(8, 3, 7, 7, device="meta")},
            r"holds a meta tensor under 'model\.1\.weight', not weights",
        ),
        (
            lambda: {**Generator(1, ngf=8).state_dict(), "model.1.bias": torch.zeros(8).to_sparse()},
            r"holds a torch\.sparse_coo tensor under 'model\.1\.bias', not weights",
        ),
    ],
    ids=["batch-norm", "discriminator", "unet", "upsample-decoder", "integer-key", "integer-weights", "meta", "sparse"],
)
def test_state_dict_refusals_say_why(state, reason):
    with pytest.raises(ValueError, match=reason) as info:
        load_generator(state())
    assert "num_blocks=0" not in str(info.value)


def test_replicate_padding_state_dict_loads_as_documented_reflection():
    """A state dict cannot show padding: it loads as reflection, the public default (documented); the
    module itself, which shows its layers, is refused."""
    module = PublicResnetGenerator(ngf=8, n_blocks=1, padding_type="replicate")
    assert load_generator(module.state_dict()).num_blocks == 1
    with pytest.raises(ValueError, match="replicate padding"):
        FastGenerator.from_module(module)


def test_near_white_photo_keeps_its_precision_on_the_cpu_path():
    """Every pixel in [0.97, 1]: the stem's activations have |mean| >> std. FastGenerator's RMS error against
    float64 stays within 2x the eager module's (the PyTorch path's statistics are of shifted values)."""
    torch.manual_seed(0)
    ref = Generator(9, ngf=16).eval()
    fast = FastGenerator.from_module(ref).eval()
    pixels = 0.97 + 0.03 * torch.rand(1, 3, 64, 64)
    x = pixels * 2 - 1
    with torch.no_grad():
        expected = ref.double()(x.double())
        ref.float()
        err_fast, err_ref = rms_error(fast(x), expected), rms_error(ref(x), expected)
    assert err_fast <= 2 * err_ref, (err_fast, err_ref)


class _ReluAfterAdd(nn.Module):
    """A residual block that applies a ReLU module after its add: visible as an extra layer."""

    def __init__(self, block):
        super().__init__()
        self.conv_block, self.relu = block.conv_block, nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.conv_block(x))


def _variant(edit):
    g = Generator(2, ngf=8)
    edit(g.model)
    return g


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: _variant(lambda m: m.__setitem__(10, _ReluAfterAdd(m[10]))),
            r"at layer 'model\.10\.relu' \(ReLU\(\)\): a relu where the generator has a conv3x3/1",
        ),
        (lambda: _variant(lambda m: m.__setitem__(len(m) - 1, nn.ReLU())), r"a relu where the generator has a tanh"),
        (lambda: nn.Sequential(Generator(2, ngf=8), nn.Tanh()), r"it has '1'"),
        (
            lambda: _variant(lambda m: m.__setitem__(0, nn.ReflectionPad2d((3, 3, 2, 4)))),
            r"pads unevenly: 'model\.0'",
        ),
        (
            lambda: _variant(
                lambda m: m.__setitem__(
                    12, nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1, dilation=2)
                )
            ),
            r"transposed conv that does not exactly double H and W: 'model\.12'",
        ),
    ],
    ids=["relu-after-add", "relu-for-tanh", "extra-tanh", "uneven-stem-pad", "dilated-transposed-conv"],
)
def test_modules_whose_layers_differ_from_the_papers_are_refused_naming_the_layer(build, message):
    """Each of these ran before and gave other outputs (max |diff| up to 1.4, or 36 px for 32)."""
    with pytest.raises(ValueError, match=message):
        FastGenerator.from_module(build())


def test_a_module_with_forward_hooks_is_refused():
    g = Generator(2, ngf=8)
    g.model[3].register_forward_hook(lambda module, args, out: out * 2)
    with pytest.raises(ValueError, match=r"forward hooks on 'model\.3'"):
        FastGenerator.from_module(g)
