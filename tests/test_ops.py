"""fastcyclegan.ops.instance_norm: parity with a float64 reference, gradients, layouts, errors, compile.

The Triton kernels run through the interpreter here (conftest.py); `torch_fallback` tests the PyTorch path.
"""

import contextlib
import inspect
import math

import fastcyclegan.kernels.instance_norm as kernels_module
import pytest
import torch
import torch.nn.functional as F
from fastcyclegan.kernels import instance_norm_backward, instance_norm_forward, plan
from helpers import assert_close, reference_instance_norm, to_format

from fastcyclegan import convs, norm_cpu, ops
from fastcyclegan.layout import fold_reflect_pad, padded_empty

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (shape, splits asked of the plan for NCHW and channels-last): batch 1, odd planes, 1x1 planes, channels off
# the block size; and shapes with enough tiles per plane that the asked split is the split that runs (asserted),
# so the merge of partial statistics across chunks runs in every mode, layout and dtype. The splits asked differ
# from what the plan picks on its own (on a CPU: 2 and 3 at 2x5x48x48, 1 and 4 at 1x67x40x40), so a plan that
# ignored the request fails every split case.
SHAPES = [
    ((1, 3, 7, 5), None),
    ((2, 5, 33, 31), None),
    ((2, 5, 48, 48), (3, 2)),  # 3 NCHW tiles of 1024 per plane, 5 channels-last tiles of 512
    ((2, 70, 1, 1), None),
    ((1, 67, 40, 40), (2, 2)),  # 2 NCHW tiles, 25 channels-last tiles of 64
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
    (0.2, False, 0, False),  # the PatchGAN discriminator's IN + LeakyReLU(0.2) (relu = the slope: leaky)
    (0.2, True, 1, True),
]


def _act(relu):
    """(relu, negative_slope) of the op for a mode's activation: False, True (ReLU) or a slope (leaky)."""
    leaky = not isinstance(relu, bool)
    return bool(relu), (relu if leaky else 0.0)


def _mode_id(mode):
    relu, residual, pad, affine = mode
    act = f"+leaky{relu}" if not isinstance(relu, bool) else "+relu" * relu
    return "in" + "+affine" * affine + act + "+add" * residual + f"+pad{pad}" * bool(pad)


def _affine_params(c, affine, dtype=torch.float32, device="cpu"):
    """A learned-looking scale (0.5 .. 1.5, some negative) and shift, or (None, None)."""
    if not affine:
        return None, None
    weight = (torch.rand(c, device=device) + 0.5) * torch.where(torch.arange(c, device=device) % 5 == 4, -1.0, 1.0)
    return weight.to(dtype), (torch.randn(c, device=device) * 0.5).to(dtype)


def _pad_for(shape, pad):
    return min(pad, shape[2] - 1, shape[3] - 1)  # reflection needs pad < H and W (a 1x1 plane takes none)


# fp16 runs the same kernel code as bf16 (another storage type, other rounding): it takes the shapes that
# exercise rounding and masking, not the slow wide ones (channel blocks and 1x1 planes are dtype-blind)
_DTYPE_SHAPES = [(d, s) for d in DTYPES for s in SHAPES if d != torch.float16 or s[0][1] < 64]
# the wide shapes (two channel blocks) are the slowest in the interpreter: they take the modes that use every
# epilogue feature (relu, residual, pad 1 and 3, affine); the narrow shapes take them all
_WIDE_MODES = [(True, True, 3, False), (False, True, 1, True), (True, False, 1, True)]


def _modes_for(shape):
    """The modes as they run on this shape (pad clamped to the plane), each once: ids say what ran."""
    modes = _WIDE_MODES if shape[1] >= 64 else MODES
    return list(dict.fromkeys((relu, res, _pad_for(shape, pad), affine) for relu, res, pad, affine in modes))


