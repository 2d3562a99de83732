"""`instance_norm(x, residual=None, *, weight=None, bias=None, relu=False, eps=1e-5, pad=0)`: fused IN (+ affine)
(+ ReLU) (+ residual) (+ reflection pad) as a torch custom op.

The op `torch.ops.fastcyclegan.instance_norm` has a fake (meta) implementation and a registered autograd
formula, so `torch.compile(fullgraph=True)` traces through it and keeps it as one node. It runs the Triton
kernels of `fastcyclegan.kernels` on CUDA, and on the CPU when TRITON_INTERPRET=1 was set before Triton
compiled them (the interpreter); otherwise, and for float64 everywhere, an equivalent PyTorch implementation.

This is the only module that knows about Triton.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import memory_format_of, padded_empty, plane_layout

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(x: Tensor) -> bool:
    """Whether x goes through the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1) or through PyTorch."""
    if x.dtype == torch.float64 or not _TRITON:
        return False
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


_TRITON = _triton_available()


def _same_layout(t: Tensor, like: Tensor) -> Tensor:
    """t with exactly like's strides (the backward kernels address both through one set)."""
    return t if t.stride() == like.stride() else torch.empty_like(like).copy_(t)


def _stats_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------------
# PyTorch implementation (CPU without the interpreter, float64 anywhere): the kernels' maths, statistics that
# never lose digits to |mean| >> std, one batched computation for all (N, C) planes (no loop over images)


def _normalize_into(z: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float):
    """Writes IN(x) * weight + bias into z (x's shape, the statistics' dtype, any strides); returns the
    (N, C) mean and rstd.

    As in the kernels, the statistics are of values shifted by each plane's first element, so |mean| >> std
    keeps its digits: z = x - x[n, c, 0, 0] (a near-white photo's activations lose nothing), then ATen's
    var_mean, a Welford reduction over every plane at once in any layout, then one affine pass in place:
    z * scale + (beta - mean_z * scale), whose terms are all of the order of the plane's spread.
    """
    anchor = x[:, :, :1, :1].to(z.dtype)
    torch.sub(x, anchor, out=z)
    var, mean_z = torch.var_mean(z, dim=(2, 3), unbiased=False)
    rstd = torch.where(var + eps > 0, torch.rsqrt(var + eps), 0.0)  # eps = 0, constant plane: 0, as ATen's
    scale = rstd if weight is None else rstd * weight.to(rstd.dtype)
    shift = -mean_z * scale if bias is None else bias.to(rstd.dtype) - mean_z * scale
    torch.addcmul(shift[:, :, None, None], z, scale[:, :, None, None], out=z)
    return mean_z + anchor[:, :, 0, 0], rstd


def fill_reflect_border(y: Tensor, pad: int) -> Tensor:
    """Writes the reflection-padding border of y (N, C, H + 2 pad, W + 2 pad) from its interior, in place."""
    h, w = y.shape[2] - 2 * pad, y.shape[3] - 2 * pad
    rows = y[:, :, pad : pad + h]
    rows[..., :pad].copy_(rows[..., pad + 1 : 2 * pad + 1].flip(-1))  # left columns mirror the interior
    rows[..., pad + w :].copy_(rows[..., w - 1 : w - 1 + pad].flip(-1))
    y[:, :, :pad].copy_(y[:, :, pad + 1 : 2 * pad + 1].flip(2))  # then whole rows, corners included
    y[:, :, pad + h :].copy_(y[:, :, h - 1 : h - 1 + pad].flip(2))
    return y


def _batch_norm_planes(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float):
    """(IN(x) * weight + bias as a new NCHW tensor in the statistics' dtype, mean, rstd) for NCHW-contiguous
    x: all N * C planes as the channels of one (1, N*C, H, W) batch norm, ATen's fastest CPU path. Its
    statistics are two-pass with double accumulators (|mean| >> std loses no digits in them); its transform
    x * a + b rounds like eager InstanceNorm2d's, |mean| / std * 2^-24 relative (a shift by x[n, c, 0] first,
    as the kernels do for free, would cost a whole extra pass here: bench/results/TUNING.md, CPU path)."""
    n, c, h, w = x.shape
    planes = x.to(_stats_dtype(x)).view(1, n * c, h, w)
    if weight is not None:
        weight, bias = weight.to(planes.dtype).repeat(n), bias.to(planes.dtype).repeat(n)
    z, mean, rstd = torch.native_batch_norm(planes, weight, bias, None, None, True, 0.0, eps)
    return z.view(n, c, h, w), mean.view(n, c), rstd.view(n, c)


