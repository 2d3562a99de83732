"""One place that builds every benchmarked variant of the generator; benchmarks, tests and the CLI use it.

Each backend is built from a reference `Generator` (its weights are copied, never shared) for one device and
dtype, and says how inputs should be laid out for it. `torch.compile` is lazy: the first call compiles,
so callers time that call apart (compile seconds) from the steady state.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import runtimes
from .fast import FastGenerator
from .reference import Generator

BACKENDS = ("eager", "eager_cl", "compiled", "compiled_max_autotune", "fast", "fast_compiled", "tensorrt")
BACKENDS += runtimes.RUNTIMES  # onnxruntime, openvino: the exported ONNX file in a deployment runtime
# compiled_max_autotune compiles for minutes: only on request
DEFAULT_BACKENDS = tuple(b for b in BACKENDS if b != "compiled_max_autotune")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Backend:
    name: str
    module: nn.Module  # the eager module behind it (compiled backends wrap it)
    run: Callable[[Tensor], Tensor]
    channels_last_input: bool  # feed it channels-last inputs (converted once, outside any timing)
    compile_mode: str | None = None  # the torch.compile mode, None for eager backends

    def prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last if self.channels_last_input else torch.contiguous_format)


def compile_mode(device: torch.device) -> str:
    """torch.compile mode of both compiled backends: CUDA graphs on CUDA (small batches are launch-bound)."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def unavailable_reason(
    name: str, device: torch.device, training: bool = False, dtype: torch.dtype | None = None
) -> str | None:
    """Why `name` cannot run on `device` here (for training steps when `training`; in `dtype` when given), or
    None when it can."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name in runtimes.RUNTIMES:
        return (
            f"{name} is an inference runtime: no training step"
            if training
            else runtimes.unavailable(name, device, dtype)
        )
    if training and name == "tensorrt":
        return "tensorrt compiles an inference engine: no training step"
    if name in ("tensorrt", "compiled_max_autotune") and device.type != "cuda":
        return f"{name} requires CUDA"
    if name == "tensorrt" and importlib.util.find_spec("torch_tensorrt") is None:
        return "torch-tensorrt not installed (install the release matching your torch: see the README)"
    return None


def available_backends(device: torch.device, names=DEFAULT_BACKENDS) -> list[str]:
    return [n for n in names if unavailable_reason(n, device) is None]


def _tensorrt(module: nn.Module, example: Tensor, dtype: torch.dtype):
    import torch_tensorrt

    return torch_tensorrt.compile(module, ir="dynamo", inputs=[example], enabled_precisions={dtype})


def build_backend(
    name: str,
    reference: Generator,
    *,
    device: torch.device,
    dtype: torch.dtype,
    example: Tensor | None = None,
    training: bool = False,
) -> Backend:
    """Backend `name` holding a copy of `reference`'s weights on `device` in `dtype`, in eval mode (train
    mode when `training`: compiled without CUDA graphs, since an optimizer changes the weights between calls).

    `example` (an input of the benchmark's shape) is needed by tensorrt only, which compiles ahead of time.
    """
    reason = unavailable_reason(name, device, training, dtype)
    if reason:
        raise RuntimeError(f"backend {name} is unavailable: {reason}")
    backend = _build(name, reference, device, dtype, example, "default" if training else compile_mode(device))
    backend.module.train(training)
    return backend


def _build(name, reference, device, dtype, example, mode) -> Backend:
    if name in runtimes.RUNTIMES:
        module = copy.deepcopy(reference).eval()  # the weights the file was made from
        return Backend(name, module, runtimes.build(name, reference, dtype), channels_last_input=False)
    if name.startswith("fast"):
        fast = FastGenerator.from_module(reference).to(device=device, dtype=dtype).eval()
        if name == "fast_compiled":
            return Backend(name, fast, fast.compile(mode=mode), channels_last_input=True, compile_mode=mode)
        return Backend(name, fast, fast, channels_last_input=True)
    module: nn.Module = copy.deepcopy(reference).to(device=device, dtype=dtype).eval()
    if name == "eager":
        return Backend(name, module, module, channels_last_input=False)
    if name == "eager_cl":
        module = module.to(memory_format=torch.channels_last)
        return Backend(name, module, module, channels_last_input=True)
    if name == "compiled":
        return Backend(name, module, torch.compile(module, mode=mode), channels_last_input=False, compile_mode=mode)
    if name == "compiled_max_autotune":
        run = torch.compile(module, mode="max-autotune")
        return Backend(name, module, run, channels_last_input=False, compile_mode="max-autotune")
    if example is None:
        raise ValueError("the tensorrt backend compiles ahead of time: pass an example input")
    return Backend(name, module, _tensorrt(module, example.to(device, dtype), dtype), False, compile_mode="tensorrt")
