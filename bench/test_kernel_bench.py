"""Fused IN+ReLU bandwidth against eager `F.instance_norm` + `relu` (NCHW, channels-last) and torch.compile.

GB/s counts the bytes the op must move: one read of x and one write of y. The same session measures a
device-to-device copy (conftest's `device_info`), so every result is also a fraction of that ceiling.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fcg_matrix import matrix

from fastcyclegan import ops
from fastcyclegan.backends import DTYPES
from fastcyclegan.measure import KERNEL_SUITE, PARITY_SEEDS, parity, synchronize

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
    moved = 2 * x.numel() * x.element_size()
    impl = ("triton" if ops.use_triton(x) else "pytorch fallback") if name == "fused" else "aten"
    info = {"suite": KERNEL_SUITE, "variant": name, "impl": impl, "shape": "x".join(map(str, shape)),
            "dtype": dtype_name, "bytes": moved, "parity_err": check.error,
            "parity_ref_err": check.reference_error,
            **device_info}  # fmt: skip
    if benchmark.stats is not None:
        median = benchmark.stats.stats.median
        info.update(
            us=median * 1e6, gb_s=moved / median / 1e9, copy_fraction=moved / median / 1e9 / device_info["copy_gb_s"]
        )
    benchmark.extra_info.update(info)
