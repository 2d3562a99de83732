"""ONNX export of any generator module the loader makes or FastGenerator converts, checked before a byte is
written.

`export_onnx(module, path)` takes a `Generator`, a `FastGenerator` or any ResNet generator `describe_module`
recognises (a checkpoint goes through `fastcyclegan.load_generator` first, as `fastcyclegan export` does) and
writes an ONNX file, opset 18 or newer, fp32 or fp16, with dynamic batch, height and width. The graph is the
reference's: Conv, InstanceNormalization, Relu, Add, ConvTranspose, Tanh and Pad(mode="reflect") where the
paper pads; a FastGenerator's fused op is lowered to exactly those nodes through the exporter's translation
table (`fastcyclegan.ops_onnx`). Before the file is written the model is checked by `onnx.checker`, its pads
are checked to be the reference's reflection pads and its norms' scales and biases to be constants
(TensorRT's parser requires it), and, where onnxruntime is installed, it is run on PARITY_SEEDS inputs at two
batch sizes and two image sizes and held to the parity rule (`fastcyclegan.parity`) against the reference
module in float64. Needs the `onnx` extra.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_file
from .fast import FastGenerator
from .ops_onnx import onnx_translation_table
from .parity import PARITY_SEEDS, Parity, parity
from .recognition import NotConvertible
from .reference import Generator
from .structure import describe_module

MIN_OPSET = 18  # the exporter's default, and the oldest opset this project has run its checks on
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# (batch, H, W) of the parity check: two batch sizes and two image sizes run from the one file; small, so
# the fp16 reference (slow on a CPU) takes seconds
CHECK_SHAPES = ((1, 32, 32), (2, 48, 40))
INPUT_NAME, OUTPUT_NAME = "image", "translated"


@dataclass(frozen=True)
class ExportResult:
    """What was written and how it was checked."""

    path: Path
    dtype: str
    opset: int
    ops: tuple[str, ...]  # the ONNX operator types in the graph
    checks: tuple[tuple[tuple[int, int, int], Parity], ...]  # ((batch, H, W), parity) per checked shape
    unchecked: str | None  # why the file was not run (onnxruntime absent), else None
    channels: int = 3  # the generator's input channels (the checked shapes' C)

    def line(self) -> str:
        head = f"wrote {self.path}: {self.dtype}, opset {self.opset}, dynamic batch, height and width"
        if self.unchecked:
            return f"{head}; checked by onnx.checker, not run: {self.unchecked}"
        shapes = ", ".join(f"{n}x{self.channels}x{h}x{w}" for (n, h, w), _ in self.checks)
        worst = max(self.checks, key=lambda c: c[1].error / max(c[1].reference_error, 1e-30))[1]
        return (
            f"{head}; onnxruntime within the parity rule at {shapes} (largest: RMS error {worst.error:.3g} "
            f"against float64, eager {self.dtype} {worst.reference_error:.3g})"
        )


def _generator(module: nn.Module) -> tuple[nn.Module, Generator]:
    """(the module to export, the reference Generator with its weights): two objects, so casting the first to
    the file's dtype leaves the reference's weights as they were."""
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"export_onnx takes a generator module, got {type(module).__name__} (for a checkpoint file: "
            "fastcyclegan.load_generator(path), or `fastcyclegan export` on the command line)"
        )
    try:
        spec = describe_module(module)
    except NotConvertible as err:
        raise ValueError(f"cannot export {type(module).__name__}: it {err}") from err
    reference = spec.build(Generator)
    return copy.deepcopy(module if isinstance(module, FastGenerator) else reference), reference


def _check_arguments(path: Path, dtype: str, opset: int) -> None:
    if dtype not in EXPORT_DTYPES:
        raise ValueError(
            f"ONNX export writes fp32 or fp16 files (what ONNX Runtime, OpenVINO and TensorRT read), got {dtype!r}"
        )
    newest = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be an int from {MIN_OPSET} to {newest} (the newest the exporter here writes), got {opset!r}"
        )
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the ONNX file's path")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent} is not a folder: the ONNX file's folder must exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"folder {path.parent} cannot be written (no permission): nothing exported")


def max_opset() -> int:
    """The newest opset both this torch's exporter and the installed onnx write."""
    from torch.onnx import _constants

    newest = getattr(_constants, "ONNX_MAX_OPSET", MIN_OPSET)
    try:
        import onnx
    except ImportError:  # onnx_model names the missing extra
        return newest
    return min(newest, onnx.defs.onnx_opset_version())


