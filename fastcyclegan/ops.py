"""`instance_norm(x, residual=None, *, weight, bias, conv_bias, relu, eps, pad)`: fused IN (+ affine) (+ ReLU)
(+ residual) (+ reflection pad) as a torch custom op, `torch.ops.fastcyclegan.instance_norm`, with a fake
(meta) implementation and a registered autograd formula, so `torch.compile(fullgraph=True)` keeps it as one
node. This module holds the op (schema, checks, fake, autograd) and nothing of its maths: three implementations
of one contract do the work, the Triton kernels of `fastcyclegan.kernels` (on CUDA, and on the CPU when
TRITON_INTERPRET=1 was set before Triton compiled them: the interpreter), the C kernel of
`fastcyclegan.norm_cpu` (fp32 and bf16 forwards, the fp32 backward with an activation, on a CPU) and
`fastcyclegan.norm_torch` (otherwise, and for float64 everywhere). `instance_norm` routes each call: traced
or subclassed tensors get the registered op; plain inference calls the implementation without the
dispatcher; eager autograd runs the
op's formula as one autograd.Function, or, for fp32 NCHW planes on a CPU, the ATen ops eager PyTorch runs
for the same maths (`_aten_composition`), whose own backwards take fewer passes there.

This is the only module that knows about Triton.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import norm_cpu
from .layout import fold_reflect_pad, padded_empty, plane_layout, stats_dtype
from .recording import records_grad

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_TRITON = importlib.util.find_spec("triton") is not None


def use_triton(x: Tensor) -> bool:
    """Whether x goes through the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1) or through PyTorch."""
    if x.dtype == torch.float64 or not _TRITON:
        return False
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def _implementation(x: Tensor):
    """The module whose instance_norm_forward / _backward run x: the kernels, or norm_cpu (its C kernel
    where it runs the call, else the PyTorch implementation): one contract (see fastcyclegan.norm_torch)."""
    if not use_triton(x):
        return norm_cpu
    from . import kernels  # imports triton: only when the kernels run

    return kernels


def implementation_name(x: Tensor) -> str:
    """What runs the op's forward on x, for reports: "triton", "c kernel" (norm_cpu) or "pytorch"."""
    if use_triton(x):
        return "triton"
    return "c kernel" if norm_cpu.runs(x) else "pytorch"


def _same_layout(t: Tensor, like: Tensor) -> Tensor:
    """t with exactly like's strides (the backward kernels address both through one set)."""
    return t if t.stride() == like.stride() else torch.empty_like(like).copy_(t)


# ----------------------------------------------------------------------------------------------------------
# custom ops


@torch.library.custom_op("fastcyclegan::instance_norm", mutates_args=())
def _instance_norm(
    x: Tensor,
    residual: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    relu: bool,
    eps: float,
    pad: int,
    conv_bias: Optional[Tensor] = None,
    negative_slope: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, mean, rstd): y reflection-padded by `pad`; mean and rstd (N, C) in fp32 (fp64 for fp64 x).
    conv_bias, the bias of the conv that made x, is not read: the norm removes any per-channel constant."""
    return _forward_impl(x, residual, weight, bias, relu, eps, pad, negative_slope)


def _forward_impl(x, residual, weight, bias, relu: bool, eps: float, pad: int, negative_slope: float):
    x = plane_layout(x)
    y = padded_empty(x, pad)
    mean, rstd = _implementation(x).instance_norm_forward(
        x, residual, y, weight=weight, bias=bias, relu=relu, eps=eps, negative_slope=negative_slope
    )
    return y, mean, rstd


@_instance_norm.register_fake
def _(x, residual, weight, bias, relu, eps, pad, conv_bias=None, negative_slope=0.0):
    x = plane_layout(x)
    stats = x.new_empty(x.shape[:2], dtype=stats_dtype(x))
    return padded_empty(x, pad), stats, torch.empty_like(stats)


@torch.library.custom_op("fastcyclegan::instance_norm_backward", mutates_args=())
def _instance_norm_backward(
    dz: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    relu: bool,
    negative_slope: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, sum of g, sum of g * xhat) from the gradient dz of the unpadded output; x is the saved (already
    plane-laid-out) input; the sums are per plane, (N, C) in the statistics' dtype."""
    return _backward_impl(dz, x, mean, rstd, weight, bias, relu, negative_slope)


def _backward_impl(dz, x, mean, rstd, weight, bias, relu: bool, negative_slope: float):
    dz = _same_layout(dz, x)
    return _implementation(x).instance_norm_backward(
        dz, x, mean, rstd, weight=weight, bias=bias, relu=relu, negative_slope=negative_slope
    )


@_instance_norm_backward.register_fake
def _(dz, x, mean, rstd, weight, bias, relu, negative_slope=0.0):
    return torch.empty_like(x), torch.empty_like(mean), torch.empty_like(mean)


