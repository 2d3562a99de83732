"""glibc's heap kept for large CPU inference: freed activations reused, not faulted in again at every forward.

PyTorch allocates a CPU tensor with `posix_memalign` and frees it with `free`. glibc's malloc hands a freed
block that it mapped (one of its mmap threshold or more) back to the kernel, and trims the heap's free top
once it passes its trim threshold; both thresholds start low (128 KiB) and rise only as far as the largest
mapped block the program has freed (32 MiB at most, twice that for the trim). A forward's conv outputs of a
few MiB (FastGenerator at 256x256 batch 4 in bf16: 16 MiB each, freed once the norm after them has read
them) then come back as fresh pages, one fault each: in a process that also ran OpenVINO, 4,000-12,000
faults a forward, 2-3% of its 430 ms (2-core EPYC; bench/results/TUNING.md). OpenVINO and ONNX Runtime plan
their memory in arenas of their own; convs run through ATen allocate through the process's malloc.

`settle` fixes the two thresholds once a process, at the first buffer `workspace` keeps (large CPU inference
only): mmap for blocks of MMAP_BYTES or more (glibc's own dynamic maximum), trim past TRIM_BYTES of free heap
top. The cost is memory: up to TRIM_BYTES of freed heap stays with the process instead of going back to the
kernel. A process that sets glibc's malloc thresholds itself (any of GLIBC_VARIABLES in its environment, or
`glibc.malloc.` in GLIBC_TUNABLES) keeps them, and one with FASTCYCLEGAN_SETTLE_HEAP=0 (or false, off, no)
keeps glibc's own dynamic policy. Elsewhere (another C library, an allocator preloaded in glibc's place)
nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping

from .dispatch import environment_switch

MMAP_BYTES = 32 << 20  # glibc's largest dynamic mmap threshold on 64-bit (`workspace.LARGE_BYTES` is this)
TRIM_BYTES = 128 << 20  # a few conv outputs of up to 32 MiB freed at once (fp32 256x256 batch 4: none refaulted)
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
OFF_VARIABLE = "FASTCYCLEGAN_SETTLE_HEAP"  # 0/false/off/no: glibc's own policy stays
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def user_set(environ: Mapping[str, str]) -> bool:
    """Whether this environment sets glibc's malloc thresholds (its variables, or its tunables)."""
    return any(name in environ for name in GLIBC_VARIABLES) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def _mallopt():
    """glibc's `mallopt`, or None under another C library."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (AttributeError elsewhere)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


@functools.cache
def settle() -> bool:
    """Once a process: glibc's mmap threshold to MMAP_BYTES and its trim threshold to TRIM_BYTES, where glibc
    is the C library, the environment sets neither (`user_set`) and OFF_VARIABLE does not turn it off (ValueError
    for a value that is no switch's). Whether it set them."""
    if not environment_switch(OFF_VARIABLE, "off: glibc's own malloc thresholds") or user_set(os.environ):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES) == 1
