"""FastDiscriminator: a drop-in for the 70x70 PatchGAN (keys, outputs, gradients), its norms fused with
LeakyReLU(0.2) in the same op and kernels; conversion by structure, checkpoints, refusals."""

import copy

import pytest
import torch
from helpers import PublicNLayerDiscriminator, generator_parity
from torch import nn

from fastcyclegan import Discriminator, FastDiscriminator, load_discriminator

SHAPE = (2, 3, 64, 64)  # 64x64 gives a 6x6 map of patch logits


@pytest.fixture(params=["pytorch", "triton"])
def path(request, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1" if request.param == "triton" else "0")
    return request.param


def _affine(d):
    """Learned-looking norm scales and shifts."""
    with torch.no_grad():
        for m in d.modules():
            if isinstance(m, nn.InstanceNorm2d) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
    return d


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_outputs_pass_parity_against_float64(dtype, affine, path):
    torch.manual_seed(0)
    reference = _affine(Discriminator(ndf=8, affine=affine)).eval()
    fast = FastDiscriminator.from_module(reference).to(dtype).eval()
    assert list(fast.state_dict()) == list(reference.state_dict())
    check = generator_parity(reference, fast, dtype, SHAPE)
    assert check.passed, check


def test_gradients_match_float64_and_biases_before_norms_get_exact_zeros(path):
    torch.manual_seed(0)
    reference = _affine(Discriminator(ndf=8, affine=True)).double()
    fast = FastDiscriminator.from_module(reference)
    x, target = torch.rand(SHAPE, dtype=torch.float64) * 2 - 1, torch.rand(2, 1, 6, 6, dtype=torch.float64)
    for model in (reference, fast):
        ((model(x) - target) ** 2).mean().backward()
    fast_params = dict(fast.named_parameters())
    for name, p in reference.named_parameters():
        got = fast_params[name].grad
        assert got is not None, name
        if name in ("model.2.bias", "model.5.bias", "model.8.bias"):  # before a norm: removed, exactly zero
            assert not got.any() and p.grad.abs().max() < 1e-10, name
        else:
            torch.testing.assert_close(got, p.grad, atol=1e-10, rtol=1e-8, msg=name)


def test_the_public_nlayer_discriminator_converts_and_matches():
    torch.manual_seed(0)
    public = PublicNLayerDiscriminator(ndf=8).eval()
    fast = FastDiscriminator.from_module(public).eval()
    x = torch.rand(SHAPE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fast(x), public(x), atol=1e-5, rtol=1e-4)
    assert fast.ndf == 8 and not fast.affine


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: PublicNLayerDiscriminator(ndf=8, norm="batch"), r"uses batch norm; .*: layer 'model\.3'"),
        (lambda: PublicNLayerDiscriminator(ndf=8, n_layers=4), r"is no 3-layer 70x70 PatchGAN at layer 'model\.8'"),
    ],
    ids=["batch-norm", "four-layers"],
)
def test_what_it_cannot_run_is_refused_naming_the_layer(build, message):
    with pytest.raises(ValueError, match=message):
        FastDiscriminator.from_module(build())


def test_spectral_norm_is_refused():
    d = Discriminator(ndf=8)
    nn.utils.spectral_norm(d.model[2])
    with pytest.raises(ValueError, match=r"forward hooks on 'model\.2' \(spectral norm\?\)"):
        FastDiscriminator.from_module(d)
    d = Discriminator(ndf=8)
    nn.utils.parametrizations.spectral_norm(d.model[5])
    with pytest.raises(ValueError, match=r"does not run: 'model\.5\.parametrizations"):
        FastDiscriminator.from_module(d)


def test_checkpoints_load_like_the_generators(tmp_path):
    torch.manual_seed(0)
    d = _affine(Discriminator(ndf=8, affine=True))
    nested = {"netD_A": {f"module.{k}": v for k, v in d.state_dict().items()}, "epoch": 3}
    torch.save(nested, tmp_path / "latest_net_D_A.pth")
    fast = load_discriminator(tmp_path / "latest_net_D_A.pth", fast=True).eval()
    assert isinstance(fast, FastDiscriminator) and fast.checkpoint_key == "netD_A" and fast.affine
    x = torch.rand(SHAPE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fast(x), d.eval()(x), atol=1e-5, rtol=1e-4)
    generator_keys = {"model.1.weight": torch.zeros(8, 3, 7, 7)}
    torch.save(generator_keys, tmp_path / "latest_net_G.pth")
    with pytest.raises(
        ValueError, match=r"latest_net_G\.pth.*is not a 3-layer PatchGAN .*has no 'model\.0\.weight' conv"
    ):
        load_discriminator(tmp_path / "latest_net_G.pth")


def test_a_copy_trains_like_the_reference_for_a_few_steps():
    """Three Adam steps of the LSGAN discriminator loss: the same losses as the reference to fp32 rounding."""
    torch.manual_seed(0)
    reference = Discriminator(ndf=8)
    fast = FastDiscriminator.from_module(copy.deepcopy(reference))
    losses = {}
    for name, model in (("reference", reference), ("fast", fast)):
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
        data = torch.Generator().manual_seed(1)
        losses[name] = []
        for _ in range(3):
            real, fake = (torch.rand(SHAPE, generator=data) * 2 - 1 for _ in range(2))
            optimizer.zero_grad()
            loss = 0.5 * ((model(real) - 1) ** 2).mean() + 0.5 * (model(fake) ** 2).mean()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    torch.testing.assert_close(losses["fast"], losses["reference"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("index, stride", [(0, (2, 1)), (2, (1, 2)), (11, (1, 2))])
def test_a_conv_of_non_square_stride_is_refused_not_run_as_square(index, stride):
    """A (2, 1) stride ran as (2, 2): output (1, 1, 6, 6) where the source gives (1, 1, 6, 13)."""
    d = Discriminator(ndf=8)
    d.model[index].stride = stride
    with pytest.raises(ValueError, match=rf"conv of stride \({stride[0]}, {stride[1]}\): 'model\.{index}'"):
        FastDiscriminator.from_module(d)


def test_cpu_autocast_inference_returns_the_references_dtype():
    """Under CPU bf16 autocast the pre-packed fp32 convs must not run (they bypass autocast: the output was
    fp32 where the reference's is bf16); the values stay within bf16 rounding of the reference's."""
    torch.manual_seed(0)
    reference = Discriminator(ndf=16).eval()
    fast = FastDiscriminator.from_module(reference).eval()
    x = torch.rand(2, 3, 128, 128) * 2 - 1  # ndf * H * W above the packed path's threshold
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, out = reference(x), fast(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), atol=0.05, rtol=0)
