"""Output buffers kept between inference calls for the fast modules' large norm outputs on a CPU.

glibc hands freed blocks over its mmap threshold (32 MB at most) and the heap's free top back to the kernel,
so large activations are faulted in page by page again at every forward: a 4x64x256x256 bf16 norm took
15.6 ms into a fresh output against 9.0 ms into a reused one (2-core EPYC, bench/results/TUNING.md). OpenVINO
plans its memory once; here each norm site (or role: FastGenerator's residual stream alternates between two
buffers and its blocks' inner norms share a third) keeps its output buffer per thread and writes into it at
the next call. Only in plain inference (no autograd, no compiler) and only above KEEP_BYTES. What it keeps is
about one forward's activations: 7 buffers for any number of blocks (65 MB at 256x256 batch 1 fp32). The
buffers live as long as their module (a weak reference keys them: never pickled, copied or in a state dict)
and are dropped when it moves or casts. Nothing a forward returns is one of them: the next layer reads a
norm's output, the module returns its own.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor, nn

from .dispatch import plain, records_grad
from .layout import memory_format_of, padded_empty

KEEP_BYTES = 1 << 20  # smaller outputs come from the allocator's cached chunks without faults
_kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {thread: {site: tensor}}
_lock = threading.Lock()


def kept_output(owner: nn.Module, site, x: Tensor, pad: int, *others) -> Tensor | None:
    """The buffer norm site `site` of `owner` writes x's output (padded by `pad`) into on this thread, kept
    between calls; None where a fresh tensor is right (autograd, tracing, a GPU, a small output)."""
    if x.device.type != "cpu" or records_grad(x, *others) or not plain(x, *others):
        return None
    n, c, h, w = x.shape
    if n * c * (h + 2 * pad) * (w + 2 * pad) * x.element_size() <= KEEP_BYTES:
        return None
    with _lock:
        per_thread = _kept.setdefault(owner, {}).setdefault(threading.get_ident(), {})
    buffer = per_thread.get(site)
    fmt = memory_format_of(x)
    shape = (n, c, h + 2 * pad, w + 2 * pad)
    if buffer is None or tuple(buffer.shape) != shape or buffer.dtype != x.dtype or memory_format_of(buffer) != fmt:
        with torch.inference_mode(False):  # a normal tensor: writable in and outside inference mode
            buffer = per_thread[site] = padded_empty(x, pad)
    return buffer


def forget(module: nn.Module) -> None:
    """Drops the buffers of `module` and its submodules (after a move or cast)."""
    with _lock:
        for m in module.modules():
            _kept.pop(m, None)
