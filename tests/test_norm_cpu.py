"""fastcyclegan.norm_cpu: the C kernel of the fused norm's CPU forward (fp32, NCHW and channels-last) against
the float64 reference and the PyTorch implementation of the same contract; its build, cache and fallbacks."""

import pytest
import torch
from helpers import reference_instance_norm, to_format

from fastcyclegan import norm_cpu, norm_torch, ops
from fastcyclegan.layout import padded_empty

pytestmark = pytest.mark.usefixtures("torch_fallback")


def _residual(kind, x, pad):
    """None, a contiguous tensor of x's layout, or the interior view of a padded one (FastGenerator's)."""
    if kind is None:
        return None
    if kind == "interior":
        big = padded_empty(x, pad + 1).normal_()
        return big[:, :, pad + 1 : pad + 1 + x.shape[2], pad + 1 : pad + 1 + x.shape[3]]
    return torch.randn_like(x)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize(
    "shape, pad",
    [((2, 5, 6, 7), p) for p in (0, 1, 3)]
    + [((1, 3, 100, 97), 3), ((2, 4, 1, 1), 0), ((3, 1, 5, 4), 1), ((2, 130, 6, 7), 1)],
)
@pytest.mark.parametrize("residual", [None, "contiguous", "interior"])
@pytest.mark.parametrize("act", [False, True, 0.2], ids=["none", "relu", "leaky"])
def test_the_kernel_matches_the_float64_reference(cpu_kernel, channels_last, shape, pad, residual, act):
    """Every layout, border width, residual kind and activation; planes larger than one statistics block
    (100x97 > 8192 values), 1x1 planes, one channel, 130 channels (two of the channels-last loops' blocks of 64
    and a tail); an affine norm whose mean is far from zero."""
    c = shape[1]
    gen = torch.Generator().manual_seed(sum(shape) + pad)
    x = to_format(torch.randn(shape, generator=gen) * 3 + 40, channels_last)
    r = _residual(residual, x, pad)
    weight, bias = torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen)
    out = padded_empty(x, pad)
    slope = act if act is not True else 0.0
    with torch.no_grad():
        mean, rstd = norm_cpu.instance_norm_forward(
            x, r, out, weight=weight, bias=bias, relu=bool(act), negative_slope=slope
        )
    expected = reference_instance_norm(x, r, relu=act, pad=pad, weight=weight, bias=bias)
    # fp32 output rounding only (statistics and transform in double): a hundredth of eager's error here
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last and c > 1 else torch.contiguous_format)
    xd = x.double()
    torch.testing.assert_close(mean.double(), xd.mean(dim=(2, 3)), atol=0, rtol=1e-7)
    var = xd.var(dim=(2, 3), unbiased=False)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(var + 1e-5), atol=0, rtol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("pad, residual", [(0, None), (1, "interior"), (3, "contiguous")])
