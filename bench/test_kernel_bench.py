"""Fused IN+ReLU bandwidth against eager `F.instance_norm` + `relu` (NCHW, channels-last) and torch.compile.

GB/s counts the bytes the op must move: one read of x and one write of y. The same session measures a
device-to-device copy (conftest's `device_info`), so every result is also a fraction of that ceiling.
On CUDA the time is the kernels' own: `triton.testing.do_bench` (CUDA events around each launch, the L2
cache flushed between them, median of ~100 ms of launches), not one host-synchronized call, whose round
trip dominated small shapes (1x256x64x64 read as 21 GB/s). On a CPU it is the host clock per call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.fcg_matrix import matrix
from fastcyclegan import ops
from fastcyclegan.harness.backends import DTYPES
from fastcyclegan.harness.measure import KERNEL_SUITE, synchronize
from fastcyclegan.parity import PARITY_SEEDS, parity

VARIANTS = ("fused", "eager_nchw", "eager_cl", "compiled_cl")


def pytest_generate_tests(metafunc):
    if "kernel_case" not in metafunc.fixturenames:
        return
    m = matrix(metafunc.config)
    cases = [
        pytest.param((variant, shape, dtype), id=f"{variant}-{'x'.join(map(str, shape))}-{dtype}")
        for dtype in m["dtypes"]
        for shape in m["kernel_shapes"]
        for variant in VARIANTS
    ]
    metafunc.parametrize("kernel_case", cases)


def _in_relu(x):
    return F.relu(F.instance_norm(x))


def _variant(name: str):
    if name == "fused":
        return lambda x: ops.instance_norm(x, relu=True), True
    if name == "eager_nchw":
        return _in_relu, False
    if name == "eager_cl":
        return _in_relu, True
    return torch.compile(_in_relu, fullgraph=True, dynamic=False), True


def test_instance_norm_relu(benchmark, kernel_case, fcg, device_info):
    name, shape, dtype_name = kernel_case
    device, dtype = fcg["device"], DTYPES[dtype_name]
    fn, channels_last = _variant(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    inputs = []
    for seed in range(PARITY_SEEDS):
        torch.manual_seed(seed)
        inputs.append((torch.randn(shape, device=device) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt))
    x = inputs[0]

    def run(x=x):
        with torch.inference_mode():
            out = fn(x)
        synchronize(device)
        return out

    with torch.inference_mode():
        outputs = [run(x).clone() for x in inputs]
        check = parity(outputs, [_in_relu(x) for x in inputs], [F.relu(F.instance_norm(x.double())) for x in inputs])
    if not check.passed:
        pytest.fail(f"{name} in {dtype_name} failed parity: {check}; not timed")
    benchmark.pedantic(run, rounds=max(fcg["rounds"], 1), iterations=1, warmup_rounds=2)
    seconds, timing = _kernel_seconds(fn, x, device)
    moved = 2 * x.numel() * x.element_size()
    impl = ops.implementation_name(x) if name == "fused" else "aten"
    info = {
        "suite": KERNEL_SUITE,
        "variant": name,
        "impl": impl,
        "shape": "x".join(map(str, shape)),
        "dtype": dtype_name,
        "bytes": moved,
        "parity_err": check.error,
        "parity_ref_err": check.reference_error,
        "timing": timing,
        **device_info,
    }
    if seconds is None and benchmark.stats is not None:
        seconds = benchmark.stats.stats.median
    if seconds is not None:
        info.update(
            us=seconds * 1e6, gb_s=moved / seconds / 1e9, copy_fraction=moved / seconds / 1e9 / device_info["copy_gb_s"]
        )
    benchmark.extra_info.update(info)


def _kernel_seconds(fn, x, device) -> tuple[float | None, str]:
    """(seconds per call from the device's own clock, how it was timed); (None, ...) where the host clock of
    pytest-benchmark's rounds is the measure (a CPU)."""
    if device.type != "cuda":
        return None, "host clock, one call per round"
    from triton.testing import do_bench

    with torch.inference_mode():
        ms = do_bench(lambda: fn(x), warmup=25, rep=100, return_mode="median")
    return ms / 1e3, "triton do_bench: CUDA events, L2 flushed, median"
