"""`instance_norm(x, residual=None, *, weight, bias, conv_bias, relu, eps, pad)`: fused IN (+ affine) (+ ReLU)
(+ residual) (+ reflection pad) as a torch custom op, `torch.ops.fastcyclegan.instance_norm`, with a fake
(meta) implementation and a registered autograd formula, so `torch.compile(fullgraph=True)` keeps it as one
node. This module holds the op (schema, checks, fake, autograd) and the one routing table; the maths is in the
implementations of `fastcyclegan.norm_contract`. This is the only module that knows about Triton.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import norm_cpu, norm_torch
from .dispatch import plain, records_grad, use_triton
from .layout import fold_reflect_pad, padded_empty, plane_layout, stats_dtype
from .norm_checks import check_arguments, check_out
from .norm_contract import NormImplementation

# ----------------------------------------------------------------------------------------------------------
# The routing table: each call takes a route (how it reaches an implementation), then an implementation
# (which code does the maths); in each, the first row whose condition holds.
#
# route       when                                          what runs
# "op"        traced by torch.compile, or tensor subclasses the registered op: fake impl, autograd formula
# "direct"    plain tensors, autograd records nothing       the implementation, without the dispatcher
#                                                           (~70 us a call on a CPU: a third of a small norm)
# "autograd"  plain tensors under eager autograd            forward + formula as one autograd.Function
#
# (CPU fp32 training never reaches the op: FastGenerator runs eager PyTorch's own layers there, the conv
# policy's rule `convs.runs_aten_layers`.)


def _kernels() -> NormImplementation:
    from . import kernels  # imports triton: only when the kernels run

    return kernels


# implementation  forward when                                   backward when
# "triton"        CUDA, or a CPU under TRITON_INTERPRET=1        the same
# "c kernel"      norm_cpu runs the call (fp32/bf16, a CPU)      fp32 NCHW with an activation (norm_cpu says)
# "pytorch"       otherwise (float64 everywhere)                 otherwise
_FORWARD = (
    ("triton", lambda x, residual, out: use_triton(x), _kernels),
    ("c kernel", norm_cpu.runs_forward, lambda: norm_cpu),
    ("pytorch", lambda x, residual, out: True, lambda: norm_torch),
)
_BACKWARD = (
    ("triton", lambda dy, x, relu: use_triton(x), _kernels),
    ("c kernel", norm_cpu.runs_backward, lambda: norm_cpu),
    ("pytorch", lambda dy, x, relu: True, lambda: norm_torch),
)


def _pick(table, *call) -> tuple[str, NormImplementation]:
    return next((name, implementation()) for name, when, implementation in table if when(*call))


def route(*tensors) -> str:
    """ "op", "direct" or "autograd" for a call on these tensors (the table above)."""
    if not plain(*tensors):
        return "op"
    return "autograd" if records_grad(*tensors) else "direct"


def implementation_name(x: Tensor, residual: Tensor | None = None, out: Tensor | None = None) -> str:
    """What runs the op's forward on x (with this residual, into out; default: unpadded, none), for reports and
    the CPU plan (`cpu_plan`): "triton", "c kernel" or "pytorch"."""
    return _pick(_FORWARD, x, residual, x if out is None else out)[0]


def _same_layout(t: Tensor, like: Tensor) -> Tensor:
    """t with exactly like's strides (the backward kernels address both through one set)."""
    return t if t.stride() == like.stride() else torch.empty_like(like).copy_(t)


def _forward_impl(x, residual, weight, bias, relu: bool, eps: float, pad: int, negative_slope: float, out=None):
    x = plane_layout(x)
    y = padded_empty(x, pad) if out is None else out
    _, implementation = _pick(_FORWARD, x, residual, y)
    mean, rstd = implementation.instance_norm_forward(
        x, residual, y, weight=weight, bias=bias, relu=relu, eps=eps, negative_slope=negative_slope
    )
    return y, mean, rstd


def _backward_impl(dz, x, mean, rstd, weight, bias, relu: bool, negative_slope: float):
    dz = _same_layout(dz, x)
    _, implementation = _pick(_BACKWARD, dz, x, relu)
    return implementation.instance_norm_backward(
        dz, x, mean, rstd, weight=weight, bias=bias, relu=relu, negative_slope=negative_slope
    )


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
    """(dx, S1, S2) from the gradient dz of the unpadded output (`norm_contract`); x is the saved input."""
    return _backward_impl(dz, x, mean, rstd, weight, bias, relu, negative_slope)


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
        direct = not torch.is_grad_enabled() and plain(dz, x, weight, bias)
        backward = _backward_impl if direct else _instance_norm_backward
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


class _EagerAutograd(torch.autograd.Function):
    """The "autograd" route: the op's forward, setup and backward for plain tensors as one autograd.Function
    (the custom op's dispatch layers cost more than a small norm on a CPU training step)."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, relu, eps, pad, conv_bias, negative_slope):
        y, mean, rstd = _forward_impl(x, residual, weight, bias, relu, eps, pad, negative_slope)
        inputs = (x, residual, weight, bias, relu, eps, pad, conv_bias, negative_slope)
        _setup_context(ctx, inputs, (y, mean, rstd), returned=False)
        return y

    @staticmethod
    def backward(ctx, dy):
        return _backward(ctx, dy, None, None)


_ROUTES = {
    "op": lambda *args: torch.ops.fastcyclegan.instance_norm(*args)[0],
    "direct": lambda x, residual, weight, bias, relu, eps, pad, conv_bias, slope: _forward_impl(
        x, residual, weight, bias, relu, eps, pad, slope
    )[0],
    "autograd": _EagerAutograd.apply,
}


# ----------------------------------------------------------------------------------------------------------
# public API


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
    out: Optional[Tensor] = None,
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
    out: None, or the tensor to write the output into (the output's shape, dtype, device and memory format),
    in plain inference only (no autograd, no compiler): buffers kept between calls (`fastcyclegan.workspace`).
    """
    check_arguments(x, residual, weight, bias, conv_bias, eps, negative_slope, relu, pad)
    if weight is not None:
        weight, bias = weight.contiguous(), bias.contiguous()  # the kernels index them with stride 1
    args = (x, residual, weight, bias, relu, float(eps), int(pad), conv_bias, float(negative_slope))
    taken = route(x, residual, weight, bias, conv_bias)
    if out is not None:
        check_out(out, plane_layout(x), residual, pad, taken)
        return _forward_impl(*args[:7], args[8], out=out)[0]
    return _ROUTES[taken](*args)
