"""The fused instance norm on a CPU in fp32 and bf16 by a small C kernel (csrc/instance_norm_cpu.c): the
contract of `fastcyclegan.norm_torch` (the same functions, arguments and outputs), the forward in one call.

ATen has no fused instance norm, so the PyTorch implementation takes six-odd passes a site (sum, centre,
square, sum, transform, activation, residual, border) and ~100 us of Python; the C kernel reads x twice (its
blocks' statistics, then the transform) and writes the output once, border included, in one OpenMP region
of the runtime torch itself uses. Statistics per plane in double, two passes over cache-sized blocks merged
by Chan's formula, and the transform in double: more exact than eager's batch norm
(bench/results/TUNING.md). NCHW and channels-last, fp32 and bf16 (read and written as bf16, no fp32 copy);
everything else, and machines without a C compiler, go to norm_torch. The backward (the op's own formula:
torch.compile's graph, and eager autograd where ATen's ops do not run it) in C for fp32 NCHW with an
activation (two passes over each plane, sums in double), norm_torch's otherwise.

The kernel is compiled with the host's C compiler (`$CC`, else `cc`; `-O3 -march=native -fno-trapping-math
-fopenmp`: without trapping maths gcc turns the activation's selects into vector blends) at its
first call and cached per source, compiler and CPU in `$FASTCYCLEGAN_CACHE_DIR` (default
`$XDG_CACHE_HOME/fastcyclegan`, else `~/.cache/fastcyclegan`): about a second, once. `FASTCYCLEGAN_CPU_KERNEL=0`
turns it off (norm_torch everywhere); `disabled()` does so for a block of code.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from . import norm_torch

SOURCE = Path(__file__).with_name("csrc") / "instance_norm_cpu.c"
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC", "-std=c11")
_ACTIVATION = {False: 0, "relu": 1, "leaky": 2}
_local = threading.local()


class KernelUnavailable(RuntimeError):
    """The C kernel could not be built or loaded; the message says why."""


def cache_dir() -> Path:
    if os.environ.get("FASTCYCLEGAN_CACHE_DIR"):
        return Path(os.environ["FASTCYCLEGAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastcyclegan"


def _cpu_flags() -> str:
    """The CPU's feature flags (`-march=native` compiles for them), so a cache shared by different machines
    keeps one build per kind of CPU."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith(("flags", "Features")):
                return line
    return platform.processor()