def _batch_norm_images(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float):
    """The same for channels-last x in its statistics' dtype, where no (1, N*C, H, W) view exists: each image
    (1, C, H, W) is one batch norm through ATen's channels-last kernel (faster than its NCHW one), written in
    place into one channels-last output. That kernel accumulates in x's dtype, so, as the Triton kernels do,
    each plane is first shifted by its first element (into a one-image buffer): |mean| >> std keeps its
    digits (an unshifted 1e4 + N(0, 1) plane comes out 1e-2 off, shifted 1e-6)."""
    n, c = x.shape[:2]
    z = torch.empty_like(x)
    shifted = torch.empty_like(x[:1])
    anchor = x[:, :, :1, :1]
    mean, rstd = x.new_empty((n, c)), x.new_empty((n, c))
    if weight is not None:
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    for i in range(n):  # N calls, not N*C: one parallel region per image
        torch.sub(x[i : i + 1], anchor[i : i + 1], out=shifted)
        torch.ops.aten.native_batch_norm.out(
            shifted, weight, bias, None, None, True, 0.0, eps, out=z[i : i + 1], save_mean=mean[i], save_invstd=rstd[i]
        )  # fmt: skip
    return z, mean + anchor[:, :, 0, 0], rstd


def _torch_forward(x, residual, weight, bias, relu: bool, eps: float, pad: int):
    """(y, mean, rstd) as the kernels return them. z holds the fp32 (fp64) values until the end: for NCHW x a
    new tensor from one batch norm over all planes, for channels-last fp32/fp64 x one batch norm per image,
    either padded by ATen's reflection pad (which keeps the layout); for other strides and for low precision
    y's interior itself (or a temporary rounded into it once), its border filled after."""
    n, c, h, w = x.shape
    stats_dtype = _stats_dtype(x)
    if x.numel() == 0:
        empty = torch.empty((n, c), dtype=stats_dtype, device=x.device)
        return padded_empty(x, pad), empty, empty.clone()
    y = interior = None
    if x.is_contiguous() and h * w > 1:
        z, mean, rstd = _batch_norm_planes(x, weight, bias, eps)
    elif x.dtype == stats_dtype and x.is_contiguous(memory_format=torch.channels_last) and h * w > 1:
        z, mean, rstd = _batch_norm_images(x, weight, bias, eps)
    else:
        y = padded_empty(x, pad)
        interior = y[:, :, pad : pad + h, pad : pad + w] if pad else y
        z = interior if y.dtype == stats_dtype else torch.empty_like(x, dtype=stats_dtype)
        mean, rstd = _normalize_into(z, x, weight, bias, eps)
    if relu:
        z.relu_()  # keeps NaN
    if residual is not None:
        z.add_(residual)
    if y is None:  # x's layout: z is the output, reflection-padded by ATen's own kernel (one pass)
        y = F.pad(z, (pad,) * 4, mode="reflect") if pad else z
        return y.to(x.dtype), mean, rstd
    if z is not interior:
        interior.copy_(z)
    if pad:
        fill_reflect_border(y, pad)
    return y, mean, rstd


def fold_reflect_pad(dy: Tensor, pad: int) -> Tensor:
    """The gradient of reflection padding by `pad`: (N, C, H + 2 pad, W + 2 pad) -> (N, C, H, W).

    Each border position's gradient is added to the position it copied (rows 1..pad and H-1-pad..H-2, the
    same for columns). Slices, flips and in-place adds keep dy's memory format (ATen's own reflection-pad
    backward on CUDA makes everything NCHW) and trace under torch.compile.
    """
    fmt = memory_format_of(dy)
    for dim in (3, 2):  # columns, then rows of what the columns left
        size = dy.shape[dim] - 2 * pad
        folded = dy.narrow(dim, pad, size).clone(memory_format=fmt)
        folded.narrow(dim, 1, pad).add_(dy.narrow(dim, 0, pad).flip(dim))
        folded.narrow(dim, size - 1 - pad, pad).add_(dy.narrow(dim, pad + size, pad).flip(dim))
        dy = folded
    return dy


