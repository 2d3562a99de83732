"""`fastcyclegan::instance_norm` in ONNX: the op lowered to the standard nodes of the reference network, for
`torch.onnx.export(..., dynamo=True, custom_translation_table=onnx_translation_table())` of any module that
calls it (FastGenerator, FastDiscriminator). Imports onnxscript only when the exporter calls the lowering.
"""

from __future__ import annotations

import torch

from . import ops  # noqa: F401  (registers torch.ops.fastcyclegan.instance_norm)


def _lowered_instance_norm(x, residual, weight, bias, relu, eps, pad, conv_bias=None, negative_slope=0.0):
    """`fastcyclegan::instance_norm` as ONNX nodes (onnxscript, traced by the exporter): InstanceNormalization,
    then Relu or LeakyRelu, then Add of the residual, then Pad(mode="reflect"); the op's order. The op's
    second and third outputs (per-plane mean and rstd, kept for its backward) are computed for the graph's
    types and removed by the exporter's optimizer, since nothing reads them. conv_bias is not read (the
    norm removes it)."""
    from onnxscript import opset18 as op

    channels = op.Shape(x, start=1, end=2)
    if weight is None:  # InstanceNormalization takes a scale and a bias: ones and zeros, one per channel
        weight = op.Expand(op.CastLike(op.Constant(value_float=1.0), x), channels)
        bias = op.Expand(op.CastLike(op.Constant(value_float=0.0), x), channels)
    else:
        weight, bias = op.CastLike(weight, x), op.CastLike(bias, x)
    y = op.InstanceNormalization(x, weight, bias, epsilon=eps)
    if relu:
        y = op.LeakyRelu(y, alpha=negative_slope) if negative_slope else op.Relu(y)
    if residual is not None:
        y = op.Add(y, residual)
    if pad:
        y = op.Pad(y, op.Constant(value_ints=[0, 0, pad, pad, 0, 0, pad, pad]), mode="reflect")
    planes = op.Cast(x, to=1)  # fp32 statistics, (N, C)
    axes = op.Constant(value_ints=[2, 3])
    mean = op.ReduceMean(planes, axes, keepdims=1)
    centred = op.Sub(planes, mean)
    variance = op.ReduceMean(op.Mul(centred, centred), axes, keepdims=0)
    rstd = op.Reciprocal(op.Sqrt(op.Add(variance, op.Constant(value_float=eps))))
    return y, op.ReduceMean(planes, axes, keepdims=0), rstd


def onnx_translation_table() -> dict:
    """`custom_translation_table` for `torch.onnx.export(..., dynamo=True)` of modules that call the fused op
    (FastGenerator, FastDiscriminator): the op becomes the standard ONNX nodes of the reference."""
    return {torch.ops.fastcyclegan.instance_norm.default: _lowered_instance_norm}
