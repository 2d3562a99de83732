"""`instance_norm(x, residual=None, *, relu=False, eps=1e-5, pad=0)`: fused IN (+ ReLU) (+ residual) (+ reflection
pad) as a torch custom op.

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
# PyTorch implementation (CPU without the interpreter, float64 anywhere): same maths, same layouts


def _torch_normalize(xf: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Writes IN(xf) into y; returns the (N, C) mean and rstd in xf's dtype.

    ATen's batch norm (two-pass statistics in the accumulation dtype) normalizes over every axis but 1:
    NCHW x is one (1, N*C, H, W) call, a channels-last image one (H*W, C) call, both without copies.
    """
    n, c, h, w = xf.shape
    if h * w == 1 or n == 0:  # batch norm refuses 1-value planes; their normalized value is 0 (NaN stays NaN)
        mean = xf.reshape(n, c).clone()
        y.copy_(xf - xf)
        return mean, torch.full_like(mean, eps**-0.5)
    if xf.is_contiguous():
        planes = [(xf.view(1, n * c, h, w), y.view(1, n * c, h, w))]
    else:
        planes = [(xf[i].permute(1, 2, 0).reshape(h * w, c), y[i].permute(1, 2, 0)) for i in range(n)]
    means, rstds = [], []
    for src, dst in planes:
        out, mean, rstd = torch.native_batch_norm(src, None, None, None, None, True, 0.0, eps)
        dst.copy_(out.view(dst.shape))
        means.append(mean)
        rstds.append(rstd)
    return torch.cat(means).view(n, c), torch.cat(rstds).view(n, c)


def _torch_forward(x: Tensor, residual: Optional[Tensor], relu: bool, eps: float, pad: int):
    y = torch.empty_like(x)
    # low precision is upcast first, so the saved statistics are fp32 as the kernels' are
    mean, rstd = _torch_normalize(x.to(_stats_dtype(x)), y, eps)
    if relu:
        torch.relu_(y)  # keeps NaN
    if residual is not None:
        y.add_(residual)
    if pad:  # F.pad keeps channels-last on the CPU; the fake impl promises x's memory format either way
        y = F.pad(y, (pad,) * 4, mode="reflect").contiguous(memory_format=memory_format_of(x))
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


def _torch_backward(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, relu: bool) -> Tensor:
    mean, rstd = mean[:, :, None, None], rstd[:, :, None, None]
    xhat = (x.to(mean.dtype) - mean) * rstd
    g = dy.to(mean.dtype)
    if relu:
        g = torch.where(xhat > 0, g, 0.0)
    mean_g = g.mean(dim=(2, 3), keepdim=True)
    mean_gx = (g * xhat).mean(dim=(2, 3), keepdim=True)
    return torch.empty_like(x).copy_(rstd * (g - mean_g - xhat * mean_gx))


# ----------------------------------------------------------------------------------------------------------
# custom ops


@torch.library.custom_op("fastcyclegan::instance_norm", mutates_args=())
def _instance_norm(
    x: Tensor, residual: Optional[Tensor], relu: bool, eps: float, pad: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, mean, rstd): y reflection-padded by `pad`; mean and rstd (N, C) in fp32 (fp64 for fp64 x)."""
    x = plane_layout(x)
    if use_triton(x):
        from .kernels import instance_norm_forward

        y = padded_empty(x, pad)
        mean, rstd = instance_norm_forward(x, residual, y, relu=relu, eps=eps)
        return y, mean, rstd
    with torch.autocast(x.device.type, enabled=False):  # outputs in x's dtype, as the fake impl promises
        return _torch_forward(x, residual, relu, eps, pad)


@_instance_norm.register_fake
def _(x, residual, relu, eps, pad):
    x = plane_layout(x)
    stats = x.new_empty(x.shape[:2], dtype=_stats_dtype(x))
    return padded_empty(x, pad), stats, torch.empty_like(stats)


@torch.library.custom_op("fastcyclegan::instance_norm_backward", mutates_args=())
def _instance_norm_backward(dz: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, relu: bool) -> Tensor:
    """dx from the gradient dz of the unpadded output; x is the saved (already plane-laid-out) input."""
    dz = _same_layout(dz, x)
    if use_triton(x):
        from .kernels import instance_norm_backward

        return instance_norm_backward(dz, x, mean, rstd, relu=relu)
    with torch.autocast(x.device.type, enabled=False):
        return _torch_backward(dz, x, mean, rstd, relu)


@_instance_norm_backward.register_fake
def _(dz, x, mean, rstd, relu):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, residual, relu, _eps, pad = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(plane_layout(x), mean, rstd)
    ctx.relu, ctx.pad = relu, pad
    ctx.has_residual = residual is not None
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, mean, rstd = ctx.saved_tensors
    dz = fold_reflect_pad(dy, ctx.pad) if ctx.pad else dy  # gradient of the unpadded act(IN(x)) + residual
    dx = _instance_norm_backward(dz, x, mean, rstd, ctx.relu) if ctx.needs_input_grad[0] else None
    dresidual = dz if ctx.has_residual and ctx.needs_input_grad[1] else None
    return dx, dresidual, None, None, None


_instance_norm.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------
# public API


def instance_norm(
    x: Tensor, residual: Optional[Tensor] = None, *, relu: bool = False, eps: float = 1e-5, pad: int = 0
) -> Tensor:
    """y = IN(x), then relu(y) if `relu`, then y + residual if given, written reflection-padded by `pad`.

    x: (N, C, H, W) fp16/bf16/fp32/fp64, NCHW or channels-last; the output, (N, C, H + 2 pad, W + 2 pad),
    keeps x's dtype and memory format. `pad` equals `F.pad(y, (pad,) * 4, mode="reflect")` without the
    extra pass: the next 3x3 (pad=1) or 7x7 (pad=3) conv reads the output directly. residual: None or a
    tensor of x's shape, dtype and device, any strides (the interior view of a padded output works).
    Statistics are per (image, channel) over H*W, without affine parameters, as in `nn.InstanceNorm2d(C)`;
    they accumulate in fp32 (fp64 for fp64 x).
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
    if not 0 <= pad < min(x.shape[2], x.shape[3]):
        raise ValueError(
            f"reflection padding needs 0 <= pad < H and W: got pad={pad} for H x W = {x.shape[2]}x{x.shape[3]}"
        )
    return torch.ops.fastcyclegan.instance_norm(x, residual, relu, float(eps), int(pad))[0]
