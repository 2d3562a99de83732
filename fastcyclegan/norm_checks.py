"""The fused norm's argument checks: each bad argument gets a ValueError saying what was expected and what
was found, before any route or implementation sees the call (`fastcyclegan.ops.instance_norm`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import memory_format_of, padded_shape

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def check_arguments(x, residual, weight, bias, conv_bias, eps, negative_slope, relu, pad) -> None:
    """Raises ValueError for anything `instance_norm` does not take (its docstring says what it takes)."""
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
    if conv_bias is not None and (not isinstance(conv_bias, Tensor) or conv_bias.shape != x.shape[1:2]):
        got = tuple(conv_bias.shape) if isinstance(conv_bias, Tensor) else type(conv_bias).__name__
        raise ValueError(f"conv_bias must be a tensor of shape ({x.shape[1]},) (one value per channel), got {got}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0 (added to each plane's variance), got {eps!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or not 0 <= negative_slope < 1:
        raise ValueError(f"negative_slope must be a number in [0, 1) (0: ReLU), got {negative_slope!r}")
    if negative_slope and not relu:
        raise ValueError("negative_slope is the slope of the activation: it takes relu=True")
    if isinstance(pad, bool) or not isinstance(pad, int):
        raise ValueError(f"pad must be an int (reflection padding in pixels), got {pad!r}")
    if not 0 <= pad < min(x.shape[2], x.shape[3]):
        raise ValueError(
            f"reflection padding needs 0 <= pad < H and W: got pad={pad} for H x W = {x.shape[2]}x{x.shape[3]}"
        )


def check_out(out, x: Tensor, residual, pad: int, route: str) -> None:
    """Raises ValueError unless `out` can take the output of x padded by `pad` on this route ("direct" only:
    autograd and the compiler need outputs of the op's own) without overlapping x or the residual."""
    if route != "direct":
        raise ValueError(
            f"out= takes plain inference only (no autograd, no compiler, no tensor subclass), not route {route!r}"
        )
    shape = padded_shape(x, pad)
    fmt = memory_format_of(x)
    if not isinstance(out, Tensor) or tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        got = (
            f"shape {tuple(out.shape)}, {out.dtype} on {out.device}" if isinstance(out, Tensor) else type(out).__name__
        )
        raise ValueError(f"out must be a tensor of shape {shape}, {x.dtype} on {x.device}; got {got}")
    if not out.is_contiguous(memory_format=fmt) or memory_format_of(out) != fmt:
        raise ValueError(f"out must be in x's memory format ({str(fmt).removeprefix('torch.')}), contiguous")
    read = [t.untyped_storage().data_ptr() for t in (x, residual) if t is not None]
    if out.untyped_storage().data_ptr() in read:
        raise ValueError("out must not share memory with x or the residual (both are read while it is written)")
