"""Memory-layout rules shared by the custom ops' real, fake and fallback implementations and the kernels.

One rule decides an output's memory format, so the fake (meta) tensors that torch.compile traces have exactly
the strides of the real outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """channels_last for channels-last-contiguous x (decided by the channel stride, so an empty batch keeps
    its format too), else contiguous."""
    if x.shape[1] > 1 and x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def plane_layout(x: Tensor) -> Tensor:
    """x itself when it is NCHW- or channels-last-contiguous (H and W collapse into one strided axis), else an
    NCHW copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def padded_shape(x: Tensor, pad: int) -> tuple[int, int, int, int]:
    """(N, C, H + 2 pad, W + 2 pad) for x of shape (N, C, H, W): x reflection-padded by `pad`."""
    n, c, h, w = x.shape
    return (n, c, h + 2 * pad, w + 2 * pad)


def interior(t: Tensor, pad: int) -> Tensor:
    """The unpadded (N, C, H, W) view of t padded by `pad` (t itself for pad 0)."""
    return t[:, :, pad:-pad, pad:-pad] if pad else t


def padded_empty(x: Tensor, pad: int) -> Tensor:
    """An uninitialized (N, C, H + 2 pad, W + 2 pad) tensor in x's dtype, device and memory format."""
    return torch.empty(padded_shape(x, pad), device=x.device, dtype=x.dtype, memory_format=memory_format_of(x))


def stats_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the per-plane statistics (mean, rstd) of x: fp32 whatever the storage, fp64 for fp64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
        folded.narrow(dim, 1, pad).add_(mirrored(dy.narrow(dim, 0, pad), dim))
        folded.narrow(dim, size - 1 - pad, pad).add_(mirrored(dy.narrow(dim, pad + size, pad), dim))
        dy = folded
    return dy


def mirrored(border: Tensor, dim: int) -> Tensor:
    """border reversed along dim, the order a reflection pad writes it in; a 1-wide border is its own mirror
    and stays a view (a flip copies)."""
    return border.flip(dim) if border.shape[dim] > 1 else border