def _setup_context(ctx, inputs, output, returned: bool = True):
    """Saves what the backward reads; `returned`: mean and rstd are outputs (the op's), marked
    non-differentiable."""
    x, residual, weight, bias, relu, _eps, pad, conv_bias, negative_slope = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(plane_layout(x), mean, rstd, weight, bias, conv_bias)
    ctx.relu, ctx.pad, ctx.negative_slope = relu, pad, negative_slope
    ctx.has_residual = residual is not None
    if returned:
        ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, mean, rstd, weight, bias, conv_bias = ctx.saved_tensors
    dz = fold_reflect_pad(dy, ctx.pad) if ctx.pad else dy  # gradient of the unpadded act(IN(x)) + residual
    need_x, need_residual, need_weight, need_bias = ctx.needs_input_grad[:4]
    dx = dweight = dbias = None
    if need_x or need_weight or need_bias:
        # a plain backward (grad mode off: no create_graph) calls the implementation itself, the op's dispatch
        # costing more than a small norm; traced by torch.compile, or differentiated again, it stays one op
        plain = not torch.is_grad_enabled() and _plain(dz, x, weight, bias)
        backward = _backward_impl if plain else _instance_norm_backward
        dx, sum_g, sum_gx = backward(dz, x, mean, rstd, weight, bias, ctx.relu, ctx.negative_slope)
        dx = dx if need_x else None
        dweight = sum_gx.sum(dim=0).to(weight.dtype) if need_weight else None
        dbias = sum_g.sum(dim=0).to(bias.dtype) if need_bias else None
    dresidual = dz if ctx.has_residual and need_residual else None
    # IN(z + b) = IN(z): the conv bias's gradient is exactly zero, and it gets one (DDP fails on a None).
    # A call that leaves the trailing arguments at their defaults takes as many gradients as it gave inputs.
    given = len(ctx.needs_input_grad)
    dconv_bias = torch.zeros_like(conv_bias) if given > 7 and ctx.needs_input_grad[7] else None
    return (dx, dresidual, dweight, dbias, None, None, None, dconv_bias, None)[:given]


_instance_norm.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------
# public API


def _check_affine(x: Tensor, weight, bias) -> None:
    if (weight is None) != (bias is None):
        raise ValueError("instance_norm takes weight and bias together (an affine norm has both) or neither")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.shape != x.shape[1:2] or not t.is_floating_point() or t.device != x.device:
            got = f"shape {tuple(t.shape)}, {t.dtype} on {t.device}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name} must be a floating-point tensor of shape ({x.shape[1]},) on {x.device} (one value per "
                f"channel), got {got}"
            )


def instance_norm(
    x: Tensor,
    residual: Optional[Tensor] = None,
    *,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    conv_bias: Optional[Tensor] = None,
    relu: bool = False,
    negative_slope: float = 0.0,
    eps: float = 1e-5,
    pad: int = 0,
) -> Tensor:
    """y = IN(x) * weight + bias (affine, when given), then relu(y) if `relu` (the leaky relu of
    `negative_slope`, 0.2 in the PatchGAN discriminator, when that is not 0), then y + residual if given,
    written reflection-padded by `pad`.

    x: (N, C, H, W) fp16/bf16/fp32/fp64, NCHW or channels-last; the output, (N, C, H + 2 pad, W + 2 pad),
    keeps x's dtype and memory format. `pad` equals `F.pad(y, (pad,) * 4, mode="reflect")` without the
    extra pass: the next 3x3 (pad=1) or 7x7 (pad=3) conv reads the output directly. residual: None or a
    tensor of x's shape, dtype and device, any strides (the interior view of a padded output works).
    weight, bias: None (as in `nn.InstanceNorm2d(C)`) or both (C,) float tensors (`affine=True`), any float
    dtype; both get gradients. conv_bias: None or the (C,) bias of the conv that made x, left out of that
    conv: the norm would remove it exactly, so it is not read, and its gradient is exactly zero; passing it
    gives it that zero gradient (DistributedDataParallel and gradient clipping expect one for every
    parameter). Statistics are per (image, channel) over H*W and accumulate in fp32 (fp64 for fp64 x).
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"instance_norm expects a 4-D (N, C, H, W) tensor, got {shape}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"instance_norm needs planes of at least 1x1, got H x W = {x.shape[2]}x{x.shape[3]}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"instance_norm expects float16, bfloat16, float32 or float64, got {x.dtype}")
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise ValueError(f"residual must be a tensor or None, got {type(residual).__name__}")
        if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
            raise ValueError(
                f"residual must match x: expected shape {tuple(x.shape)}, {x.dtype} on {x.device}, "
                f"got shape {tuple(residual.shape)}, {residual.dtype} on {residual.device}"
            )
    _check_affine(x, weight, bias)
    if conv_bias is not None and (not isinstance(conv_bias, Tensor) or conv_bias.shape != x.shape[1:2]):
        got = tuple(conv_bias.shape) if isinstance(conv_bias, Tensor) else type(conv_bias).__name__
        raise ValueError(f"conv_bias must be a tensor of shape ({x.shape[1]},) (one value per channel), got {got}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0 (added to each plane's variance), got {eps!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or not 0 <= negative_slope < 1:
        raise ValueError(f"negative_slope must be a number in [0, 1) (0: ReLU), got {negative_slope!r}")
    if negative_slope and not relu:
        raise ValueError("negative_slope is the slope of the activation: it takes relu=True")
    if isinstance(pad, bool) or not isinstance(pad, int):
        raise ValueError(f"pad must be an int (reflection padding in pixels), got {pad!r}")
    if not 0 <= pad < min(x.shape[2], x.shape[3]):
        raise ValueError(
            f"reflection padding needs 0 <= pad < H and W: got pad={pad} for H x W = {x.shape[2]}x{x.shape[3]}"
        )
    if weight is not None:
        weight, bias = weight.contiguous(), bias.contiguous()  # the kernels index them with stride 1
    args = (x, residual, weight, bias, relu, float(eps), int(pad), conv_bias, float(negative_slope))
    tensors = (x, residual, weight, bias, conv_bias)
    if not _plain(*tensors):  # traced by torch.compile, or tensor subclasses: the registered op
        return torch.ops.fastcyclegan.instance_norm(*args)[0]
    if not records_grad(*tensors):
        # plain inference: the implementation itself, without the dispatcher's custom-op machinery (about
        # 70 us a call on a CPU, a third of a small norm's time)
        return _forward_impl(x, residual, weight, bias, relu, float(eps), int(pad), float(negative_slope))[0]
    if _aten_differentiable(x, residual, weight, bias, conv_bias):  # eager autograd without the op's dispatch
        return _aten_composition(*args)
    return _EagerAutograd.apply(*args)


def _aten_differentiable(x: Tensor, residual, weight, bias, conv_bias) -> bool:
    """Whether eager autograd runs the op as eager PyTorch's own differentiable ATen ops (`_aten_composition`):
    fp32 NCHW-contiguous planes that no kernel runs (a CPU). There the op's PyTorch implementation makes
    the same ATen batch norm, activation and pad calls as InstanceNorm2d -> ReLU -> ReflectionPad2d, and its
    backward takes more passes than ATen's (the activation's mask recomputed, the pad's gradient folded in
    Python): a CycleGAN iteration ran 1.04-1.12x eager's time (bench/results/TUNING.md)."""
    same = all(t is None or t.dtype == torch.float32 for t in (residual, weight, bias, conv_bias))
    planes = x.shape[2] * x.shape[3] > 1  # ATen's instance norm refuses 1x1 planes in training; the op takes them
    return x.dtype == torch.float32 and same and planes and x.is_contiguous() and not use_triton(x)


