"""Buffers kept between inference calls for the fast modules' large activations on a CPU.

glibc hands freed blocks over its mmap threshold (32 MiB at most) and the heap's free top back to the kernel,
so large activations are faulted in page by page again at every forward: a 4x64x256x256 bf16 norm took
15.6 ms into a fresh output against 9.0 ms into a reused one (2-core EPYC, bench/results/TUNING.md). OpenVINO
plans its memory once; here
- each norm site (or role: FastGenerator's residual stream alternates between two buffers and its blocks'
  inner norms share a third) keeps its output buffer per thread and writes into it at the next call, above
  KEEP_BYTES (`kept_output`): 7 buffers for any number of blocks (65 MB at 256x256 batch 1 fp32);
- a conv output of LARGE_BYTES or more, which glibc always serves with fresh pages, is written into a scratch
  buffer kept per channel count (`scratch`: each conv's output is dead once the norm after it has read it),
  or made a group of images at a time where the conv cannot write into a buffer (`images_per_group`);
- the conv outputs under LARGE_BYTES, fresh at every call, stay in glibc's heap once freed (`heap.settle`, at
  the first kept buffer).
Only in plain inference (no autograd, no compiler). The buffers live as long as their module (a weak
reference keys them: never pickled, copied or in a state dict) and are dropped when it moves or casts; so is
the recorded plan of `cpu_plan`, kept here too, which holds its own buffers under the same roles.
Nothing a forward returns is one of them: the next layer reads a norm's output, the module returns its own.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor, nn

from . import heap
from .dispatch import plain, records_grad
from .layout import memory_format_of, padded_shape

KEEP_BYTES = 1 << 20  # smaller outputs come from the allocator's cached chunks without faults
# glibc's largest mmap threshold on 64-bit: blocks this large are mapped fresh at every allocation (a 4x3x262x262
# -> 64 channel bf16 conv, 32 MiB out: 15.3 ms with its 8,193 faults, 7.7 ms into a zeroed kept buffer); below it
# the heap usually keeps its pages and a fresh output is as fast as a buffer (bench/results/TUNING.md)
LARGE_BYTES = heap.MMAP_BYTES
_kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {thread: {site: tensor}}
_lock = threading.Lock()


def in_play(x: Tensor, *others) -> bool:
    """Whether buffers are kept for a call on x (and these parameters): plain inference on a CPU."""
    return x.device.type == "cpu" and not records_grad(x, *others) and plain(x, *others)


def per_thread(owner: nn.Module) -> dict:
    """What owner keeps for this thread (its buffers, `cpu_plan`'s plan), dropped by `forget`."""
    with _lock:
        return _kept.setdefault(owner, {}).setdefault(threading.get_ident(), {})


def _buffer(owner: nn.Module, key, shape: tuple, like: Tensor) -> Tensor:
    """The kept buffer `key` of owner on this thread, (re)made when its shape, dtype or layout changed."""
    return buffer_in(per_thread(owner), key, shape, like)


def buffer_in(kept: dict, key, shape: tuple, like: Tensor) -> Tensor:
    """kept[key], (re)made when its shape, or like's dtype or layout, changed (`cpu_plan` keeps its own)."""
    buffer = kept.get(key)
    fmt = memory_format_of(like)
    if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != like.dtype or memory_format_of(buffer) != fmt:
        heap.settle()  # once a process: freed activations stay in glibc's heap (`heap`)
        with torch.inference_mode(False):  # a normal tensor: writable in and outside inference mode
            buffer = kept[key] = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)
    return buffer


def kept_output(owner: nn.Module, site, x: Tensor, pad: int, *others, images: int | None = None) -> Tensor | None:
    """The buffer norm site `site` of `owner` writes x's output (padded by `pad`) into on this thread, kept
    between calls; None where a fresh tensor is right (autograd, tracing, a GPU, a small output). `images`: the
    batch the buffer holds when x is its first group of images (default: x's batch)."""
    if not in_play(x, *others):
        return None
    n, *rest = padded_shape(x, pad)
    shape = (images or n, *rest)
    if _bytes(shape, x) <= KEEP_BYTES:
        return None
    return _buffer(owner, site, shape, x)


def _bytes(shape: tuple, like: Tensor) -> int:
    return shape[0] * shape[1] * shape[2] * shape[3] * like.element_size()


def is_large(shape: tuple, like: Tensor) -> bool:
    """Whether an output of `shape` in like's dtype takes LARGE_BYTES or more (`scratch`, `images_per_group`)."""
    return _bytes(shape, like) >= LARGE_BYTES


def scratch(owner: nn.Module, shape: tuple, like: Tensor, *others) -> Tensor | None:
    """A buffer of `shape` in like's dtype and layout for an output of LARGE_BYTES or more, kept on this thread
    and shared by every output of that channel count under `owner` (each caller is done with it before the next
    takes it; remade when the shape changes, so images of ever new sizes keep one buffer a channel count, not
    one a size); None where a fresh tensor is right (autograd, tracing, a GPU, an output under LARGE_BYTES)."""
    if not is_large(shape, like) or not in_play(like, *others):
        return None
    return scratch_in(per_thread(owner), shape, like)


def scratch_in(kept: dict, shape: tuple, like: Tensor) -> Tensor:
    """kept's scratch buffer for an output of `shape` in like's dtype and layout, one a channel count (`scratch`;
    `cpu_plan` keeps its own)."""
    return buffer_in(kept, ("scratch", shape[1]), shape, like)


def images_per_group(shape: tuple, like: Tensor, *others) -> int:
    """How many images of an output of `shape` to make at a time so that each group's output stays under
    LARGE_BYTES, in groups of equal size; the whole batch where buffers are not kept or one image is that large."""
    n = shape[0]
    if not is_large(shape, like) or not in_play(like, *others):
        return n
    step = max(1, (LARGE_BYTES - 1) // _bytes((1, *shape[1:]), like))
    groups = -(-n // step)
    return -(-n // groups)


def forget(module: nn.Module) -> None:
    """Drops the buffers of `module` and its submodules (after a move or cast)."""
    with _lock:
        for m in module.modules():
            _kept.pop(m, None)
