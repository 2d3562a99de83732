"""What a benchmark records beside its timings: FLOPs, the device's ceilings and versions, and the suite tags
the report reads (the parity rule itself is the product's: `fastcyclegan.parity`)."""

from __future__ import annotations

import functools
import platform
import statistics
import subprocess
import time

import torch

from ..reference import Generator

# The `suite` tag in every result's extra_info: the benchmarks write it, the report reads only these results.
GENERATOR_SUITE = "fastcyclegan.generator"
KERNEL_SUITE = "fastcyclegan.kernel"
# The saved run's list of generator cases that were not timed: a peer that failed the parity gate (a result),
# skipped cases (the reason) and failed ones; the benchmarks write it, the report shows it.
UNTIMED_KEY = "fastcyclegan_untimed"
UNTIMED_STATUSES = ("failed parity", "skipped", "failed")


@functools.cache
def generator_gflop(size: int, num_blocks: int, ngf: int = 64) -> float:
    """GFLOP of one forward at size x size (torch.utils.flop_counter; 99.1 at 256 with 9 blocks)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, x = Generator(num_blocks, ngf=ngf), torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, rounds: int) -> float:
    fn()
    synchronize(device)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@functools.cache
def ceilings(device: torch.device) -> dict[str, float]:
    """Copy bandwidth (GB/s, bytes read + written) and matmul rates (TFLOP/s) measured on this device now."""
    cuda = device.type == "cuda"
    n_bytes = (1 << 30) if cuda else (64 << 20)
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device, 10 if cuda else 3)
    facts = {"copy_gb_s": 2 * n_bytes / copy_s / 1e9}
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        # CPUs without native bf16 run a 1024^3 bf16 matmul for seconds: a smaller one there
        n = 8192 if cuda else 256 if dtype == torch.bfloat16 else 1024
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = _median_seconds(lambda a=a, b=b: a @ b, device, 10 if cuda else 3)
        facts[f"matmul_{label}_tflop_s"] = 2 * n**3 / seconds / 1e12
    return facts


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_facts(device: torch.device) -> dict[str, str | None]:
    """Device name and the versions a result depends on."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU {_cpu_name()}",
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda if cuda else None,
        "driver": _driver_version() if cuda else None,
        "cpu_threads": str(torch.get_num_threads()),
    }
