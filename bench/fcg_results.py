"""How every generator benchmark (inference, training step, CycleGAN iteration) times its call once it has
passed parity, and the row it stores in pytest-benchmark's extra_info: what `fastcyclegan report` reads."""

from __future__ import annotations

import torch

from bench.fcg_matrix import blocks_for
from fastcyclegan.harness.measure import GENERATOR_SUITE


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
