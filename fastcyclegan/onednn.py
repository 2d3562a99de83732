"""CPU inference convolutions (fp32 and bf16) with their weights reordered for oneDNN once, not at every call.

`F.conv2d` and `F.conv_transpose2d` on a CPU hand oneDNN a plain weight, which oneDNN reorders into its
blocked layout on every call (a 256x256x3x3 bf16 weight: 0.16 ms a call, a tenth of a 1x256x34x34 conv).
Here the reordered weight is kept, keyed by the weight's storage and version (an in-place update,
`load_state_dict`, `.to()` all re-pack), and the conv runs through ATen's `mkldnn::_convolution_pointwise`
(`_convolution_transpose_pointwise` for transposed convs), the ops inductor's CPU freezing pass uses: the same
oneDNN kernels, the same values. Only for plain inference (no gradient wanted, not traced by torch.compile) on
plain CPU tensors in fp32, or bf16 where oneDNN runs it natively, and only where this torch build has oneDNN
and the ops: `usable` says so, and otherwise the caller runs `F.conv2d`. Measured gain and the A/B:
bench/results/TUNING.md, CPU path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

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


@functools.cache
def _has_transposed_ops() -> bool:
    mkldnn = torch.ops.mkldnn
    return all(
        hasattr(mkldnn, op) for op in ("_convolution_transpose_pointwise", "_reorder_convolution_transpose_weight")
    )


@functools.cache
def _dtypes() -> tuple[torch.dtype, ...]:
    """fp32, and bf16 where oneDNN runs it natively (avx512_bf16, AMX; elsewhere ATen's bf16 conv is not oneDNN's)."""
    return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


def usable(h: Tensor, conv: nn.Module) -> bool:
    """Whether conv(h) may run on the pre-packed weight: a Conv2d or ConvTranspose2d (groups 1, no padding mode
    other than zeros: the caller pads), plain CPU tensors of one dtype, fp32 or natively run bf16, inference
    without autograd, compiler tracing or CPU autocast."""
    if torch.compiler.is_compiling():  # inductor has its own packing (freezing); traced code gets F.conv2d
        return False
    if torch.is_autocast_enabled("cpu"):  # the pointwise ops bypass autocast: F.conv2d casts as the reference's
        return False
    transposed = isinstance(conv, nn.ConvTranspose2d)
    if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or conv.groups != 1 or not isinstance(conv.padding, tuple):
        return False
    weight = conv.weight
    if conv.padding_mode != "zeros" or not (_has_ops() and torch.backends.mkldnn.enabled):
        return False
    if transposed and not (_has_transposed_ops() and all(p < s for p, s in zip(conv.output_padding, conv.stride))):
        return False
    if type(h) is not Tensor or type(weight.data) is not Tensor:
        return False
    if h.device.type != "cpu" or h.dtype != weight.dtype or h.dtype not in _dtypes():
        return False
    return not records_grad(h, weight)


# weight Parameter -> (data_ptr, version, packed weight); weak, so dropping a model frees its packed copies;
# one dictionary per way of packing (plain, 2x2-blocked)
_PACKED = WeakIdKeyDictionary()
_PACKED_BLOCKED = WeakIdKeyDictionary()
_PACKED_TRANSPOSED = WeakIdKeyDictionary()
_BLOCKED = WeakIdKeyDictionary()  # 2x2-blocked, not packed: half precision
_BLOCKED_BIAS = WeakIdKeyDictionary()  # bias Parameter -> each value 4 times, for the 2x2-blocked conv


def _reordered(weight: Tensor, padding, stride, dilation, h: Tensor) -> Tensor:
    # the input size is a hint for oneDNN's choice of weight layout; other sizes run correctly with it
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), padding, stride, dilation, 1, list(h.shape))


def _cached(cache: WeakIdKeyDictionary, param: Tensor, make) -> Tensor:
    """make(param) once per version of param, a conv's weight or bias (an in-place update, `load_state_dict`,
    `.to()` re-make it)."""
    key = (param.data_ptr(), param._version)
    hit = cache.get(param)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        made = make(param.detach())
    cache[param] = (key, made)
    return made


def _packed_weight(conv: nn.Conv2d, h: Tensor) -> Tensor:
    return _cached(_PACKED, conv.weight, lambda w: _reordered(w, *_geometry(conv), h))


def _geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int]]:
    return list(conv.padding), list(conv.stride), list(conv.dilation)


def _pointwise(h: Tensor, packed: Tensor, bias, padding, stride, dilation) -> Tensor:
    pointwise = torch.ops.mkldnn._convolution_pointwise.default
    return pointwise(h, packed, bias, padding, stride, dilation, 1, "none", [], "")


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
    bias = None if bias is None else _cached(_BLOCKED_BIAS, bias, lambda b: b.repeat_interleave(4))
    if usable(h, conv):
        packed = _cached(_PACKED_BLOCKED, conv.weight, lambda w: _reordered(_blocked_weight(w), *geometry, h))
        return torch.nn.functional.pixel_shuffle(_pointwise(h, packed, bias, *geometry), 2)
    blocked = _cached(_BLOCKED, conv.weight, lambda w: _blocked_weight(w).contiguous(memory_format=torch.channels_last))
    return torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(h, blocked, bias, stride=2), 2)


def writes_into_buffers() -> bool:
    """Whether this torch build has the in-place pointwise op `conv2d(..., out=)` runs on."""
    return hasattr(torch.ops.mkldnn, "_convolution_pointwise_")


def conv_call(conv: nn.Module, h: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    """conv(.) with `bias` (None: without) as a function of its input alone, for inputs of h's shape, dtype and
    layout, on the weight as pre-packed now; call only where `usable(h, conv)`. `conv2d` and `conv_transpose2d`
    call it at every call; a recorded plan (`cpu_plan`) keeps it."""
    padding, stride, dilation = _geometry(conv)
    if isinstance(conv, nn.ConvTranspose2d):
        output_padding = list(conv.output_padding)

        def make(weight: Tensor) -> Tensor:
            reorder = torch.ops.mkldnn._reorder_convolution_transpose_weight
            return reorder(weight, padding, output_padding, stride, dilation, 1, list(h.shape))

        packed = _cached(_PACKED_TRANSPOSED, conv.weight, make)
        transpose = torch.ops.mkldnn._convolution_transpose_pointwise.default
        return lambda x: transpose(x, packed, bias, padding, output_padding, stride, dilation, 1, "none", [], "")
    packed = _packed_weight(conv, h)
    return lambda x: _pointwise(x, packed, bias, padding, stride, dilation)


def conv2d(conv: nn.Conv2d, h: Tensor, bias: Tensor | None, out: Tensor | None = None) -> Tensor:
    """conv(h) with `bias` (None: without), in h's memory format; call only where `usable(h, conv)`. out: None,
    or a tensor of the output's shape, dtype and layout to write it into (where `writes_into_buffers()`,
    `conv_into_call`)."""
    if out is None:
        return conv_call(conv, h, bias)(h)
    return conv_into_call(conv, h, bias, out)(h)


def conv_into_call(conv: nn.Conv2d, h: Tensor, bias: Tensor | None, out: Tensor) -> Callable[[Tensor], Tensor]:
    """conv(.) with `bias` (None: without) written into `out` (a tensor of the output's shape, dtype and layout)
    as a function of its input alone, for inputs of h's shape, dtype and layout, on the weight as pre-packed
    now; call only where `usable(h, conv)` and `writes_into_buffers()`. `out` is zeroed, then the conv's result
    added by oneDNN's in-place pointwise op (the op inductor fuses conv + add into; it has no plain variant with
    an output). Adding to zeros changes no value (but -0.0 into +0.0). Returns `out`. `conv2d` calls it at
    every call; a recorded plan (`cpu_plan`) keeps it."""
    packed, geometry = _packed_weight(conv, h), _geometry(conv)
    add = torch.ops.mkldnn._convolution_pointwise_.binary

    def run(x: Tensor) -> Tensor:
        out.zero_()
        return add(out, x, packed, bias, *geometry, 1, "add", None, None, [], None)

    return run


def conv_transpose2d(conv: nn.ConvTranspose2d, h: Tensor, bias: Tensor | None) -> Tensor:
    """conv(h) with `bias` (None: without), in h's memory format; call only where `usable(h, conv)`. The
    transposed weight is reordered from its dense tensor (oneDNN's opaque tensors have no transposed reorder)."""
    return conv_call(conv, h, bias)(h)
