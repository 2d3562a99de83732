"""The PyTorch ways to run a generator, built from a reference `Generator` for one device and dtype: eager
(NCHW or channels-last), `torch.compile`d (also with inductor's freezing, PyTorch's advice for CPU inference:
weights folded into constants and pre-packed for oneDNN), FastGenerator eager or compiled. `translate` runs
one of them; the benchmark registry (`fastcyclegan.harness.backends`) adds the deployment runtimes and
TensorRT on top.

Each variant holds a copy of the reference's weights (never shared) and says how inputs should be laid out
for it. `torch.compile` is lazy: the first call compiles, so callers time that call apart from the rest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .fast import FastGenerator
from .reference import Generator

VARIANTS = ("eager", "eager_cl", "compiled", "compiled_frozen", "compiled_max_autotune", "fast", "fast_compiled")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Variant:
    name: str
    module: nn.Module  # the eager module behind it (compiled variants wrap it)
    run: Callable[[Tensor], Tensor]
    channels_last_input: bool  # feed it channels-last inputs (converted once, outside any timing)
    compile_mode: str | None = None  # the torch.compile mode, None for eager variants

    def prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last if self.channels_last_input else torch.contiguous_format)


def compile_mode(device: torch.device) -> str:
    """torch.compile mode of both compiled variants: CUDA graphs on CUDA (small batches are launch-bound)."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def build_variant(
    name: str, reference: Generator, *, device: torch.device, dtype: torch.dtype, training: bool = False
) -> Variant:
    """Variant `name` holding a copy of `reference`'s weights on `device` in `dtype`, in eval mode (train mode
    when `training`: compiled without CUDA graphs, since an optimizer changes the weights between calls)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")
    if name == "compiled_max_autotune" and device.type != "cuda":
        raise RuntimeError(f"{name} requires CUDA")
    if name == "compiled_frozen" and training:
        raise RuntimeError(f"{name} folds the weights into constants: inference only")
    variant = _build(name, reference, device, dtype, "default" if training else compile_mode(device))
    variant.module.train(training)
    return variant


def _build(name: str, reference: Generator, device, dtype, mode: str) -> Variant:
    if name.startswith("fast"):
        fast = FastGenerator.from_module(reference).to(device=device, dtype=dtype).eval()
        if name == "fast_compiled":
            return Variant(name, fast, fast.compile(mode=mode), channels_last_input=True, compile_mode=mode)
        return Variant(name, fast, fast, channels_last_input=True)
    module: nn.Module = copy.deepcopy(reference).to(device=device, dtype=dtype).eval()
    if name == "eager":
        return Variant(name, module, module, channels_last_input=False)
    if name == "eager_cl":
        module = module.to(memory_format=torch.channels_last)
        return Variant(name, module, module, channels_last_input=True)
    if name == "compiled":
        return Variant(name, module, torch.compile(module, mode=mode), channels_last_input=False, compile_mode=mode)
    if name == "compiled_frozen":  # freezing wants no autograd: the weights stop being parameters
        options = {"freezing": True, "triton.cudagraphs": mode == "reduce-overhead"}
        run = torch.compile(module.requires_grad_(False), options=options)
        return Variant(name, module, run, channels_last_input=False, compile_mode=f"{mode}+freezing")
    run = torch.compile(module, mode="max-autotune")
    return Variant(name, module, run, channels_last_input=False, compile_mode="max-autotune")
