"""The benchmark registry: every benchmarked variant of the generator, built in one place for benchmarks,
tests and `fastcyclegan report`. The PyTorch variants are the product's (`fastcyclegan.variants`); the
registry adds TensorRT and the deployment runtimes (`runtimes`) as peers, and says why any cannot run here.
`torch.compile` is lazy: the first call compiles, so callers time that call apart (compile seconds).
"""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import Tensor, nn

from ..export import onnx_model
from ..reference import Generator
from ..variants import DTYPES, VARIANTS, Variant, build_variant
from . import runtimes

__all__ = ["BACKENDS", "DEFAULT_BACKENDS", "DTYPES", "Backend", "available_backends", "build_backend"]

Backend = Variant  # a backend is a variant or a runtime's callable with the same fields
BACKENDS = (*VARIANTS, "tensorrt", *runtimes.RUNTIMES)  # onnxruntime, openvino: the exported ONNX file
# compiled_max_autotune compiles for minutes: only on request
DEFAULT_BACKENDS = tuple(b for b in BACKENDS if b != "compiled_max_autotune")


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
    if training and name == "compiled_frozen":
        return "compiled_frozen folds the weights into constants (inductor's freezing): no training step"
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
    mode when `training`; `fastcyclegan.variants.build_variant`).

    `example` (an input of the benchmark's shape) is needed by tensorrt only, which compiles ahead of time.
    """
    reason = unavailable_reason(name, device, training, dtype)
    if reason:
        raise RuntimeError(f"backend {name} is unavailable: {reason}")
    if name in VARIANTS:
        return build_variant(name, reference, device=device, dtype=dtype, training=training)
    if name in runtimes.RUNTIMES:
        module = copy.deepcopy(reference).eval()  # the weights the file was made from
        model, _ = onnx_model(reference, dtype="fp32")
        return Backend(name, module, runtimes.build(name, model, dtype), channels_last_input=False)
    if example is None:
        raise ValueError("the tensorrt backend compiles ahead of time: pass an example input")
    module: nn.Module = copy.deepcopy(reference).to(device=device, dtype=dtype).eval()
    run = _tensorrt(module, example.to(device, dtype), dtype)
    return Backend(name, module, run, channels_last_input=False, compile_mode="tensorrt")
