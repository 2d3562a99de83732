"""fastcyclegan.ops.instance_norm: parity with a float64 reference, gradients, layouts, errors, compile.

The Triton kernels run through the interpreter here (conftest.py); `torch_fallback` tests the PyTorch path.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from fastcyclegan.kernels import instance_norm_backward, instance_norm_forward, plan
from helpers import assert_close, reference_instance_norm, to_format

from fastcyclegan import ops
from fastcyclegan.layout import padded_empty
from fastcyclegan.ops import fold_reflect_pad

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (shape, forced split): batch 1, odd planes, a 1x1 plane, channels off the block size, split planes, N = 0
SHAPES = [
    ((1, 3, 7, 5), None),
    ((2, 5, 33, 31), None),
    ((2, 5, 33, 31), 3),
    ((2, 70, 1, 1), None),
    ((1, 67, 9, 8), 4),
    ((0, 4, 6, 6), None),
]
# (relu, residual, reflection pad written around the output, affine): the generator uses the last six
MODES = [
    (False, False, 0, False),
    (True, False, 0, False),
    (True, False, 1, False),
    (False, True, 1, False),
    (True, True, 3, False),
    (True, False, 1, True),
    (False, True, 1, True),
]


def _mode_id(mode):
    relu, residual, pad, affine = mode
    return "in" + "+affine" * affine + "+relu" * relu + "+add" * residual + f"+pad{pad}" * bool(pad)


def _affine_params(c, affine, dtype=torch.float32, device="cpu"):
    """A learned-looking scale (0.5 .. 1.5, some negative) and shift, or (None, None)."""
    if not affine:
        return None, None
    weight = (torch.rand(c, device=device) + 0.5) * torch.where(torch.arange(c, device=device) % 5 == 4, -1.0, 1.0)
    return weight.to(dtype), (torch.randn(c, device=device) * 0.5).to(dtype)


# fp16 runs the same kernel code as bf16 (another storage type, other rounding): it takes the shapes that
# exercise rounding and masking, not the slow wide ones (channel blocks and 1x1 planes are dtype-blind)
_DTYPE_SHAPES = [(d, s) for d in DTYPES for s in SHAPES if d != torch.float16 or s[0][1] < 64]
# the wide shapes (two channel blocks; a forced split) are the slowest in the interpreter: they take the modes
# that use every epilogue feature (relu, residual, pad 1 and 3, affine); the narrow shapes take them all
_WIDE_MODES = [(True, True, 3, False), (False, True, 1, True), (True, False, 1, True)]


def _every_case(test):
    """Parametrize over every (shape, split) x dtype (fp16 on the narrow shapes) x layout x mode (the wide
    shapes with the modes that combine every feature)."""
    cases = [
        pytest.param(d, s, k, cl, mode, id=f"{d}-{(s, k)}-{'cl' if cl else 'nchw'}-{_mode_id(mode)}")
        for d, (s, k) in _DTYPE_SHAPES
        for cl in (False, True)
        for mode in (_WIDE_MODES if s[1] >= 64 else MODES)
    ]
    return pytest.mark.parametrize("dtype, shape, split, channels_last, mode", cases)(test)


def _inputs(shape, dtype, channels_last, residual, pad=0, scale=3.0, shift=0.5, device="cpu"):
    """x, and a residual that is, when padding, the interior view of a padded tensor (as in the generator)."""
    x = to_format(torch.randn(shape, device=device) * scale + shift, channels_last).to(dtype)
    if not residual:
        return x, None
    n, c, h, w = shape
    r = to_format(torch.randn(n, c, h + 2 * pad, w + 2 * pad, device=device), channels_last).to(dtype)
    return x, r[:, :, pad : pad + h, pad : pad + w]


def _pad_for(shape, pad):
    return min(pad, shape[2] - 1, shape[3] - 1)  # reflection needs pad < H and W (a 1x1 plane takes none)


def _forward(x, residual=None, relu=False, pad=0, split=None, weight=None, bias=None):
    """The forward launcher on its own: (y, mean, rstd) with y allocated as the op allocates it."""
    y = padded_empty(x, pad)
    mean, rstd = instance_norm_forward(x, residual, y, weight=weight, bias=bias, relu=relu, eps=1e-5, split=split)
    return y, mean, rstd


def test_reference_equals_torch_instance_norm():
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(reference_instance_norm(x), F.instance_norm(x, eps=1e-5), atol=1e-12, rtol=1e-12)


@_every_case
def test_forward_and_gradients_match_float64(shape, split, dtype, channels_last, mode):
    """One forward checked against float64, then its backward against float64 autograd (the kernels directly
    when a split is forced, the public op and its autograd formula otherwise)."""
    relu, has_residual, pad, affine = mode
    pad = _pad_for(shape, pad)
    x, r = _inputs(shape, dtype, channels_last, has_residual, pad)
    n, c, h, w = shape
    weight, bias = _affine_params(c, affine)
    dy = to_format(torch.randn(n, c, h + 2 * pad, w + 2 * pad), channels_last).to(dtype)
    if split is None:
        xg = x.clone().requires_grad_()
        rg = r.clone().requires_grad_() if has_residual else None
        wg, bg = (weight.clone().requires_grad_(), bias.clone().requires_grad_()) if affine else (None, None)
        y = ops.instance_norm(xg, rg, weight=wg, bias=bg, relu=relu, pad=pad)
    else:
        y, mean, rstd = _forward(x, r, relu, pad, split, weight, bias)
    assert y.dtype == dtype and y.shape == (n, c, h + 2 * pad, w + 2 * pad)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(y, reference_instance_norm(x, r, relu, pad=pad, weight=weight, bias=bias), dtype, "forward")

    x64 = x.double().requires_grad_()
    r64 = r.double().requires_grad_() if has_residual else None
    w64, b64 = (weight.double().requires_grad_(), bias.double().requires_grad_()) if affine else (None, None)
    reference_instance_norm(x64, r64, relu, pad=pad, weight=w64, bias=b64).backward(dy.double())
    if split is None:
        y.backward(dy)
        dx, dr = xg.grad, (rg.grad if has_residual else None)
        dw, db = (wg.grad, bg.grad) if affine else (None, None)
    else:
        dz = fold_reflect_pad(dy, pad) if pad else dy
        dx, sum_g, sum_gx = instance_norm_backward(dz, x, mean, rstd, weight=weight, bias=bias, relu=relu, split=split)
        dr, dw, db = dz, sum_gx.sum(0), sum_g.sum(0)
    assert dx.dtype == dtype and dx.shape == x.shape
    # Where relu's input is within rounding of 0, fp32 and float64 may disagree on its mask: leave those out
    # (and the planes that hold such positions, for the weight and bias sums).
    pre = reference_instance_norm(x, weight=weight, bias=bias)
    settled = pre.abs() > 1e-3 if relu else torch.ones(shape, dtype=torch.bool)
    assert_close(dx[settled], x64.grad[settled], dtype, "dx")
    if has_residual:
        assert_close(dr, r64.grad, dtype, "d residual")
    if affine and n:
        clean = settled.all(dim=(0, 2, 3))  # channels without an unsettled position
        scale = max(1.0, n * h * w / 16)  # sums over N * P values: their error grows with the count
        for name, got, want in (("d weight", dw, w64.grad), ("d bias", db, b64.grad)):
            assert_close(got[clean] / scale, want[clean] / scale, dtype, name)


def test_split_chunks_match_single_chunk():
    x = torch.randn(2, 9, 40, 24)
    whole = _forward(x, relu=True, split=1)
    for split in (2, 5, 60):
        parts = _forward(x, relu=True, split=split)
        for a, b in zip(whole, parts):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)


def test_plan_fills_the_device_and_leaves_no_empty_chunk():
    device = torch.device("cpu")
    p = plan(1, 256, 64 * 64, True, device, split=7)
    assert p.split == math.ceil(64 * 64 / p.chunk) and p.chunk % p.block_p == 0
    assert (p.split - 1) * p.chunk < 64 * 64 <= p.split * p.chunk
    assert plan(1, 256, 1, True, device, split=9).split == 1  # a 1x1 plane cannot be split


@pytest.mark.parametrize("n, c, hw", [(1, 256, 64), (1, 128, 128), (1, 64, 256), (16, 256, 64), (16, 64, 256)])
def test_plan_fills_an_h100_at_every_batch(n, c, hw):
    """132 SMs: the generator's norm shapes give at least 2 programs per SM at batch 1 (one tile each at
    worst), and a batch that fills the chip alone is not split further than the target."""
    p = plan(n, c, hw * hw, True, torch.device("cpu"), sms=132)
    blocks, split = p.grid(n, c)
    assert blocks * split >= min(256, n * c * hw * hw // (p.block_p * p.block_c))
    assert blocks * split <= 2 * 8 * 132 or split == 1
    assert p.block_c >= 16 and split <= 64 and (split - 1) * p.chunk < hw * hw <= split * p.chunk


def test_large_mean_keeps_precision(monkeypatch):
    """|mean| = 1e4, std = 1: E[x^2] - E[x]^2 in fp32 loses every digit here; Welford/two-pass does not."""
    x = torch.randn(2, 4, 32, 32) + 1e4
    for split in (1, 4):
        y = _forward(x, split=split)[0]
        torch.testing.assert_close(y.double(), reference_instance_norm(x), atol=1e-4, rtol=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the PyTorch path
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):  # shifted Welford / ATen's batch norm
        y, mean, rstd = torch.ops.fastcyclegan.instance_norm(layout, None, None, None, False, 1e-5, 0)
        torch.testing.assert_close(mean.double(), x.double().mean((2, 3)), atol=0, rtol=1e-7)
        torch.testing.assert_close(
            rstd.double(), x.double().var((2, 3), unbiased=False).add(1e-5).rsqrt(), rtol=1e-5, atol=0
        )
    cl = ops.instance_norm(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl.double(), reference_instance_norm(x), atol=1e-4, rtol=0)
    # NCHW: one batch norm over all planes, whose x * a + b transform rounds like eager InstanceNorm2d's
    torch.testing.assert_close(ops.instance_norm(x).double(), reference_instance_norm(x), atol=2e-3, rtol=0)
    naive_var = (x * x).mean((2, 3)) - x.mean((2, 3)) ** 2
    assert (naive_var - x.double().var((2, 3), unbiased=False)).abs().max() > 0.1  # the test can tell them apart


@pytest.mark.parametrize("relu", [False, True])
def test_nan_stays_in_its_plane(relu):
    x = torch.randn(2, 3, 8, 8)
    x[1, 2, 3, 4] = float("nan")
    y = ops.instance_norm(x, relu=relu)
    assert torch.isnan(y[1, 2]).all()
    finite = torch.ones(2, 3, dtype=torch.bool)
    finite[1, 2] = False
    assert torch.isfinite(y[finite]).all()


def test_float64_runs_through_pytorch():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert not ops.use_triton(x)
    y = ops.instance_norm(x, relu=True)
    torch.testing.assert_close(y, reference_instance_norm(x, relu=True), atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ops.instance_norm(t, relu=False), (x,))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape", [(2, 6, 9, 7), (1, 3, 1, 1), (0, 3, 4, 4)], ids=str)
@pytest.mark.parametrize("pad, affine", [(0, False), (1, True), (3, False)], ids=["plain", "pad1-affine", "pad3"])
def test_pytorch_fallback_matches_reference_and_kernels(monkeypatch, shape, channels_last, dtype, pad, affine):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    pad = _pad_for(shape, pad)
    x, r = _inputs(shape, dtype, channels_last, True)
    weight, bias = _affine_params(shape[1], affine)
    assert not ops.use_triton(x)
    xg = x.clone().requires_grad_()
    wg, bg = (weight.clone().requires_grad_(), bias.clone().requires_grad_()) if affine else (None, None)
    y = ops.instance_norm(xg, r, weight=wg, bias=bg, relu=True, pad=pad)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert y.dtype == dtype
    expected = reference_instance_norm(x, r, relu=True, pad=pad, weight=weight, bias=bias)
    assert_close(y, expected, dtype, "fallback forward")
    dy = torch.randn_like(y)
    y.backward(dy)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton reads it at launch too
    _, mean, rstd = _forward(x, r, relu=True, weight=weight, bias=bias)
    dz = fold_reflect_pad(dy, pad) if pad else dy
    kernel_dx, sum_g, sum_gx = instance_norm_backward(dz, x, mean, rstd, weight=weight, bias=bias, relu=True)
    assert_close(xg.grad, kernel_dx, dtype, "fallback dx")
    if affine:
        assert_close(wg.grad, sum_gx.sum(0), torch.float32, "fallback d weight")
        assert_close(bg.grad, sum_g.sum(0), torch.float32, "fallback d bias")


def test_other_layouts_and_mixed_residual_layout():
    base = torch.randn(2, 8, 10, 12)
    x = base[:, :, :, ::2]  # a strided view: neither NCHW- nor channels-last-contiguous
    r = to_format(torch.randn(2, 8, 10, 6), True)  # residual in the other layout
    y = ops.instance_norm(x, r, relu=True)
    assert_close(y, reference_instance_norm(x, r, relu=True), torch.float32, "strided input")


def test_channels_last_is_kept_as_documented():
    x = torch.randn(2, 8, 5, 7).to(memory_format=torch.channels_last)
    assert ops.instance_norm(x, relu=True).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "x, residual, message",
    [
        (torch.randn(2, 3, 4), None, r"4-D \(N, C, H, W\) tensor, got \(2, 3, 4\)"),
        (torch.randn(1, 2, 3, 4, 5), None, "4-D"),
        (torch.randint(0, 5, (1, 2, 3, 3)), None, "float16, bfloat16, float32 or float64"),
        (torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 4), r"expected shape \(1, 2, 3, 3\)"),
        (torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3, dtype=torch.float64), "torch.float32"),
        ("not a tensor", None, "4-D"),
        (torch.randn(1, 2, 0, 3), None, "at least 1x1"),
    ],
)
def test_bad_inputs_say_what_was_expected(x, residual, message):
    with pytest.raises(ValueError, match=message):
        ops.instance_norm(x, residual)


@pytest.mark.parametrize("pad", [-1, 3, 4])
def test_padding_must_fit_the_plane(pad):
    with pytest.raises(ValueError, match=rf"0 <= pad < H and W: got pad={pad} for H x W = 5x3"):
        ops.instance_norm(torch.randn(1, 2, 5, 3), pad=pad)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("pad", [1, 3])
def test_fold_reflect_pad_is_the_gradient_of_reflection_padding(pad, channels_last):
    z = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    dy = to_format(torch.randn(2, 3, 7 + 2 * pad, 6 + 2 * pad, dtype=torch.float64), channels_last)
    F.pad(z, (pad,) * 4, mode="reflect").backward(dy)
    folded = fold_reflect_pad(dy, pad)
    torch.testing.assert_close(folded, z.grad, atol=1e-12, rtol=1e-12)
    assert folded.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("residual", [False, True])
def test_opcheck(residual):
    x = torch.randn(2, 5, 6, 7, requires_grad=True)
    r = torch.randn(2, 5, 6, 7, requires_grad=True) if residual else None
    w = torch.rand(5, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    op = torch.ops.fastcyclegan.instance_norm.default
    torch.library.opcheck(op, (x, r, None, None, True, 1e-5, 0))
    torch.library.opcheck(op, (x, r, w, b, False, 1e-5, 2))
    xcl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(op, (xcl, None, w, b, True, 1e-5, 1))


def test_opcheck_backward_op():
    x = torch.randn(2, 5, 6, 7)
    _, mean, rstd = _forward(x, relu=True)
    torch.library.opcheck(
        torch.ops.fastcyclegan.instance_norm_backward.default, (torch.randn_like(x), x, mean, rstd, None, None, True)
    )


def _block(x, r):
    padded = ops.instance_norm(torch.tanh(x), r, relu=False, pad=1)
    return padded[:, :, 1:-1, 1:-1] * 2 + ops.instance_norm(x, relu=True)


@pytest.mark.slow
def test_compile_fullgraph_keeps_the_op_and_matches_eager():
    seen = []

    def record(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    x = torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    r = torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    torch.compile(_block, fullgraph=True, backend=record)(x, r)
    assert sum("fastcyclegan.instance_norm" in t for t in seen) == 2
    compiled = torch.compile(_block, fullgraph=True)
    xg, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager, out = _block(xg, r), compiled(xc, r)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    eager.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(xc.grad, xg.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 256, 64, 64), (2, 64, 128, 128), (3, 70, 33, 31)], ids=str)
def test_cuda_kernels_match_reference(shape, dtype):
    for channels_last, pad, affine in ((False, 0, False), (True, 0, True), (True, 1, False), (False, 3, True)):
        x, r = _inputs(shape, dtype, channels_last, True, pad, device="cuda")
        x = x.requires_grad_()
        weight, bias = _affine_params(shape[1], affine, device="cuda")
        y = ops.instance_norm(x, r, weight=weight, bias=bias, relu=True, pad=pad)
        w, b = (weight.cpu(), bias.cpu()) if affine else (None, None)
        expected = reference_instance_norm(x.detach().cpu(), r.cpu(), relu=True, pad=pad, weight=w, bias=b)
        assert_close(y.cpu(), expected, dtype, f"cuda forward, pad {pad}")
        dy = torch.randn_like(y)
        y.backward(dy)
        x64 = x.detach().cpu().double().requires_grad_()
        reference_instance_norm(x64, r.cpu(), relu=True, pad=pad, weight=w, bias=b).backward(dy.cpu().double())
        settled = reference_instance_norm(x.detach().cpu(), weight=w, bias=b).abs() > 1e-3
        assert_close(x.grad.cpu()[settled], x64.grad[settled], dtype, f"cuda dx, pad {pad}")


@pytest.mark.parametrize("path", ["0", "1"], ids=["pytorch", "triton"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_edge_cases_agree_on_both_paths(monkeypatch, path, channels_last):
    """eps = 0 on a constant plane gives 0, as nn.InstanceNorm2d does (not NaN); no channels gives an empty
    output of the padded shape."""
    monkeypatch.setenv("TRITON_INTERPRET", path)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 6, 5)
    x[1, 2] = 7.0  # one constant plane
    x = x.contiguous(memory_format=fmt)
    y = ops.instance_norm(x, eps=0.0)
    expected = torch.nn.InstanceNorm2d(3, eps=0.0)(x)
    assert torch.isfinite(y).all() and (y[1, 2] == 0).all()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    empty = ops.instance_norm(torch.randn(2, 0, 6, 5).contiguous(memory_format=fmt), pad=1)
    assert empty.shape == (2, 0, 8, 7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": -1e-5}, r"eps must be a finite number >= 0 .* got -1e-05"),
        ({"eps": float("nan")}, r"eps must be a finite number >= 0 .* got nan"),
        ({"eps": float("inf")}, r"eps must be a finite number"),
        ({"pad": 2.7}, r"pad must be an int .* got 2.7"),
        ({"pad": True}, r"pad must be an int"),
    ],
)
def test_bad_eps_and_pad_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.instance_norm(torch.randn(1, 2, 8, 8), **kwargs)