def _aten_composition(x, residual, weight, bias, relu, eps, pad, conv_bias, negative_slope) -> Tensor:
    """The op's output by the ATen ops eager PyTorch runs for it, differentiated by ATen's own backwards:
    instance norm (one (1, N*C, H, W) batch norm, as the op's CPU forward), the activation in place (the batch
    norm's backward does not read its output), the residual add, the reflection pad. Outputs equal the op's;
    gradients equal its formula's to fp32 rounding. The conv bias joins the norm's shift multiplied by zero:
    it adds exactly nothing and gets its exact gradient, zero (DistributedDataParallel needs one)."""
    if conv_bias is not None:
        zero = conv_bias * 0.0
        bias = zero if bias is None else bias + zero
    y = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    if relu and negative_slope:
        y = F.leaky_relu(y, negative_slope, inplace=True)
    elif relu:
        y = F.relu(y, inplace=True)
    if residual is not None:
        y = y + residual
    if not pad:
        return y
    padded = F.pad(y, (pad,) * 4, mode="reflect")
    padded._fcg_unpadded = y  # for `interior`: lives and dies with the padded tensor
    return padded


def interior(padded: Tensor, pad: int) -> Tensor:
    """The unpadded part of the op's output padded by `pad`, to read (a residual, the next layer's input)
    without a copy: the tensor it was padded from where `_aten_composition` made it (a slice's gradient takes
    a zero fill and a copy of the whole padded tensor, twice), else the interior view."""
    unpadded = None if torch.compiler.is_compiling() else getattr(padded, "_fcg_unpadded", None)  # traced: the op
    return unpadded if unpadded is not None else padded[:, :, pad:-pad, pad:-pad]


class _EagerAutograd(torch.autograd.Function):
    """The op's forward, setup and backward for plain tensors in eager autograd, as one autograd.Function:
    the custom op's dispatch layers (its autograd wrapper, the dispatcher) cost more than a small norm on a
    CPU training step (bench/results/TUNING.md). torch.compile, tensor subclasses and double backward through
    the compiled graph keep the registered op."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, relu, eps, pad, conv_bias, negative_slope):
        y, mean, rstd = _forward_impl(x, residual, weight, bias, relu, eps, pad, negative_slope)
        inputs = (x, residual, weight, bias, relu, eps, pad, conv_bias, negative_slope)
        _setup_context(ctx, inputs, (y, mean, rstd), returned=False)
        return y

    @staticmethod
    def backward(ctx, dy):
        return _backward(ctx, dy, None, None)


def _plain(*tensors) -> bool:
    """Plain tensors or parameters (no fake or functional subclass), no compiler tracing: the op's
    implementation may run without its dispatch."""
    return not torch.compiler.is_compiling() and all(t is None or type(t) in _PLAIN_TYPES for t in tensors)


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
