"""The whole CycleGAN training iteration of every backend (`--fcg-mode cycle`): gradient parity, then
iterations per second.

One iteration (bench/fcg_cycle.py, as the public training code runs it): two generators and two PatchGAN
discriminators, the generator step with identity, LSGAN and cycle losses, the discriminator step on pooled
fakes, two Adams. Backends: eager (Generator, Discriminator), compiled (each network torch.compile'd), fast
(FastGenerator, FastDiscriminator), fast_compiled (those with fullgraph). fp32, and bf16 as autocast over
fp32 weights. Before it is timed, every parameter's gradient of the four networks on several seeds' batches
is held to the parity rule against the reference networks in float64. Results: ms per iteration, images
(per domain) per second, iterations per second, with `mode` = cycle in the report.
"""

from __future__ import annotations

import time

import pytest
import torch

from bench.fcg_cycle import BACKENDS, build, gradients, iteration, reference_networks
from bench.fcg_matrix import blocks_for, generator_cases, matrix
from bench.fcg_results import UNTIMED_IS_DELIBERATE, parity_gate, time_and_record
from fastcyclegan.harness.backends import DTYPES, unavailable_reason
from fastcyclegan.harness.measure import generator_gflop, synchronize
from fastcyclegan.parity import PARITY_SEEDS, parity

FCG_MODE = "cycle"  # what bench/conftest.py records for this module's untimed cases
WARMUP_ITERATIONS = 2


def pytest_generate_tests(metafunc):
    if "cycle_case" not in metafunc.fixturenames:
        return
    m = matrix(metafunc.config)
    metafunc.parametrize(
        "cycle_case",
        generator_cases(m, "cycle", norms=["plain"]),  # backends it does not run skip, saying why
    )


def _batch(size, batch, device, seed):
    data = torch.Generator().manual_seed(seed)
    return tuple((torch.rand(batch, 3, size, size, generator=data) * 2 - 1).to(device) for _ in "AB")


@pytest.mark.filterwarnings(UNTIMED_IS_DELIBERATE)
def test_cycle_iteration(benchmark, cycle_case, fcg, device_info, pytestconfig):
    backend_name, size, batch, dtype_name, _norm = cycle_case
    device, dtype, ngf = fcg["device"], DTYPES[dtype_name], fcg["ngf"]
    if backend_name not in BACKENDS:
        reason = unavailable_reason(backend_name, device, training=True)
        pytest.skip(
            reason or f"the CycleGAN iteration runs {', '.join(BACKENDS)} (eager covers {backend_name}'s maths)"
        )
    if backend_name == "compiled" and device.type == "cpu" and dtype != torch.float32:
        pytest.skip("inductor's CPU bf16 backward of four networks takes many minutes on a small CPU")
    networks = reference_networks(blocks_for(size), ngf)
    torch._dynamo.reset()
    gan = build(backend_name, networks, device)
    eager, exact = build("eager", networks, device), build("eager", networks, device, torch.float64)
    seeds = [_batch(size, batch, device, seed) for seed in range(1, PARITY_SEEDS + 1)]
    start = time.perf_counter()
    ours = [gradients(gan, a, b, dtype) for a, b in seeds[:1]]
    compile_s = time.perf_counter() - start if backend_name.endswith("compiled") else 0.0
    ours += [gradients(gan, a, b, dtype) for a, b in seeds[1:]]
    same = [gradients(eager, a, b, dtype) for a, b in seeds]
    expected = [gradients(exact, a.double(), b.double(), torch.float64) for a, b in seeds]
    check = parity(ours, same, expected)
    if not parity_gate(benchmark, pytestconfig, check, mode="cycle", case=cycle_case, what="cycle iteration"):
        return

    real_a, real_b = seeds[0]

    def step():
        iteration(gan, real_a, real_b, dtype)
        synchronize(device)

    # an estimate: 6 generator forwards an iteration, backward twice a forward (the discriminators' share,
    # 6 small forwards, left out)
    gflop = 18 * generator_gflop(size, blocks_for(size), ngf)
    time_and_record(
        benchmark,
        step,
        warmup=WARMUP_ITERATIONS,
        rounds=fcg["rounds"],
        mode="cycle",
        case=cycle_case,
        ngf=ngf,
        compile_mode="default" if backend_name.endswith("compiled") else None,
        compile_s=compile_s,
        check=check,
        gflop=gflop,
        device=device,
        device_info=device_info,
    )
    if benchmark.stats is not None:
        benchmark.extra_info["iter_per_s"] = 1 / benchmark.stats.stats.median
