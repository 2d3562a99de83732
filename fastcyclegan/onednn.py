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
    grad = torch.is_grad_enabled()
    return not (grad and (h.requires_grad or weight.requires_grad))


# weight Parameter -> (data_ptr, version, packed weight); weak, so dropping a model frees its packed copies
_PACKED = WeakIdKeyDictionary()


def _packed_weight(conv: nn.Conv2d, h: Tensor) -> Tensor:
    weight = conv.weight
    key = (weight.data_ptr(), weight._version)
    hit = _PACKED.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        # the input size is a hint for oneDNN's choice of weight layout; other sizes run correctly with it
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.detach().to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation), 1, list(h.shape)
        )
    _PACKED[weight] = (key, packed)
    return packed


def conv2d(conv: nn.Conv2d, h: Tensor, bias: Tensor | None) -> Tensor:
    """conv(h) with `bias` (None: without), in h's memory format; call only where `usable(h, conv)`."""
    return torch.ops.mkldnn._convolution_pointwise(
        h,
        _packed_weight(conv, h),
        bias,
        list(conv.padding),
        list(conv.stride),
        list(conv.dilation),
        1,
        "none",
        [],
        "",
    )
