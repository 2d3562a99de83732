"""Generator throughput of every backend: parity against float64 first, then img/s and latency.

Each case builds its backend from one reference Generator (seeded weights), compiles it on its first call
(timed apart as compile seconds), checks its output against the reference run in float64 under the parity
rule of fastcyclegan.parity (several seeds' inputs; a peer that fails it is recorded, not timed), and only
then times it: median of `rounds` synchronized
calls on the first seed's input.
"""

from __future__ import annotations

import copy
import functools
import time

import pytest
import torch

from bench.fcg_matrix import blocks_for, generator_cases, matrix
from bench.fcg_models import reference
from bench.fcg_results import UNTIMED_IS_DELIBERATE, parity_gate, time_and_record
from fastcyclegan.harness.backends import DTYPES, build_backend, unavailable_reason
from fastcyclegan.harness.measure import generator_gflop, synchronize
from fastcyclegan.parity import PARITY_SEEDS, parity

FCG_MODE = "infer"  # what bench/conftest.py records for this module's untimed cases
WARMUP_CALLS = 3


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    metafunc.parametrize("case", generator_cases(matrix(metafunc.config), "infer"))


@functools.lru_cache(maxsize=2)
def _expected(size: int, batch: int, dtype_name: str, ngf: int, norm: str, device: torch.device):
    """(inputs, float64 outputs, outputs of the eager reference in `dtype`), one per parity seed, computed once."""
    inputs, expected, same_dtype = [], [], []
    model64 = copy.deepcopy(reference(size, ngf, norm)).to(device=device, dtype=torch.float64)
    model = copy.deepcopy(reference(size, ngf, norm)).to(device=device, dtype=DTYPES[dtype_name])
    for seed in range(1, PARITY_SEEDS + 1):
        torch.manual_seed(seed)
        x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        with torch.no_grad():
            expected.append(model64(x.double()))
            same_dtype.append(model(x.to(DTYPES[dtype_name])))
        inputs.append(x)
    return inputs, expected, same_dtype


@pytest.mark.filterwarnings(UNTIMED_IS_DELIBERATE)
def test_generator(benchmark, case, fcg, device_info, pytestconfig):
    backend_name, size, batch, dtype_name, norm = case
    device, dtype, ngf = fcg["device"], DTYPES[dtype_name], fcg["ngf"]
    reason = unavailable_reason(backend_name, device, dtype=dtype)
    if reason:
        pytest.skip(reason)
    inputs, expected, same_dtype = _expected(size, batch, dtype_name, ngf, norm, device)
    torch._dynamo.reset()
    backend = build_backend(backend_name, reference(size, ngf, norm), device=device, dtype=dtype, example=inputs[0])
    prepared = [backend.prepare(x.to(dtype)) for x in inputs]
    inp = prepared[0]

    def forward(x=inp):
        with torch.inference_mode():
            out = backend.run(x)
        synchronize(device)
        return out

    start = time.perf_counter()
    outputs = [forward().clone()]  # compiled backends compile here; CUDA graphs reuse their output buffer
    compile_s = time.perf_counter() - start if backend.compile_mode else 0.0
    outputs += [forward(x).clone() for x in prepared[1:]]
    check = parity(outputs, same_dtype, expected)
    if not parity_gate(benchmark, pytestconfig, check, mode="infer", case=case, what="inference"):
        return
    gflop = generator_gflop(size, blocks_for(size), ngf)
    time_and_record(
        benchmark,
        forward,
        warmup=WARMUP_CALLS,
        rounds=fcg["rounds"],
        mode="infer",
        case=case,
        ngf=ngf,
        compile_mode=backend.compile_mode,
        compile_s=compile_s,
        check=check,
        gflop=gflop,
        device=device,
        device_info=device_info,
    )
