"""One generator training step of every backend (`--fcg-mode train`): gradient parity first, then steps/s.

A step is what CycleGAN's generator update costs on its own: zero the gradients, forward, an L1 loss against
a target image (the cycle loss's form), backward, Adam (the paper's lr 2e-4, betas (0.5, 0.999)). Weights
stay fp32; bf16 means the forward and backward under bf16 autocast, as mixed-precision training runs.
Before it is timed, each backend's weight gradients on several seeds' inputs are held to the parity rule
against the float64 reference's (`fastcyclegan.parity.parity`, the same rule as the forward); a conv bias
that FastGenerator leaves out (the norm after it removes it) counts with gradient 0, as it is in exact
arithmetic. Results: ms per step and images per second, with `mode` = train in the report.
"""

from __future__ import annotations

import contextlib
import copy
import time

import pytest
import torch

from bench.fcg_matrix import blocks_for, generator_cases, matrix
from bench.fcg_models import reference
from bench.fcg_results import UNTIMED_IS_DELIBERATE, parity_gate, time_and_record
from fastcyclegan.harness.backends import DTYPES, build_backend, unavailable_reason
from fastcyclegan.harness.measure import generator_gflop, synchronize
from fastcyclegan.parity import PARITY_SEEDS, parity

FCG_MODE = "train"  # what bench/conftest.py records for this module's untimed cases
WARMUP_STEPS = 2
TRAIN_BACKENDS = ("eager", "compiled", "fast", "fast_compiled")


def pytest_generate_tests(metafunc):
    if "train_case" not in metafunc.fixturenames:
        return
    m = matrix(metafunc.config)
    metafunc.parametrize("train_case", generator_cases(m, "train"))  # the others skip, saying why


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out.to(target.dtype) - target).abs().mean()


def _gradients(module, run, x, target, device, dtype) -> torch.Tensor:
    """All weight gradients of one forward and backward, flattened in parameter order (None counts as 0)."""
    module.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
        out = run(x)
    _loss(out, target).backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in module.parameters()]
    return torch.cat([g.detach().double().flatten() for g in grads])


def _inputs(size, batch, device, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    target = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    return x.to(device), target.to(device)


@pytest.mark.filterwarnings(UNTIMED_IS_DELIBERATE)
def test_train_step(benchmark, train_case, fcg, device_info, pytestconfig):
    backend_name, size, batch, dtype_name, norm = train_case
    device, dtype, ngf = fcg["device"], DTYPES[dtype_name], fcg["ngf"]
    reason = unavailable_reason(backend_name, device, training=True)
    if reason or backend_name not in TRAIN_BACKENDS:
        pytest.skip(
            reason or f"the training step runs {', '.join(TRAIN_BACKENDS)} (eager covers {backend_name}'s maths)"
        )
    model = reference(size, ngf, norm)
    torch._dynamo.reset()
    backend = build_backend(backend_name, model, device=device, dtype=torch.float32, training=True)
    eager = copy.deepcopy(model).to(device).train()
    exact = copy.deepcopy(model).to(device=device, dtype=torch.float64).train()
    seeds = [_inputs(size, batch, device, seed) for seed in range(1, PARITY_SEEDS + 1)]

    start = time.perf_counter()
    ours = [_gradients(backend.module, backend.run, backend.prepare(x), t, device, dtype) for x, t in seeds[:1]]
    compile_s = time.perf_counter() - start if backend.compile_mode else 0.0
    ours += [_gradients(backend.module, backend.run, backend.prepare(x), t, device, dtype) for x, t in seeds[1:]]
    same = [_gradients(eager, eager, x, t, device, dtype) for x, t in seeds]
    expected = [_gradients(exact, exact, x.double(), t.double(), device, torch.float32) for x, t in seeds]
    check = parity(ours, same, expected)
    if not parity_gate(benchmark, pytestconfig, check, mode="train", case=train_case, what="training step"):
        return

    optimizer = torch.optim.Adam(backend.module.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x, target = backend.prepare(seeds[0][0]), seeds[0][1]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            out = backend.run(x)
        _loss(out, target).backward()
        optimizer.step()
        synchronize(device)

    gflop = 3 * generator_gflop(size, blocks_for(size), ngf)  # forward + backward (inputs and weights)
    time_and_record(
        benchmark,
        step,
        warmup=WARMUP_STEPS,
        rounds=fcg["rounds"],
        mode="train",
        case=train_case,
        ngf=ngf,
        compile_mode=backend.compile_mode,
        compile_s=compile_s,
        check=check,
        gflop=gflop,
        device=device,
        device_info=device_info,
    )
