"""Candidate FastGenerator variants for A/B timing on a GPU (`bench/ab.py --backends fast,fast:stem8,...`).

They live here, not in the drop-in class: a candidate that wins its A/B moves into FastGenerator, the losers
are deleted. Each variant keeps FastGenerator's outputs and gradients (tests/test_fast.py checks it).

- stem8: the 3-channel input and the stem's weight zero-padded to 8 channels (the same sums), a channel count
  that cuDNN's tensor-core kernels take; cuDNN's default for 3 channels is a slow "indexed" kernel.
- head8: the head's weight and bias zero-padded to 8 output channels; the extra outputs are dropped.
- aten-norms: the norms of a CPU fp32 forward on the op's PyTorch implementation (ATen ops) instead of its C
  kernel (fastcyclegan.norm_cpu): the A/B of that kernel.
- unplanned: CPU inference call by call instead of replaying the recorded plan (fastcyclegan.cpu_plan): the
  A/B of the plan.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fastcyclegan import convs, cpu_plan, norm_cpu
from fastcyclegan.fast import FastGenerator, norm_after

CHANNELS = 8


class Stem8(FastGenerator):
    def _stem(self, h0: Tensor, site) -> Tensor:
        m, at = self.model, self.layout
        stem = m[at.stem]
        extra = max(0, CHANNELS - stem.in_channels)
        h = F.pad(h0, (0, 0, 0, 0, 0, extra))  # zero channels after the reflection pad (the plan refuses this stem)
        weight = F.pad(stem.weight, (0, 0, 0, 0, 0, extra)).contiguous(memory_format=convs.weight_format(stem))
        return norm_after(m, at.stem, stem._conv_forward(h, weight, None), relu=True)


class Head8(FastGenerator):
    def _head(self, head: nn.Conv2d, h: Tensor) -> Tensor:
        extra = max(0, CHANNELS - head.out_channels)
        weight = F.pad(head.weight, (0, 0, 0, 0, 0, 0, 0, extra)).contiguous(memory_format=convs.weight_format(head))
        bias = None if head.bias is None else F.pad(head.bias, (0, extra))
        return head._conv_forward(h, weight, bias)[:, : head.out_channels]


class Stem8Head8(Stem8, Head8):
    pass


class AtenNorms(FastGenerator):
    def forward(self, x: Tensor) -> Tensor:
        with norm_cpu.disabled():
            return super().forward(x)


class Unplanned(FastGenerator):
    def forward(self, x: Tensor) -> Tensor:
        with cpu_plan.disabled():
            return super().forward(x)


VARIANTS: dict[str, type[FastGenerator]] = {
    "stem8": Stem8,
    "head8": Head8,
    "stem8+head8": Stem8Head8,
    "aten-norms": AtenNorms,
    "unplanned": Unplanned,
}
