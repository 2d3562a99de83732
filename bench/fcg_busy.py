"""Busy PyTorch processes beside a measurement: the shared CPU a deployed model meets (other jobs, data
loaders, a second model), so that a path that degrades worse than eager under load is seen.

Each process runs 3x3 convolutions (64 channels, 64x64) in a loop with PyTorch's default thread count and
OpenMP settings, as an independent PyTorch job on the same machine would; together they oversubscribe the
cores.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from collections.abc import Iterator

_LOOP = """
import torch
conv, x = torch.nn.Conv2d(64, 64, 3, padding=1), torch.randn(4, 64, 64, 64)
print("busy", flush=True)
with torch.inference_mode():
    while True:
        conv(x)
"""


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """`count` busy PyTorch processes, started (each has printed "busy") before the body runs, killed after."""
    # the load is the same whatever the measured process's OpenMP settings: each busy process has the defaults
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    popen = functools.partial(subprocess.Popen, stdout=subprocess.PIPE, text=True, env=env)
    procs = [popen([sys.executable, "-c", _LOOP]) for _ in range(count)]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "busy":
                raise RuntimeError(f"a busy process exited before it started (status {proc.poll()})")
        time.sleep(0.5 if procs else 0.0)  # let them reach their loop
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
