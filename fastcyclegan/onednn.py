"""CPU fp32 inference convolutions with their weights reordered for oneDNN once, not at every call.

`F.conv2d` on a CPU hands oneDNN a plain weight, which oneDNN reorders into its blocked layout on every
call (the larger cost with channels-last activations). Here the reordered weight is kept, keyed by the
weight's storage and version (an in-place update, `load_state_dict`, `.to()` all re-pack), and the conv runs
through ATen's `mkldnn::_convolution_pointwise`, the op inductor's CPU freezing pass uses. Only for plain
inference (no gradient wanted, not traced by torch.compile) on plain fp32 CPU tensors, and only where this
torch build has oneDNN and the op: `usable` says so, and otherwise the caller runs `F.conv2d`.
Measured gain and the A/B: bench/results/TUNING.md, CPU path.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from .dispatch import records_grad


@functools.cache
def _has_ops() -> bool:
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    )


def usable(h: Tensor, conv: nn.Module) -> bool:
    """Whether conv(h) may run on the pre-packed weight: a Conv2d (groups 1, no padding mode other than
    zeros: the caller pads), plain fp32 CPU tensors, inference without autograd or compiler tracing."""
    if torch.compiler.is_compiling():  # inductor has its own packing (freezing); traced code gets F.conv2d
        return False
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or not isinstance(conv.padding, tuple):
        return False
    weight = conv.weight
    if conv.padding_mode != "zeros" or not (_has_ops() and torch.backends.mkldnn.enabled):
        return False
    if type(h) is not Tensor or type(weight.data) is not Tensor:
        return False
    if h.device.type != "cpu" or h.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    return not records_grad(h, weight)


# weight Parameter -> (data_ptr, version, packed weight); weak, so dropping a model frees its packed copies;
# one dictionary per way of packing (plain, 2x2-blocked)
_PACKED = WeakIdKeyDictionary()
_PACKED_BLOCKED = WeakIdKeyDictionary()
_BLOCKED = WeakIdKeyDictionary()  # 2x2-blocked, not packed: half precision


def _reordered(weight: Tensor, padding, stride, dilation, h: Tensor) -> Tensor:
    # the input size is a hint for oneDNN's choice of weight layout; other sizes run correctly with it
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), padding, stride, dilation, 1, list(h.shape))


def _cached(cache: WeakIdKeyDictionary, conv: nn.Conv2d, make) -> Tensor:
    """make() once per version of conv's weight (an in-place update, `load_state_dict`, `.to()` re-make it)."""
    weight = conv.weight
    key = (weight.data_ptr(), weight._version)
    hit = cache.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        made = make(weight.detach())
    cache[weight] = (key, made)
    return made


def _packed_weight(conv: nn.Conv2d, h: Tensor) -> Tensor:
    return _cached(_PACKED, conv, lambda w: _reordered(w, *_geometry(conv), h))


def _geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int]]:
    return list(conv.padding), list(conv.stride), list(conv.dilation)


def _pointwise(h: Tensor, packed: Tensor, bias, padding, stride, dilation) -> Tensor:
    return torch.ops.mkldnn._convolution_pointwise(h, packed, bias, padding, stride, dilation, 1, "none", [], "")


def blocked_2x2_fits(conv: nn.Conv2d, h: Tensor) -> bool:
    """Whether `conv2d_blocked_2x2` runs conv(h): a stride-1, unpadded, undilated square conv with at most 4
    output channels (the head's 3) whose output has even height and width, where `usable(h, conv)`."""
    k = conv.kernel_size
    if conv.out_channels > 4 or k[0] != k[1] or conv.stride != (1, 1) or conv.dilation != (1, 1):
        return False
    if conv.padding != (0, 0):
        return False
    rows, cols = h.shape[2] - k[0] + 1, h.shape[3] - k[1] + 1
    return rows > 0 and cols > 0 and rows % 2 == 0 and cols % 2 == 0


def _blocked_weight(weight: Tensor) -> Tensor:
    """(O, C, k, k) -> (4 O, C, k + 1, k + 1): output channel 4 o + 2 di + dj holds o's taps shifted by (di, dj),
    zeros elsewhere: one stride-2 conv with it computes the 2x2 block of outputs (2 i + di, 2 j + dj)."""
    o, c, k, _ = weight.shape
    blocked = weight.new_zeros(o, 2, 2, c, k + 1, k + 1)
    for di in (0, 1):
        for dj in (0, 1):
            blocked[:, di, dj, :, di : di + k, dj : dj + k] = weight
    return blocked.reshape(4 * o, c, k + 1, k + 1)


def conv2d_blocked_2x2(conv: nn.Conv2d, h: Tensor, bias: Tensor | None) -> Tensor:
    """conv(h) with `bias` (None: without) for a conv with few output channels (`blocked_2x2_fits`), computed
    as one stride-2 conv with a (k + 1)^2 kernel whose 4 O output channels are each output's 2x2 pixel
    blocks, then a pixel shuffle. oneDNN's kernels compute a vector of output channels (16 in fp32) whatever
    the count, so the 3-channel head ran at 3/16 of their width: the 7x7 head on 1x64x134x134 took 7.6 ms,
    this 2.7 ms (bf16: 4.6 and 1.7 ms) with the same error against float64 (bench/results/TUNING.md). The
    same sums, zeros added. On pre-packed weights where `usable(h, conv)` (fp32), else on a blocked copy of
    the weight in its dtype and channels-last (half precision); inference only, the copies are cached."""
    geometry = [0, 0], [2, 2], [1, 1]
    bias = None if bias is None else bias.repeat_interleave(4)
    if usable(h, conv):
        packed = _cached(_PACKED_BLOCKED, conv, lambda w: _reordered(_blocked_weight(w), *geometry, h))
        return torch.nn.functional.pixel_shuffle(_pointwise(h, packed, bias, *geometry), 2)
    blocked = _cached(_BLOCKED, conv, lambda w: _blocked_weight(w).contiguous(memory_format=torch.channels_last))
    return torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(h, blocked, bias, stride=2), 2)


def conv2d(conv: nn.Conv2d, h: Tensor, bias: Tensor | None) -> Tensor:
    """conv(h) with `bias` (None: without), in h's memory format; call only where `usable(h, conv)`."""
    return _pointwise(h, _packed_weight(conv, h), bias, *_geometry(conv))
