"""The parity rule, the one used by every test, benchmark and export check: a candidate's outputs against the
reference module run in float64, over several seeds, beside the reference module in the candidate's dtype."""

from __future__ import annotations

import contextlib
import math
import statistics
from dataclasses import dataclass

import torch
from torch import Tensor

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