def _torch_backward(dy, x, mean, rstd, weight, bias, relu: bool):
    """(dx, sum of g, sum of g * xhat) per plane, as the kernels return them."""
    mean4, rstd4 = mean[:, :, None, None], rstd[:, :, None, None]
    xhat = (x.to(mean.dtype) - mean4) * rstd4
    g = dy.to(mean.dtype)
    gamma = None if weight is None else weight.to(mean.dtype)[None, :, None, None]
    if relu:
        z = xhat if weight is None else xhat * gamma + bias.to(mean.dtype)[None, :, None, None]
        g = torch.where(z > 0, g, 0.0)
    sum_g = g.sum(dim=(2, 3))
    sum_gx = (g * xhat).sum(dim=(2, 3))
    count = x.shape[2] * x.shape[3]
    mean_g, mean_gx = (sum_g / count)[:, :, None, None], (sum_gx / count)[:, :, None, None]
    scale = rstd4 if gamma is None else rstd4 * gamma
    dx = torch.empty_like(x).copy_(scale * (g - mean_g - xhat * mean_gx))
    return dx, sum_g, sum_gx


# ----------------------------------------------------------------------------------------------------------
# custom ops


@torch.library.custom_op("fastcyclegan::instance_norm", mutates_args=())
def _instance_norm(
    x: Tensor,
    residual: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    relu: bool,
    eps: float,
    pad: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, mean, rstd): y reflection-padded by `pad`; mean and rstd (N, C) in fp32 (fp64 for fp64 x)."""
    return _forward_impl(x, residual, weight, bias, relu, eps, pad)


def _forward_impl(x, residual, weight, bias, relu: bool, eps: float, pad: int):
    """The op's implementation: the Triton kernels or the PyTorch path, as `use_triton` decides."""
    x = plane_layout(x)
    if use_triton(x):
        from .kernels import instance_norm_forward

        y = padded_empty(x, pad)
        mean, rstd = instance_norm_forward(x, residual, y, weight=weight, bias=bias, relu=relu, eps=eps)
        return y, mean, rstd
    with torch.autocast(x.device.type, enabled=False):  # outputs in x's dtype, as the fake impl promises
        return _torch_forward(x, residual, weight, bias, relu, eps, pad)


@_instance_norm.register_fake
def _(x, residual, weight, bias, relu, eps, pad):
    x = plane_layout(x)
    stats = x.new_empty(x.shape[:2], dtype=_stats_dtype(x))
    return padded_empty(x, pad), stats, torch.empty_like(stats)


@torch.library.custom_op("fastcyclegan::instance_norm_backward", mutates_args=())
def _instance_norm_backward(
    dz: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, sum of g, sum of g * xhat) from the gradient dz of the unpadded output; x is the saved (already
    plane-laid-out) input; the sums are per plane, (N, C) in the statistics' dtype."""
    dz = _same_layout(dz, x)
    if use_triton(x):
        from .kernels import instance_norm_backward

        return instance_norm_backward(dz, x, mean, rstd, weight=weight, bias=bias, relu=relu)
    with torch.autocast(x.device.type, enabled=False):
        return _torch_backward(dz, x, mean, rstd, weight, bias, relu)