def _every_case(test):
    """Parametrize over every (shape, split) x dtype (fp16 on the narrow shapes) x layout x mode (the wide
    shapes with the modes that combine every feature)."""
    cases = [
        pytest.param(
            d,
            s,
            k and k[cl],
            cl,
            mode,
            id=f"{d}-{s}-split{k[cl] if k else 'auto'}-{'cl' if cl else 'nchw'}-{_mode_id(mode)}",
        )
        for d, (s, k) in _DTYPE_SHAPES
        for cl in (False, True)
        for mode in _modes_for(s)
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


def _forward(x, residual=None, relu=False, pad=0, weight=None, bias=None):
    """The forward launcher on its own: (y, mean, rstd) with y allocated as the op allocates it."""
    y = padded_empty(x, pad)
    mean, rstd = instance_norm_forward(x, residual, y, weight=weight, bias=bias, relu=relu, eps=1e-5)
    return y, mean, rstd


@contextlib.contextmanager
def forced_split(monkeypatch, split):
    """Every kernel launch inside asks its plan for `split` chunks per plane; yields {positions per plane: the
    splits planned}, so a test asserts the split that ran (a plan caps the split at the plane's tiles: a small
    plane would silently run unsplit). The statistics are merged across the chunks of the H * W planes; the
    forward's apply kernel walks the padded planes, chunked by their own plan."""
    made = {}

    def planned(n, c, p, channels_last, device):
        chosen = plan(n, c, p, channels_last, device, split=split)
        made.setdefault(p, set()).add(chosen.split)
        return chosen

    with monkeypatch.context() as patch:
        patch.setattr(kernels_module, "plan", planned)
        yield made


def test_reference_equals_torch_instance_norm():
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(reference_instance_norm(x), F.instance_norm(x, eps=1e-5), atol=1e-12, rtol=1e-12)


def _op_and_float64_gradients(x, r, weight, bias, dy, relu, pad):
    """The public op's output and its gradients (x, residual, weight, bias) by its autograd formula, and the
    float64 reference's output and gradients, on the same inputs."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, r, weight, bias)]
    act, slope = _act(relu)
    y = ops.instance_norm(
        leaves[0], leaves[1], weight=leaves[2], bias=leaves[3], relu=act, negative_slope=slope, pad=pad
    )
    y.backward(dy)
    leaves64 = [t.double().requires_grad_() if t is not None else None for t in (x, r, weight, bias)]
    xg, rg, wg, bg = leaves64
    expected = reference_instance_norm(xg, rg, relu, pad=pad, weight=wg, bias=bg)
    expected.backward(dy.double())
    return (
        y,
        [t.grad if t is not None else None for t in leaves],
        expected.detach(),
        [t.grad if t is not None else None for t in leaves64],
    )


@_every_case
def test_forward_and_gradients_match_float64(monkeypatch, shape, split, dtype, channels_last, mode):
    """The public op (kernels through the interpreter) and its autograd formula against float64: output, dx,
    d residual, d weight and d bias. Cases with a split run with every plane cut into that many chunks."""
    relu, has_residual, pad, affine = mode
    x, r = _inputs(shape, dtype, channels_last, has_residual, pad)
    n, c, h, w = shape
    weight, bias = _affine_params(c, affine)
    dy = to_format(torch.randn(n, c, h + 2 * pad, w + 2 * pad), channels_last).to(dtype)
    with forced_split(monkeypatch, split) if split else contextlib.nullcontext({}) as made:
        y, grads, expected, grads64 = _op_and_float64_gradients(x, r, weight, bias, dy, relu, pad)
    if split:  # the statistics of the forward and the backward's sums merged `split` chunks per plane
        assert made[h * w] == {split}, made
    assert y.dtype == dtype and y.shape == (n, c, h + 2 * pad, w + 2 * pad)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(y, expected, dtype, "forward")
    dx, dr, dw, db = grads
    assert dx.dtype == dtype and dx.shape == x.shape
    # Where relu's input is within rounding of 0, fp32 and float64 may disagree on its mask: leave those out
    # (and the planes that hold such positions, for the weight and bias sums).
    pre = reference_instance_norm(x, weight=weight, bias=bias)
    settled = pre.abs() > 1e-3 if relu else torch.ones(shape, dtype=torch.bool)
    assert_close(dx[settled], grads64[0][settled], dtype, "dx")
    if has_residual:
        assert_close(dr, grads64[1], dtype, "d residual")
    if affine:
        clean = settled.all(dim=(0, 2, 3))  # channels without an unsettled position
        scale = max(1.0, n * h * w / 16)  # sums over N * P values: their error grows with the count
        for name, got, want in (("d weight", dw, grads64[2]), ("d bias", db, grads64[3])):
            assert_close(got[clean] / scale, want[clean] / scale, dtype, name)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_split_chunks_match_single_chunk(monkeypatch, channels_last):
    """Statistics merged across chunks equal one chunk's to fp32 rounding, whatever the number of chunks."""
    x = to_format(torch.randn(2, 9, 64, 48), channels_last)  # 3 NCHW tiles of 1024 per plane, 24 channels-last
    results = {}
    for split in (1, 2, 3):
        with forced_split(monkeypatch, split) as made:
            results[split] = _forward(x, relu=True, pad=1)
        assert made[64 * 48] == {split}, made
    for split in (2, 3):
        for a, b in zip(results[1], results[split]):
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
    x = torch.randn(2, 4, 64, 64) + 1e4
    for split in (1, 4):  # 4 NCHW tiles of 1024 per plane: 4 chunks merged
        with forced_split(monkeypatch, split) as made:
            y = _forward(x)[0]
        assert made[64 * 64] == {split}, made
        torch.testing.assert_close(y.double(), reference_instance_norm(x), atol=1e-4, rtol=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the PyTorch path
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):  # ATen's batch norm / two-pass sums
        y, mean, rstd = torch.ops.fastcyclegan.instance_norm(layout, None, None, None, False, 1e-5, 0)
        # within 2 ulps of fp32 (the mean is stored in fp32: 1 ulp at 1e4 is 1e-7 of it)
        torch.testing.assert_close(mean.double(), x.double().mean((2, 3)), atol=0, rtol=2.4e-7)
        torch.testing.assert_close(
            rstd.double(), x.double().var((2, 3), unbiased=False).add(1e-5).rsqrt(), rtol=1e-5, atol=0
        )
    # both layouts: exact statistics, then eager InstanceNorm2d's x * a + b transform, which rounds x * a to
    # |mean| / std * 2^-24 (6e-4 here); a statistic that lost digits would be off by far more
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(ops.instance_norm(layout).double(), reference_instance_norm(x), atol=2e-3, rtol=0)
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


_FALLBACK_CASES = [  # (shape, pad, affine, negative slope) as they run: a 1x1 plane takes no padding
    pytest.param(
        shape, pad, affine, slope, id=f"{shape}-pad{pad}" + "-affine" * affine + f"-leaky{slope}" * bool(slope)
    )
    for shape, modes in (
        ((2, 6, 9, 7), ((0, False, 0.0), (1, True, 0.0), (3, False, 0.0), (1, True, 0.2))),
        ((1, 3, 1, 1), ((0, False, 0.0), (0, True, 0.0))),
    )
    for pad, affine, slope in modes
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape, pad, affine, slope", _FALLBACK_CASES)
def test_pytorch_fallback_matches_reference_and_kernels(monkeypatch, shape, channels_last, dtype, pad, affine, slope):
    """The PyTorch implementation against float64 (forward) and against the kernels (backward), relu or leaky."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, r = _inputs(shape, dtype, channels_last, True)
    weight, bias = _affine_params(shape[1], affine)
    assert not ops.use_triton(x)
    xg = x.clone().requires_grad_()
    wg, bg = (weight.clone().requires_grad_(), bias.clone().requires_grad_()) if affine else (None, None)
    y = ops.instance_norm(xg, r, weight=wg, bias=bg, relu=True, negative_slope=slope, pad=pad)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert y.dtype == dtype
    expected = reference_instance_norm(x, r, relu=slope or True, pad=pad, weight=weight, bias=bias)
    assert_close(y, expected, dtype, "fallback forward")
    dy = torch.randn_like(y)
    y.backward(dy)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton reads it at launch too
    y_kernels = padded_empty(x, 0)
    mean, rstd = instance_norm_forward(x, r, y_kernels, weight=weight, bias=bias, relu=True, negative_slope=slope)
    dz = fold_reflect_pad(dy, pad) if pad else dy
    kernel_dx, sum_g, sum_gx = instance_norm_backward(
        dz, x, mean, rstd, weight=weight, bias=bias, relu=True, negative_slope=slope
    )
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
    conv_bias = torch.randn(5, requires_grad=True)
    torch.library.opcheck(op, (x, r, w, b, True, 1e-5, 1, conv_bias))


def test_the_conv_bias_is_not_read_and_gets_an_exact_zero_gradient():
    """IN(z + b) = IN(z): the op takes the bias its input's conv left out, ignores it, and gives it zero."""
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    conv_bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = ops.instance_norm(x, conv_bias=conv_bias, relu=True, pad=1)
    expected = reference_instance_norm(x + conv_bias[None, :, None, None], relu=True, pad=1)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)
    y.square().sum().backward()
    assert conv_bias.grad is not None and torch.equal(conv_bias.grad, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"conv_bias must be a tensor of shape \(5,\)"):
        ops.instance_norm(x, conv_bias=torch.zeros(3))


@pytest.mark.parametrize("affine, residual", [(False, False), (True, True)])
def test_eager_autograd_takes_no_dispatch_and_equals_the_registered_op(monkeypatch, affine, residual):
    """Plain tensors in eager autograd run the op's formula as one autograd.Function (no custom-op dispatch);
    its output and every gradient equal those of the registered op, called directly."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    r = torch.randn_like(x) if residual else None
    w, b = (torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)) if affine else (None, None)
    conv_bias = torch.randn(5, dtype=torch.float64)
    results = []
    for via_op in (False, True):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, r, w, b, conv_bias)]
        xg, rg, wg, bg, cg = leaves
        if via_op:
            y = torch.ops.fastcyclegan.instance_norm(xg, rg, wg, bg, True, 1e-5, 1, cg, 0.0)[0]
        else:
            y = ops.instance_norm(xg, rg, weight=wg, bias=bg, conv_bias=cg, relu=True, pad=1)
            assert type(y.grad_fn).__name__ == "_EagerAutogradBackward"
        y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(1)))
        results.append([y.detach()] + [t.grad for t in leaves if t is not None])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("affine, residual, slope", [(False, False, 0.0), (True, True, 0.0), (False, False, 0.2)])
def test_cpu_fp32_training_sites_run_aten_layers_equal_to_the_op(torch_fallback, affine, residual, slope):
    """The conv policy's rule: fp32 NCHW planes in eager autograd on a CPU run eager PyTorch's differentiable
    layers (`convs.aten_norm_site`): the output equals the registered op's on its PyTorch implementation
    exactly (the same batch norm; the C kernel's rounds differently, its own test), every gradient to fp32
    rounding, the conv bias's is exactly zero, and the unpadded tensor comes back itself (no strided view)."""
    x = torch.randn(2, 5, 6, 7)
    r = torch.randn_like(x) if residual else None
    w, b = (torch.rand(5) + 0.5, torch.randn(5)) if affine else (None, None)
    results = []
    for via_op in (False, True):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, r, w, b, torch.randn(5))]
        xg, rg, wg, bg, cg = leaves
        if via_op:
            with norm_cpu.disabled():
                y = torch.ops.fastcyclegan.instance_norm(xg, rg, wg, bg, True, 1e-5, 1, cg, slope)[0]
        else:
            assert convs.runs_aten_layers(xg, rg, wg, bg, cg)
            y, unpadded = convs.aten_norm_site(xg, rg, wg, bg, cg, relu=True, negative_slope=slope, eps=1e-5, pad=1)
            assert type(y.grad_fn).__name__ == "ReflectionPad2DBackward0"
            assert unpadded.is_contiguous() and torch.equal(unpadded, y[:, :, 1:-1, 1:-1])
        y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(1)))
        assert torch.equal(cg.grad, torch.zeros(5))
        results.append([y.detach()] + [t.grad for t in leaves if t is not None])
    assert torch.equal(results[0][0], results[1][0])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_the_aten_layers_rule_takes_cpu_fp32_nchw_training_only(monkeypatch):
    """Everything else keeps the fused op: 1x1 planes (ATen's instance norm refuses them), float64, bf16,
    channels-last, inference, and a model under the Triton kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(2, 5, 6, 7, requires_grad=True)
    assert convs.runs_aten_layers(x, None)
    assert not convs.runs_aten_layers(torch.randn(2, 5, 1, 1, requires_grad=True), None)
    assert not convs.runs_aten_layers(x.double(), None)
    assert not convs.runs_aten_layers(x.bfloat16(), None)
    assert not convs.runs_aten_layers(x.contiguous(memory_format=torch.channels_last), None)
    assert not convs.runs_aten_layers(x, None, torch.randn(5, dtype=torch.float64))
    with torch.no_grad():
        assert not convs.runs_aten_layers(x, None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not convs.runs_aten_layers(x, None)


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


@pytest.mark.parametrize("path", ["0", "1"], ids=["pytorch", "triton"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_empty_batch_keeps_shape_dtype_layout_and_gives_empty_gradients(monkeypatch, path, channels_last):
    """N = 0: an empty output of the padded shape in x's dtype and memory format, and empty gradients."""
    monkeypatch.setenv("TRITON_INTERPRET", path)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(0, 4, 6, 6, dtype=torch.bfloat16).contiguous(memory_format=fmt).requires_grad_()
    weight, bias = (torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True))
    y = ops.instance_norm(x, x.detach().clone(), weight=weight, bias=bias, relu=True, pad=3)
    assert y.shape == (0, 4, 12, 12) and y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=fmt)
    y.sum().backward()
    assert x.grad.shape == x.shape and (weight.grad == 0).all() and (bias.grad == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": -1e-5}, r"eps must be a finite number >= 0 .* got -1e-05"),
        ({"eps": float("nan")}, r"eps must be a finite number >= 0 .* got nan"),
        ({"eps": float("inf")}, r"eps must be a finite number"),
        ({"pad": 2.7}, r"pad must be an int .* got 2.7"),
        ({"pad": True}, r"pad must be an int"),
        ({"relu": True, "negative_slope": 1.5}, r"negative_slope must be a number in \[0, 1\) \(0: ReLU\), got 1.5"),
        ({"negative_slope": 0.2}, r"negative_slope is the slope of the activation: it takes relu=True"),
    ],
)
def test_bad_eps_and_pad_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.instance_norm(torch.randn(1, 2, 8, 8), **kwargs)


@pytest.mark.parametrize("name", ["instance_norm_forward", "instance_norm_backward"])
def test_the_implementations_share_one_signature(name):
    """fastcyclegan.norm_torch, norm_cpu (the C kernel) and the kernels' launchers: the same parameters, kinds
    and defaults."""
    import fastcyclegan.kernels as kernels

    from fastcyclegan import norm_torch

    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(getattr(norm_torch, name)) == params(getattr(kernels, name))
    assert params(getattr(norm_cpu, name)) == params(getattr(kernels, name))