def _written_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a line per unregistered torchvision op, prints its progress and warns of its own
    deprecations: keep them off the user's terminal."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def onnx_model(module: nn.Module, *, dtype: str = "fp32", opset: int = MIN_OPSET):
    """(the onnx ModelProto of `module`, checked, and the reference Generator it must match). No file."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'fastcyclegan[onnx]' ({err})") from err
    module, reference = _generator(module)
    _check_range(module, EXPORT_DTYPES[dtype])
    module = module.to(device="cpu", dtype=EXPORT_DTYPES[dtype]).eval()
    example = torch.zeros(2, module.in_channels, 64, 64, dtype=EXPORT_DTYPES[dtype])  # batch 2: not specialised
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(dims,),
            custom_translation_table=onnx_translation_table(),
            verbose=False,
        )
    model = program.model_proto
    if _written_opset(model) != opset:  # the exporter falls back to its own when it cannot convert
        raise ValueError(f"the exporter wrote opset {_written_opset(model)}, not the {opset} asked for: not written")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ValueError(f"the exported graph fails onnx.checker, not written: {err}") from err
    _check_pads(model, reference)
    _check_norm_parameters(model)
    return model, reference


def _check_range(module: nn.Module, dtype: torch.dtype) -> None:
    """ValueError naming the weights `dtype` cannot hold (fp16's largest value is 65504: they would become inf)."""
    largest = torch.finfo(dtype).max
    over = []
    for name, t in module.state_dict().items():
        if t.is_floating_point() and t.numel():
            biggest = t.detach().abs().max().item()
            if biggest > largest:
                over.append(f"{name} (largest |value| {biggest:.3g})")
    if over:
        more = f" and {len(over) - 4} more" if len(over) > 4 else ""
        raise ValueError(
            f"{str(dtype).removeprefix('torch.')} cannot hold these weights, its largest value is {largest:g}: "
            f"{', '.join(over[:4])}{more}; export fp32 instead: nothing written"
        )


def _check_pads(model, reference: Generator) -> None:
    """Reflection pads only, at least the reference's (7x7 stem and head, two per residual block; a
    FastGenerator's graph pads the last block's output too and slices it off). A zero pad would run and look
    almost right (only the borders differ), so it is refused."""
    modes = [
        next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
        for node in model.graph.node
        if node.op_type == "Pad"
    ]
    expected = 2 + 2 * reference.num_blocks
    if len(modes) < expected or any(m != "reflect" for m in modes):
        raise ValueError(
            f"the exported graph has {len(modes)} Pad nodes with modes {sorted(set(modes))}; expected at least "
            f"{expected}, all reflect (the reference's padding): not written"
        )


def _check_norm_parameters(model) -> None:
    """Every InstanceNormalization's scale and bias are constants of the file (initializers or Constant nodes),
    as TensorRT's ONNX parser requires of them; a scale computed at run time would parse in ONNX Runtime and
    fail there."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    for node in model.graph.node:
        if node.op_type == "InstanceNormalization" and not set(node.input[1:3]) <= constants:
            raise ValueError(
                f"InstanceNormalization {node.name!r} takes a scale or bias computed at run time "
                f"({', '.join(node.input[1:3])}); TensorRT needs them as constants of the file: not written"
            )


def _run_checks(model, reference: Generator, dtype: str) -> tuple[tuple[tuple[int, int, int], Parity], ...]:
    """Runs the model in onnxruntime (CPU) at CHECK_SHAPES on PARITY_SEEDS inputs each; ValueError when a shape
    breaks the parity rule against the reference module in float64."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    same = copy.deepcopy(reference).to(EXPORT_DTYPES[dtype]).eval()
    exact = copy.deepcopy(reference).double().eval()
    checks = []
    for batch, height, width in CHECK_SHAPES:
        outputs, references, expected = [], [], []
        for seed in range(1, PARITY_SEEDS + 1):
            generator = torch.Generator().manual_seed(seed)
            x = torch.rand(batch, reference.in_channels, height, width, generator=generator) * 2 - 1
            x = x.to(EXPORT_DTYPES[dtype])
            (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
            outputs.append(torch.from_numpy(out))
            with torch.no_grad():
                references.append(same(x))
                expected.append(exact(x.double()))
        check = parity(outputs, references, expected)
        if not check.passed:
            raise ValueError(f"onnxruntime's output at {batch}x3x{height}x{width} fails the parity rule: {check}")
        checks.append(((batch, height, width), check))
    return tuple(checks)


def export_onnx(module: nn.Module, path, *, dtype: str = "fp32", opset: int = MIN_OPSET) -> ExportResult:
    """Writes `module` (a generator module; see the module's docstring) to `path` as ONNX.

    Nothing is written unless every check passes: onnx.checker, the reference's reflection pads, and (where
    onnxruntime is installed) the parity rule at CHECK_SHAPES. The file appears whole or not at
    all (written beside `path`, then renamed). Raises ValueError naming the reason for a checkpoint or module
    that is not a ResNet generator, a dtype other than fp32/fp16, an opset below 18, or a failed check.
    """
    path = Path(path)
    _check_arguments(path, dtype, opset)
    model, reference = onnx_model(module, dtype=dtype, opset=opset)
    checks, unchecked = (), None
    if importlib.util.find_spec("onnxruntime") is None:
        unchecked = "onnxruntime is not installed (pip install 'fastcyclegan[onnx]')"
    else:
        checks = _run_checks(model, reference, dtype)
    with atomic_file(path, prefix=f".{path.name[:200]}.", suffix=".tmp") as f:  # exclusive, never through a link
        f.write(model.SerializeToString())
    ops = tuple(sorted({node.op_type for node in model.graph.node}))
    return ExportResult(path, dtype, opset, ops, checks, unchecked, reference.in_channels)