def build(directory: Path | None = None) -> Path:
    """The compiled kernel's path, compiling it into `directory` (default `cache_dir()`) if it is not there
    yet; written to a temporary name and renamed, so concurrent processes never load half a file.
    Raises KernelUnavailable with the compiler's last line of output."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"no C compiler: {compiler!r} is not on PATH (set CC to one)")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelUnavailable(f"the C compiler {compiler!r} does not run: {err}") from err
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), version.encode(), platform.machine().encode()):
        key.update(part)
    key.update(_cpu_flags().encode())
    directory = cache_dir() if directory is None else directory
    target = directory / f"instance_norm_cpu-{key.hexdigest()[:16]}.so"
    if target.exists():
        return _trusted(target)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=directory, prefix=".building-", suffix=".so")
        os.close(handle)
    except OSError as err:
        raise KernelUnavailable(f"cannot write the kernel's cache {directory}: {err}") from err
    try:
        command = [compiler, *FLAGS, str(SOURCE), "-o", partial]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            raise KernelUnavailable(f"{compiler} did not finish {SOURCE.name}: {err}") from err
        if done.returncode:
            lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
            raise KernelUnavailable(f"{compiler} failed on {SOURCE.name}: {lines[-1]}")
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return target


def _trusted(path: Path) -> Path:
    """path, if only this user can have written it: a library in a shared cache that someone else owns or
    could write would run their code in this process (its name is predictable)."""
    info = path.stat()
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise KernelUnavailable(
            f"refusing to load {path}: it is not owned by this user or is writable by others "
            "(delete it, or point FASTCYCLEGAN_CACHE_DIR at a private folder)"
        )
    return path


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (with one warning naming the reason) where it cannot be built or loaded,
    or FASTCYCLEGAN_CPU_KERNEL=0 turned it off."""
    if os.environ.get("FASTCYCLEGAN_CPU_KERNEL", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (KernelUnavailable, OSError) as err:
        warnings.warn(f"fastcyclegan: CPU norms run on the slower ATen path: {err}", RuntimeWarning, stacklevel=2)
        return None
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.fcg_instance_norm_forward.restype = ctypes.c_int
    lib.fcg_instance_norm_forward.argtypes = [p] * 8 + [i] * 5 + [ctypes.c_int] * 2
    lib.fcg_instance_norm_forward.argtypes += [ctypes.c_float, ctypes.c_double, ctypes.c_int, ctypes.c_int]
    lib.fcg_instance_norm_backward_f32.restype = None
    lib.fcg_instance_norm_backward_f32.argtypes = [p] * 9 + [i] * 4 + [ctypes.c_int, ctypes.c_float, ctypes.c_int]
    return lib


def runs(x: Tensor) -> bool:
    """Whether the kernel runs the forward of a norm on x (and its output in x's layout): fp32 or bf16 on a
    CPU, NCHW- or channels-last-contiguous, the kernel loaded and not disabled."""
    off = getattr(_local, "off", False)
    return not off and _layout(x, None, x) is not None and library() is not None  # out: x's layout


@contextlib.contextmanager
def disabled():
    """Runs the block's CPU norms (this thread's) on norm_torch: the A/B of the kernel, and tests."""
    before = getattr(_local, "off", False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = before


_STORAGE = (torch.float32, torch.bfloat16)


def _layout(x: Tensor, residual: Tensor | None, out: Tensor) -> int | None:
    """1 channels-last, 0 NCHW: the layout the kernel runs this call in; None where it cannot (not a CPU,
    not fp32 or bf16 throughout, other strides, an empty tensor)."""
    if x.device.type != "cpu" or x.dtype not in _STORAGE or out.dtype != x.dtype or x.numel() == 0:
        return None
    if residual is not None and residual.dtype != x.dtype:
        return None
    if x.is_contiguous() and out.is_contiguous() and (residual is None or residual.stride(3) == 1):
        return 0
    cl = torch.channels_last
    if x.is_contiguous(memory_format=cl) and out.is_contiguous(memory_format=cl):
        return 1 if residual is None or residual.stride(1) == 1 else None
    return None


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def instance_norm_forward(
    x: Tensor,
    residual: Tensor | None,
    out: Tensor,
    *,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    relu: bool = False,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """As norm_torch.instance_norm_forward: writes act(IN(x) * weight + bias) (+ residual) into `out`,
    reflection-padded by (out's H - x's H) / 2, and returns the (N, C) fp32 mean and rstd. fp32 or bf16
    storage (bf16 read and written as such, the maths in fp32 and double, rounded to bf16 once)."""
    layout = None if getattr(_local, "off", False) else _layout(x, residual, out)
    lib = None if layout is None else library()
    if lib is None:
        return norm_torch.instance_norm_forward(
            x, residual, out, weight=weight, bias=bias, relu=relu, eps=eps, negative_slope=negative_slope
        )
    n, c, h, w = x.shape
    mean = torch.empty((n, c), dtype=torch.float32)
    rstd = torch.empty_like(mean)
    weight, bias = _f32(weight), _f32(bias)
    strides = (ctypes.c_int64 * 4)(*(residual.stride() if residual is not None else (0, 0, 0, 0)))
    activation = _ACTIVATION[relu and ("leaky" if negative_slope else "relu")]
    failed = lib.fcg_instance_norm_forward(
        x.data_ptr(),
        out.data_ptr(),
        None if residual is None else residual.data_ptr(),
        strides,
        None if weight is None else weight.data_ptr(),
        None if bias is None else bias.data_ptr(),
        mean.data_ptr(),
        rstd.data_ptr(),
        n,
        c,
        h,
        w,
        (out.shape[2] - h) // 2,
        layout,
        activation,
        negative_slope,
        eps,
        x.dtype == torch.bfloat16,
        torch.get_num_threads(),
    )
    if failed:
        raise MemoryError(f"the CPU norm kernel could not allocate its partial statistics for x of shape {x.shape}")
    return mean, rstd


def instance_norm_backward(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    *,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    relu: bool = False,
    negative_slope: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """As norm_torch.instance_norm_backward: (dx, sum of g, sum of g * xhat) per plane from the gradient dy of
    the unpadded output (x's strides). The kernel runs NCHW with an activation (1x64x128x128 with ReLU: 0.42
    against ATen's 0.72-0.86 ms); without one ATen's batch-norm backward is faster (0.27 against 0.60 ms),
    and channels-last stays on norm_torch too (bench/results/TUNING.md)."""
    nchw = relu and not getattr(_local, "off", False) and _layout(x, None, x) == 0
    same = x.dtype == dy.dtype == mean.dtype == rstd.dtype == torch.float32 and dy.stride() == x.stride()
    lib = library() if nchw and same else None
    if lib is None:
        return norm_torch.instance_norm_backward(
            dy, x, mean, rstd, weight=weight, bias=bias, relu=relu, negative_slope=negative_slope
        )
    n, c, h, w = x.shape
    dx = torch.empty_like(x)
    sum_g, sum_gx = torch.empty((n, c), dtype=torch.float32), torch.empty((n, c), dtype=torch.float32)
    weight, bias = _f32(weight), _f32(bias)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    lib.fcg_instance_norm_backward_f32(
        *(None if t is None else t.data_ptr() for t in (dy, x, mean, rstd, weight, bias, dx, sum_g, sum_gx)),
        n,
        c,
        h,
        w,
        _ACTIVATION[relu and ("leaky" if negative_slope else "relu")],
        negative_slope,
        torch.get_num_threads(),
    )
    return dx, sum_g, sum_gx
