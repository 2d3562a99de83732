"""The fused instance norm on a CPU in fp32 and bf16 by a small C kernel (csrc/instance_norm_cpu.c), one of the
implementations of `fastcyclegan.norm_contract`; `runs_forward` / `runs_backward` say whether it runs a call
(`fastcyclegan.ops` routes everything else to norm_torch).

ATen has no fused instance norm, so the PyTorch implementation takes six-odd passes a site (sum, centre,
square, sum, transform, activation, residual, border) and ~100 us of Python; the C kernel reads x twice (its
blocks' statistics, then the transform) and writes the output once, border included, in one OpenMP region
of the runtime torch itself uses. Statistics per plane by two passes over cache-sized blocks (their sums in
double for NCHW, in fp32 on values shifted by the block's first pixel for channels-last), merged in double by
Chan's formula, and the transform in double (NCHW) or in fp32 on x - mean (channels-last): more exact than
eager's batch norm (bench/results/TUNING.md). NCHW and channels-last, fp32 and bf16 (read and written as bf16,
no fp32 copy). The backward in C for fp32 NCHW with an activation (two passes over each plane, sums in double):
without one ATen's batch-norm backward is faster, and channels-last stays on ATen too.

Built at first use, or ahead of time, and loaded safely by `fastcyclegan.norm_cpu_build`.
`FASTCYCLEGAN_CPU_KERNEL=0` (or false, off, no) turns it off; `disabled()` does so for a block of code.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .dispatch import ThreadSwitch, environment_switch
from .norm_cpu_build import KernelUnavailable, load, outside_stacklevel

_ACTIVATION = {False: 0, "relu": 1, "leaky": 2}
_switch = ThreadSwitch()
# runs this thread's norms on ATen (norm_torch) inside its block: the A/B of the kernel, and tests
disabled = _switch.disabled


def enabled_by_environment() -> bool:
    """FASTCYCLEGAN_CPU_KERNEL: 1/true/on/yes (the default) or 0/false/off/no; ValueError for anything else."""
    return environment_switch("FASTCYCLEGAN_CPU_KERNEL", "on: the C norm kernel, off: ATen's norms")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (with one warning naming the reason) where it cannot be built or loaded,
    or FASTCYCLEGAN_CPU_KERNEL turned it off."""
    if not enabled_by_environment():
        return None
    try:
        lib = load()
    except KernelUnavailable as err:
        warnings.warn(
            f"fastcyclegan: CPU norms run on the slower ATen path: {err}",
            RuntimeWarning,
            stacklevel=outside_stacklevel(),
        )
        return None
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.fcg_instance_norm_forward.restype = ctypes.c_int
    lib.fcg_instance_norm_forward.argtypes = [p] * 8 + [i] * 5 + [ctypes.c_int] * 2
    lib.fcg_instance_norm_forward.argtypes += [ctypes.c_float, ctypes.c_double, ctypes.c_int, ctypes.c_int]
    lib.fcg_instance_norm_backward_f32.restype = None
    lib.fcg_instance_norm_backward_f32.argtypes = [p] * 9 + [i] * 4 + [ctypes.c_int, ctypes.c_float, ctypes.c_int]
    return lib


def runs_forward(x: Tensor, residual: Tensor | None, out: Tensor) -> bool:
    """Whether the kernel runs this forward: fp32 or bf16 on a CPU throughout, NCHW- or channels-last-contiguous
    x and out (a residual with unit stride along that layout's last axis), the kernel loaded and not disabled."""
    return in_use() and _layout(x, residual, out) is not None


def in_use() -> bool:
    """Whether the kernel runs this thread's calls that it can run: loaded, and not turned off (`disabled`)."""
    return not _switch.off() and library() is not None


def runs_backward(dy: Tensor, x: Tensor, relu: bool) -> bool:
    """Whether the kernel runs this backward: fp32 NCHW with an activation (1x64x128x128 with ReLU: 0.42 against
    ATen's 0.72-0.86 ms); without one ATen's batch-norm backward is faster (0.27 against 0.60 ms), and
    channels-last is faster on ATen too (bench/results/TUNING.md)."""
    same = x.dtype == dy.dtype == torch.float32 and dy.stride() == x.stride()
    return relu and same and runs_forward(x, None, x) and _layout(x, None, x) == 0


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
    """`norm_contract.NormImplementation.instance_norm_forward`, where `runs_forward` holds: fp32 or bf16 storage
    (bf16 read and written as such, the maths in fp32 and double, rounded to bf16 once)."""
    fused = dict(weight=weight, bias=bias, relu=relu, eps=eps, negative_slope=negative_slope)
    return forward_call(x, residual, out, **fused)(x)


def forward_call(
    x: Tensor,
    residual: Tensor | None,
    out: Tensor,
    *,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    relu: bool = False,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """`instance_norm_forward(., residual, out, ...)` as a function of its input alone, for inputs of x's shape,
    dtype and strides, writing the same `out` with the same residual and affine parameters as they hold then
    (fp32 copies made now) and returning the same (mean, rstd) tensors at every call: `instance_norm_forward`
    calls it at every call, a recorded plan (`cpu_plan`) keeps it."""
    layout, lib = _layout(x, residual, out), library()
    if layout is None or lib is None:
        raise ValueError(f"the C norm kernel does not run this call ({x.dtype} on {x.device}); see runs_forward")
    n, c, h, w = x.shape
    mean = torch.empty((n, c), dtype=torch.float32)
    rstd = torch.empty_like(mean)
    weight, bias = _f32(weight), _f32(bias)
    strides = (ctypes.c_int64 * 4)(*(residual.stride() if residual is not None else (0, 0, 0, 0)))
    activation = _ACTIVATION[relu and ("leaky" if negative_slope else "relu")]
    pointers = (
        out.data_ptr(),
        None if residual is None else residual.data_ptr(),
        strides,
        None if weight is None else weight.data_ptr(),
        None if bias is None else bias.data_ptr(),
        mean.data_ptr(),
        rstd.data_ptr(),
    )
    sizes = (n, c, h, w, (out.shape[2] - h) // 2, layout, activation, negative_slope, eps, x.dtype == torch.bfloat16)
    # the tensors the kernel reads and writes by address stay alive with the call
    return _ForwardCall(lib.fcg_instance_norm_forward, pointers, sizes, (out, residual, weight, bias), mean, rstd)


class _ForwardCall:
    """`forward_call`'s function: the kernel on an input's address with every other argument made once."""

    __slots__ = ("kernel", "pointers", "sizes", "tensors", "mean", "rstd")

    def __init__(self, kernel, pointers: tuple, sizes: tuple, tensors: tuple, mean: Tensor, rstd: Tensor):
        self.kernel, self.pointers, self.sizes, self.tensors = kernel, pointers, sizes, tensors
        self.mean, self.rstd = mean, rstd

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.kernel(x.data_ptr(), *self.pointers, *self.sizes, torch.get_num_threads()):
            raise MemoryError(f"the CPU norm kernel could not allocate its partial statistics for x of shape {x.shape}")
        return self.mean, self.rstd


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
    """`norm_contract.NormImplementation.instance_norm_backward`, where `runs_backward` holds."""
    lib = library()
    if lib is None or not runs_backward(dy, x, relu):
        raise ValueError("the C norm kernel does not run this backward; see runs_backward")
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