@_instance_norm_backward.register_fake
def _(dz, x, mean, rstd, weight, bias, relu):
    return torch.empty_like(x), torch.empty_like(mean), torch.empty_like(mean)


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, relu, _eps, pad = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(plane_layout(x), mean, rstd, weight, bias)
    ctx.relu, ctx.pad = relu, pad
    ctx.has_residual = residual is not None
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, mean, rstd, weight, bias = ctx.saved_tensors
    dz = fold_reflect_pad(dy, ctx.pad) if ctx.pad else dy  # gradient of the unpadded act(IN(x)) + residual
    need_x, need_residual, need_weight, need_bias = ctx.needs_input_grad[:4]
    dx = dweight = dbias = None
    if need_x or need_weight or need_bias:
        dx, sum_g, sum_gx = _instance_norm_backward(dz, x, mean, rstd, weight, bias, ctx.relu)
        dx = dx if need_x else None
        dweight = sum_gx.sum(dim=0).to(weight.dtype) if need_weight else None
        dbias = sum_g.sum(dim=0).to(bias.dtype) if need_bias else None
    dresidual = dz if ctx.has_residual and need_residual else None
    return dx, dresidual, dweight, dbias, None, None, None


_instance_norm.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------
# public API


def _check_affine(x: Tensor, weight, bias) -> None:
    if (weight is None) != (bias is None):
        raise ValueError("instance_norm takes weight and bias together (an affine norm has both) or neither")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.shape != x.shape[1:2] or not t.is_floating_point() or t.device != x.device:
            got = f"shape {tuple(t.shape)}, {t.dtype} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must be a floating-point tensor of shape ({x.shape[1]},) on {x.device} (one value per "
                f"channel), got {got}"
            )


def instance_norm(
    x: Tensor,
    residual: Optional[Tensor] = None,
    *,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    relu: bool = False,
    eps: float = 1e-5,
    pad: int = 0,
) -> Tensor:
    """y = IN(x) * weight + bias (affine, when given), then relu(y) if `relu`, then y + residual if given,
    written reflection-padded by `pad`.

    x: (N, C, H, W) fp16/bf16/fp32/fp64, NCHW or channels-last; the output, (N, C, H + 2 pad, W + 2 pad),
    keeps x's dtype and memory format. `pad` equals `F.pad(y, (pad,) * 4, mode="reflect")` without the
    extra pass: the next 3x3 (pad=1) or 7x7 (pad=3) conv reads the output directly. residual: None or a
    tensor of x's shape, dtype and device, any strides (the interior view of a padded output works).
    weight, bias: None (as in `nn.InstanceNorm2d(C)`) or both (C,) float tensors (`affine=True`), any float
    dtype; both get gradients. Statistics are per (image, channel) over H*W and accumulate in fp32 (fp64 for
    fp64 x).
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"instance_norm expects a 4-D (N, C, H, W) tensor, got {shape}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"instance_norm needs planes of at least 1x1, got H x W = {x.shape[2]}x{x.shape[3]}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"instance_norm expects float16, bfloat16, float32 or float64, got {x.dtype}")
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise ValueError(f"residual must be a tensor or None, got {type(residual).__name__}")
        if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
            raise ValueError(
                f"residual must match x: expected shape {tuple(x.shape)}, {x.dtype} on {x.device}, "
                f"got shape {tuple(residual.shape)}, {residual.dtype} on {residual.device}"
            )
    _check_affine(x, weight, bias)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0 (added to each plane's variance), got {eps!r}")
    if isinstance(pad, bool) or not isinstance(pad, int):
        raise ValueError(f"pad must be an int (reflection padding in pixels), got {pad!r}")
    if not 0 <= pad < min(x.shape[2], x.shape[3]):
        raise ValueError(
            f"reflection padding needs 0 <= pad < H and W: got pad={pad} for H x W = {x.shape[2]}x{x.shape[3]}"
        )
    if weight is not None:
        weight, bias = weight.contiguous(), bias.contiguous()  # the kernels index them with stride 1
    if _plain_inference(x, residual, weight, bias):
        return _forward_impl(x, residual, weight, bias, relu, float(eps), int(pad))[0]
    return torch.ops.fastcyclegan.instance_norm(x, residual, weight, bias, relu, float(eps), int(pad))[0]


def _plain_inference(*tensors) -> bool:
    """No gradient wanted, no compiler tracing, only plain tensors: the op's implementation can run without
    the dispatcher's custom-op machinery (about 70 us a call on a CPU, a third of a small norm's time).
    torch.compile, autograd and tensor subclasses (fake, functional) always get the registered op."""
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) is Tensor and not (grad and t.requires_grad)) for t in tensors)
