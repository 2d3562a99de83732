"""How every generator benchmark (inference, training step, CycleGAN iteration) gates on parity, times its
call once it has passed, and the row it stores in pytest-benchmark's extra_info: what `fastcyclegan report`
reads. A case that is not timed (a peer that failed the parity gate, a skipped or failed case) is a result
too: kept in the run's list of untimed cases, which the saved JSON carries as `fastcyclegan_untimed`."""

from __future__ import annotations

import math

import pytest
import torch

from bench.fcg_matrix import blocks_for
from fastcyclegan.harness.measure import GENERATOR_SUITE, UNTIMED_KEY, device_facts

# this project's own backends: failing parity is a bug here (the case fails); any other backend is a peer whose
# parity failure is a result to report (recorded, not timed)
OWN_BACKENDS = ("fast", "fast_compiled")
UNTIMED = UNTIMED_KEY  # the key of the untimed cases in the saved JSON
# a peer that failed the parity gate leaves the benchmark fixture unused on purpose (pytest-benchmark would warn)
UNTIMED_IS_DELIBERATE = "ignore:Benchmark fixture was not used at all"


def time_and_record(benchmark, call, *, warmup: int, rounds: int, **row) -> None:
    """`warmup` untimed calls, the peak-memory counter reset (CUDA), `rounds` timed calls of `call`, then the
    row (`record_generator_result`'s arguments)."""
    for _ in range(warmup):
        call()
    if row["device"].type == "cuda":
        torch.cuda.reset_peak_memory_stats(row["device"])
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    record_generator_result(benchmark, **row)


def record_generator_result(
    benchmark,
    *,
    mode: str,
    case: tuple,
    ngf: int,
    compile_mode,
    compile_s: float,
    check,
    gflop: float,
    device: torch.device,
    device_info: dict,
) -> None:
    """case = (backend, size, batch, dtype name, norm); gflop per image of what one timed call computes."""
    backend, size, batch, dtype_name, norm = case
    info = {
        "suite": GENERATOR_SUITE,
        "mode": mode,
        "backend": backend,
        "size": size,
        "num_blocks": blocks_for(size),
        "ngf": ngf,
        "batch": batch,
        "dtype": dtype_name,
        "norm": norm,
        "compile_mode": compile_mode,
        "compile_s": round(compile_s, 3),
        "parity_err": check.error,
        "parity_ref_err": check.reference_error,
        "gflop_per_image": gflop,
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        **device_info,
    }
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        info.update(ms_per_batch=median * 1e3, img_per_s=batch / median, tflop_s=gflop * batch / median / 1e3)
    benchmark.extra_info.update(info)


def parity_gate(benchmark, config, check, *, mode: str, case: tuple, what: str) -> bool:
    """True where the case passed the parity rule. A peer that failed is recorded as a result ("failed parity",
    with its error against eager's) and not timed: False. This project's own backends fail the case."""
    if check.passed:
        return True
    backend, dtype_name = case[0], case[3]
    if backend.split(":")[0] in OWN_BACKENDS:
        pytest.fail(f"{backend} {what} in {dtype_name} failed parity: {check}; not timed")
    ratio = check.error / check.reference_error if check.reference_error > 0 else math.inf
    record_untimed(config, mode, case, "failed parity", f"{ratio:.1f}x eager's error against float64 ({check})", check)
    benchmark.extra_info["untimed"] = f"failed the parity gate: {ratio:.1f}x eager's error against float64, not timed"
    return False


def record_untimed(config, mode: str, case: tuple, status: str, reason: str, parity=None) -> None:
    """Adds one untimed case (status "failed parity", "skipped" or "failed") to the run's list."""
    from bench.fcg_matrix import bench_device

    backend, size, batch, dtype_name, norm = case
    row = {
        "suite": GENERATOR_SUITE,
        "status": status,
        "reason": reason[:500],
        "mode": mode,
        "backend": backend,
        "size": size,
        "batch": batch,
        "dtype": dtype_name,
        "norm": norm,
        "device": device_facts(bench_device(config))["device"],
    }
    if parity is not None:
        row.update(parity_err=parity.error, parity_ref_err=parity.reference_error)
    untimed(config).append(row)


def untimed(config) -> list[dict]:
    """The run's untimed cases so far (kept on the pytest config)."""
    if not hasattr(config, "_fcg_untimed"):
        config._fcg_untimed = []
    return config._fcg_untimed
