"""What a benchmark records beside its timings: parity, FLOPs, the device's ceilings and versions."""

from __future__ import annotations

import contextlib
import functools
import math
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .reference import Generator

# The `suite` tag in every result's extra_info: the benchmarks write it, the report reads only these results.
GENERATOR_SUITE = "fastcyclegan.generator"
KERNEL_SUITE = "fastcyclegan.kernel"

# The parity rule, the one used by every test and benchmark: run the candidate and the eager reference module
# in the same dtype on several seeds' inputs and measure both against the reference run in float64. One seed
# against one seed is a coin toss between equally good implementations, so the rule is on the seeds' median
# (at most PARITY_MEDIAN times the reference's), with a bound on the worst seed (PARITY_WORST times), plus a
# floor for round-off near zero. fp32 runs with TF32 off (`tf32_off`), so it must be as close as fp32 eager.
PARITY_SEEDS = 4
PARITY_MEDIAN = 1.1
PARITY_WORST = 1.5
PARITY_FLOOR = 1e-6


def rms_error(out: Tensor, expected: Tensor) -> float:
    return (out.double() - expected.double()).pow(2).mean().sqrt().item()


@dataclass(frozen=True)
class Parity:
    """RMS errors against float64 of the candidate and of the reference, one per seed, and the verdict."""

    errors: tuple[float, ...]
    reference_errors: tuple[float, ...]

    @property
    def error(self) -> float:
        return statistics.median(self.errors)

    @property
    def reference_error(self) -> float:
        return statistics.median(self.reference_errors)

    @property
    def passed(self) -> bool:
        if not self.errors or len(self.errors) != len(self.reference_errors):
            return False
        if not all(math.isfinite(e) for e in self.errors):
            return False
        worst = all(e <= PARITY_WORST * r + PARITY_FLOOR for e, r in zip(self.errors, self.reference_errors))
        return worst and self.error <= PARITY_MEDIAN * self.reference_error + PARITY_FLOOR

    def __str__(self) -> str:
        ratios = ", ".join(f"{e / r:.2f}x" if r > 0 else "inf" for e, r in zip(self.errors, self.reference_errors))
        return (
            f"median RMS error {self.error:.3g} against float64 vs the reference's {self.reference_error:.3g} "
            f"over {len(self.errors)} seeds (per seed: {ratios}; the rule: median <= {PARITY_MEDIAN}x, "
            f"every seed <= {PARITY_WORST}x)"
        )


def parity(outputs, same_dtype_references, expected64) -> Parity:
    """The parity rule over seeds: three equally long sequences of tensors (a single tensor counts as one seed).

    outputs: the candidate's; same_dtype_references: the eager reference module's in the candidate's dtype;
    expected64: the reference module's in float64, all on the same inputs.
    """
    seqs = [[t] if isinstance(t, Tensor) else list(t) for t in (outputs, same_dtype_references, expected64)]
    errors, reference_errors = [], []
    for out, ref, exp in zip(*seqs):
        errors.append(rms_error(out, exp) if out.shape == exp.shape else math.inf)
        reference_errors.append(rms_error(ref, exp))
    if len({len(s) for s in seqs}) != 1:
        errors.append(math.inf)  # a missing seed fails
    return Parity(tuple(errors), tuple(reference_errors))


@contextlib.contextmanager
def tf32_off():
    """fp32 means fp32 inside: TF32 off for cuDNN and matmuls, the previous flags restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


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