@pytest.mark.parametrize("act", [True, 0.2, False], ids=["relu", "leaky", "none"])
@pytest.mark.parametrize("channels", [16, 80])
def test_bf16_is_read_and_written_as_bf16_within_one_rounding(cpu_kernel, channels_last, pad, residual, act, channels):
    """bf16 x, residual and output: each output within one bf16 rounding of the float64 reference (of the
    bf16 inputs), as the PyTorch implementation's (which converts to fp32 and back); NaN kept. 80 channels: a
    block of 64 and a tail in the channels-last loops."""
    gen = torch.Generator().manual_seed(pad)
    x = to_format(torch.randn(2, channels, 9, 11, generator=gen) * 2 + 3, channels_last).bfloat16()
    x[0, 0, 0, 0] = float("nan")  # poisons plane (0, 0) only
    r = _residual(residual, x, pad)
    kw = dict(relu=bool(act), negative_slope=act if act is not True else 0.0)
    outs = []
    for module in (norm_cpu, norm_torch):
        out = padded_empty(x, pad)
        module.instance_norm_forward(x, r, out, **kw)
        assert out.dtype == torch.bfloat16
        outs.append(out)
    expected = reference_instance_norm(x.float().nan_to_num(), r, relu=act, pad=pad)
    for out in outs:
        ok = out[1:].double()
        torch.testing.assert_close(ok, expected[1:], atol=2**-7 * expected[1:].abs().max().item(), rtol=2**-8)
        assert out[0, 0].isnan().all() and not out[0, 1:].isnan().any()
    torch.testing.assert_close(outs[0][1:], outs[1][1:], atol=2**-7 * 4, rtol=2**-7)
    rounded = expected[1:].to(torch.bfloat16)  # round to nearest even, as torch: truncation would miss half
    assert (outs[0][1:] == rounded).double().mean() > 0.98


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_the_kernel_equals_the_pytorch_implementation_and_is_more_exact(cpu_kernel, channels_last):
    """The same contract as norm_torch (outputs to fp32 rounding, the same statistics), and on a near-white
    plane (|mean| / std = 1000) a smaller error against float64: its statistics run in double, its transform in
    double (NCHW) or in fp32 on x - mean (channels-last), never on x itself."""
    x = to_format(torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(0)) + 1000, channels_last)
    r = torch.randn_like(x)
    outs = []
    for module in (norm_cpu, norm_torch):
        out = padded_empty(x, 1)
        stats = module.instance_norm_forward(x, r, out, relu=True)
        outs.append((out, *stats))
    for ours, theirs in zip(*outs):
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-5)
    expected = reference_instance_norm(x, r, relu=True, pad=1)
    errors = [(out.double() - expected).square().mean().sqrt().item() for out, _, _ in outs]
    assert errors[0] < 2e-7 and errors[0] < errors[1] / 4, errors


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (1, 3, 100, 97), (2, 4, 1, 1), (3, 1, 5, 4)])
@pytest.mark.parametrize("act", [True, 0.2], ids=["relu", "leaky"])
@pytest.mark.parametrize("affine", [False, True])
def test_the_backward_matches_the_float64_formula(cpu_kernel, shape, act, affine, monkeypatch):
    """NCHW backward with an activation (the kernel's; without one ATen's is faster): dx and the per-plane
    sums of g and g * xhat against the same formula in float64."""
    calls = []
    real = cpu_kernel.fcg_instance_norm_backward_f32
    monkeypatch.setattr(cpu_kernel, "fcg_instance_norm_backward_f32", lambda *a: calls.append(a) or real(*a))
    gen = torch.Generator().manual_seed(sum(shape))
    x, dy = torch.randn(shape, generator=gen) * 3 + 40, torch.randn(shape, generator=gen)
    c = shape[1]
    weight, bias = (torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen)) if affine else (None, None)
    kw = dict(weight=weight, bias=bias, relu=bool(act), negative_slope=act if act is not True else 0.0)
    mean, rstd = norm_cpu.instance_norm_forward(x, None, torch.empty_like(x), **kw)
    ours = norm_cpu.instance_norm_backward(dy, x, mean, rstd, **kw)
    assert len(calls) == 1
    xd, wd, bd = x.double(), *(None if t is None else t.double() for t in (weight, bias))
    mean_d, rstd_d = norm_torch.instance_norm_forward(
        xd, None, torch.empty_like(xd), **{**kw, "weight": wd, "bias": bd}
    )
    expected = norm_torch.instance_norm_backward(dy.double(), xd, mean_d, rstd_d, **{**kw, "weight": wd, "bias": bd})
    for what, a, b in zip(("dx", "sum_g", "sum_gx"), ours, expected):
        assert a.dtype == torch.float32 and a.shape == b.shape, what
        torch.testing.assert_close(a.double(), b, atol=2e-5 * b.abs().max().item() + 1e-6, rtol=1e-5, msg=what)


def test_nan_and_constant_planes_as_aten():
    """A NaN poisons its own plane only; a constant plane with eps 0 gets rstd 0 and zeros, as ATen's."""
    x = torch.full((1, 2, 4, 4), 3.0)
    x[0, 1, 0, 0] = float("nan")
    out = torch.empty_like(x)
    mean, rstd = norm_cpu.instance_norm_forward(x, None, out, eps=0.0)
    expected_out = torch.empty_like(x)
    expected_mean, expected_rstd = norm_torch.instance_norm_forward(x, None, expected_out, eps=0.0)
    torch.testing.assert_close(out, expected_out, equal_nan=True)
    torch.testing.assert_close(mean, expected_mean, equal_nan=True)
    torch.testing.assert_close(rstd, expected_rstd, equal_nan=True)
    assert torch.equal(out[0, 0], torch.zeros(4, 4)) and out[0, 1].isnan().all()


def test_the_op_runs_the_kernel_in_fp32_and_bf16_and_norm_torch_otherwise(cpu_kernel, monkeypatch):
    """ops.instance_norm on a CPU: fp32 calls reach the C kernel (plain inference, and the registered op under
    autograd: forward and backward), bf16 its forward, float64 and fp16 norm_torch; `disabled()` sends fp32
    there too."""
    calls = []
    real = cpu_kernel.fcg_instance_norm_forward
    monkeypatch.setattr(cpu_kernel, "fcg_instance_norm_forward", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        y = ops.instance_norm(x, relu=True, pad=1)
    assert len(calls) == 1
    torch.testing.assert_close(y.double(), reference_instance_norm(x, relu=True, pad=1), atol=2e-6, rtol=1e-6)
    backwards = []
    real_backward = cpu_kernel.fcg_instance_norm_backward_f32
    monkeypatch.setattr(
        cpu_kernel, "fcg_instance_norm_backward_f32", lambda *a: backwards.append(a) or real_backward(*a)
    )
    xg = x.clone().requires_grad_()
    torch.ops.fastcyclegan.instance_norm(xg, None, None, None, True, 1e-5, 1, None, 0.0)[0].sum().backward()
    assert len(calls) == 2 and len(backwards) == 1 and xg.grad is not None
    torch.ops.fastcyclegan.instance_norm(xg, None, None, None, False, 1e-5, 1, None, 0.0)[0].sum().backward()
    assert len(calls) == 3 and len(backwards) == 1  # no activation: ATen's batch-norm backward is faster
    with torch.no_grad():
        ops.instance_norm(x.double(), pad=1)
        ops.instance_norm(x.half(), pad=1)
        with norm_cpu.disabled():
            ops.instance_norm(x, pad=1)
        assert len(calls) == 3
        ops.instance_norm(x.bfloat16(), pad=1)
    assert len(calls) == 4
