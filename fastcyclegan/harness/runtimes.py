"""The deployment runtimes a user would pick instead of PyTorch, as benchmark backends: ONNX Runtime and
OpenVINO, each running the ONNX file `fastcyclegan.export` makes of the reference generator (the same checked
export a user would ship; the registry, `backends`, exports it), on a CPU, with as many threads as PyTorch uses.

`unavailable(name, device, dtype)` says why one cannot run here (package absent, device, dtype);
`build(name, model, dtype)` returns a callable that takes and returns torch tensors, so the benchmarks time
and check it like any other backend (the numpy hand-over is zero-copy for fp32, made by numpy for bf16, and
inside the timing; no PyTorch op between two calls of a runtime).
Only the CPU is wired: ONNX Runtime's CUDA and TensorRT execution providers would need IO binding of CUDA
tensors, which nobody here could run (no GPU with onnxruntime-gpu); on CUDA they are skipped with that reason.
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

RUNTIMES = ("onnxruntime", "openvino")
_PACKAGE = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}
_NEEDS_EXPORT = ("onnx", "onnxscript")
# the dtypes each runs: ONNX Runtime the file's own (fp32 here: its CPU provider has no bf16 convolutions);
# OpenVINO an fp32 file at the inference precision asked for (bf16 where the CPU has it natively)
_DTYPES = {"onnxruntime": (torch.float32,), "openvino": (torch.float32, torch.bfloat16)}
_OPENVINO_PRECISION = {torch.float32: "f32", torch.bfloat16: "bf16"}


@functools.cache
def _openvino_capabilities() -> tuple[str, ...]:
    import openvino

    return tuple(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def unavailable(name: str, device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """Why runtime `name` cannot run on `device` in `dtype` here, or None when it can."""
    module, extra = _PACKAGE[name]
    for needed, its_extra in ((module, extra), *((m, "onnx") for m in _NEEDS_EXPORT)):
        if importlib.util.find_spec(needed) is None:
            return f"{needed} not installed (pip install 'fastcyclegan[{its_extra}]')"
    if device.type != "cpu":
        return f"{name} runs on the CPU here: its CUDA/TensorRT providers are not wired (never run on a GPU here)"
    if dtype is not None and dtype not in _DTYPES[name]:
        runs = ", ".join(str(d).removeprefix("torch.") for d in _DTYPES[name])
        return f"{name} runs {runs} on a CPU here, not {str(dtype).removeprefix('torch.')}"
    if name == "openvino" and dtype == torch.bfloat16 and "BF16" not in _openvino_capabilities():
        return "openvino: this CPU has no native bf16 (OPTIMIZATION_CAPABILITIES lacks BF16)"
    return None


def build(name: str, model, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """A callable running `model` (the onnx ModelProto `fastcyclegan.export.onnx_model` made of a generator) in
    runtime `name` on the CPU; call only where `unavailable` is None. Inputs: (N, C, H, W) CPU tensors in
    `dtype`; outputs the same dtype, NCHW."""
    threads = torch.get_num_threads()
    if name == "onnxruntime":
        return _onnxruntime(model.SerializeToString(), threads)
    return _openvino(model, threads, dtype)


def _onnxruntime(model: bytes, threads: int) -> Callable[[Tensor], Tensor]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # its idle threads would otherwise spin after each run, taking the cores from whatever runs next in the
    # process (an interleaved A/B's next backend: eager PyTorch took 1.4x its time right after it)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    (input_name,) = [i.name for i in session.get_inputs()]

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {input_name: x.contiguous().numpy()})[0])

    return run


def _openvino(model, threads: int, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    import onnx
    import openvino

    core = openvino.Core()
    config = {
        "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[dtype],  # its default on a bf16 CPU is bf16, even for fp32
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generator.onnx"
        onnx.save(model, str(path))
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: Tensor) -> Tensor:
        return tensor_of(request.infer([float32_array(x)])[compiled.output(0)], dtype)

    return run


def float32_array(x: Tensor):
    """x as a float32 numpy array, without a PyTorch op on the way for bf16 (its bits widened by numpy): a
    PyTorch conversion of a 1x3x128x128 image runs in parallel and leaves the OpenMP threads spinning through
    the runtime's own call beside them (OpenVINO bf16 at 128x128, interleaved with FastGenerator on a 2-core
    EPYC: 24.1-24.4 ms so, 20.1 ms widened so; bench/results/TUNING.md). fp32 (the other dtype the runtimes
    take) is zero-copy."""
    x = x.contiguous()
    if x.dtype == torch.bfloat16:
        bits = x.view(torch.int16).numpy().view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)
    return x.numpy()


def tensor_of(array, dtype: torch.dtype) -> Tensor:
    """The runtime's float32 output array as a new tensor of dtype (the runtime reuses its output buffer), bf16
    rounded by numpy as PyTorch rounds (to nearest even, NaN kept): no PyTorch op between the runtime's calls
    either (a pytest-benchmark round calls it again at once)."""
    if dtype != torch.bfloat16:
        return torch.from_numpy(array.copy())
    bits = array.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[np.isnan(array)] = 0x7FC0
    return torch.from_numpy(rounded.view(np.int16)).view(torch.bfloat16)
