"""FastGenerator's convolutions and the device policy behind them.

Which memory format activations and conv weights take for a device, dtype and network width; the CPU's
pre-packed oneDNN weights (`onednn.py`); the transposed conv's layout; convs run without the bias that the
instance norm after them removes; and where CPU fp32 training runs eager PyTorch's own layers around the convs
instead of the fused op (`runs_aten_layers`). The fast modules' forwards only walk the network and call these.
Measurements behind each rule: bench/results/TUNING.md ("CPU path").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import onednn
from .dispatch import plain, records_grad, use_triton

# below this many stem outputs per image (ngf * H * W) the pre-packed channels-last path's fixed cost per
# layer outweighs what it saves (ngf 8 at 32x32: 1.78x eager's time against 1.32x NCHW; ngf 64 at 32x32:
# 0.97x against 1.19x; bench/results/TUNING.md, CPU step 2)
PACKED_MIN_STEM_OUTPUTS = 1 << 15


def conv_memory_format(device: torch.device, dtype: torch.dtype) -> torch.memory_format:
    """The layout of activations and conv weights that runs fastest with plain weights: channels-last on GPUs
    (cuDNN's NHWC kernels, no layout copies) and for half precision on a CPU (oneDNN's NCHW bf16 convs are
    many times slower on CPUs without native bf16); NCHW for fp32 on a CPU (autograd, torch.compile), where
    oneDNN's NCHW convs and the op's batch-norm path are faster. CPU fp32 inference runs channels-last on
    pre-packed weights instead (`activation_format`)."""
    if device.type == "cpu" and dtype in (torch.float32, torch.float64):
        return torch.contiguous_format
    return torch.channels_last


def weight_format(conv: nn.Module) -> torch.memory_format:
    """Conv weights follow `conv_memory_format`, but a transposed conv's weight is channels-last on a CPU in
    fp32 too: oneDNN's deconvolution is a third faster with both it and its input channels-last."""
    weight = conv.weight
    if isinstance(conv, nn.ConvTranspose2d) and weight.device.type == "cpu" and weight.dtype == torch.float32:
        return torch.channels_last
    return conv_memory_format(weight.device, weight.dtype)


def place_weights(module: nn.Module) -> None:
    """Puts every conv weight under `module` in the memory format that runs fastest for its device and dtype
    (`weight_format`), in place: the convs follow the weights. The fast modules call it after every move or
    cast (.to, .cuda, .bfloat16, ...)."""
    for conv in module.modules():
        if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
            fmt = weight_format(conv)
            if not conv.weight.is_contiguous(memory_format=fmt):
                conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)


def activation_format(x: Tensor, stem: nn.Conv2d) -> torch.memory_format:
    """The layout of the network's activations for input x: channels-last where the convs run on oneDNN
    pre-packed weights (CPU inference: `onednn.usable`) and the network is wide enough for it to pay, else the
    weights' format (channels-last too for bf16, which has no NCHW path worth taking on a CPU)."""
    if x.shape[2] * x.shape[3] * stem.out_channels >= PACKED_MIN_STEM_OUTPUTS and onednn.usable(x, stem):
        return torch.channels_last
    return conv_memory_format(stem.weight.device, stem.weight.dtype)


def runs_packed(x: Tensor, stem: nn.Conv2d) -> bool:
    """Whether a network whose first conv is `stem` runs input x channels-last on pre-packed oneDNN weights
    (`activation_format`): CPU inference in fp32 or natively run bf16, never autograd, a GPU or tracing."""
    return activation_format(x, stem) == torch.channels_last and onednn.usable(x, stem)


def _packed(h: Tensor, conv: nn.Module) -> bool:
    """Whether conv(h) runs on oneDNN pre-packed weights: where `activation_format` chose channels-last
    activations for them and `onednn.usable` allows it."""
    return h.is_contiguous(memory_format=torch.channels_last) and onednn.usable(h, conv)


def _transposed(conv: nn.ConvTranspose2d, h: Tensor) -> Tensor:
    """conv(h) without its bias, in the layout of h's activations (h may be a padded tensor's interior: its
    channel stride tells), with input and weight channels-last for oneDNN on a CPU in inference. With autograd
    NCHW activations keep an NCHW weight (a copy of the channels-last parameter, a fraction of an activation's
    size): the layout copies of input, output and both their gradients cost more than channels-last saves
    (1x128x64x64 -> 64 channels, forward + backward: 21.7 against 19.3 ms; bench/results/TUNING.md)."""
    nchw = h.stride(1) != 1 or h.shape[1] == 1
    weight = conv.weight
    if not nchw and onednn.usable(h, conv):  # inference: a pre-packed weight
        return onednn.conv_transpose2d(conv, h.contiguous(memory_format=torch.channels_last), None)
    if nchw and records_grad(h, weight):
        fmt = torch.contiguous_format
        weight = weight.contiguous()
    else:
        fmt = weight_format(conv)
    z = F.conv_transpose2d(
        h.contiguous(memory_format=fmt),
        weight,
        None,
        conv.stride,
        conv.padding,
        conv.output_padding,
        conv.groups,
        conv.dilation,
    )
    return z.contiguous() if nchw else z


def conv_without_bias(conv: nn.Conv2d | nn.ConvTranspose2d, h: Tensor, out: Tensor | None = None) -> Tensor:
    """conv(h) without its bias. Every conv but the head feeds an instance norm, which removes a per-channel
    constant exactly: IN(z + b) = IN(z), affine or not. So the add is wasted work (on cuDNN's channels-last
    path a kernel of its own per conv); the parameter and its key stay, and the norm after the conv gives it
    its exact gradient, zero (`fast.norm_site`). out: None, or where `writes_into(conv, h)`, a buffer of the
    output's shape, dtype and layout to write it into (`onednn.conv2d`)."""
    if isinstance(conv, nn.ConvTranspose2d):
        return _transposed(conv, h)
    if _packed(h, conv):
        return onednn.conv2d(conv, h, None, out=out)
    return conv._conv_forward(h, conv.weight, None)


def writes_into(conv: nn.Module, h: Tensor) -> bool:
    """Whether `conv_without_bias(conv, h, out=...)` can write into a buffer: a conv on pre-packed weights (the
    transposed conv's oneDNN op has no in-place variant)."""
    return isinstance(conv, nn.Conv2d) and _packed(h, conv) and onednn.writes_into_buffers()


def output_shape(conv: nn.Conv2d | nn.ConvTranspose2d, h: Tensor) -> tuple[int, int, int, int]:
    """The shape of conv(h), from the conv's geometry (PyTorch's formulas for both kinds)."""
    geometry = zip(h.shape[2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    if isinstance(conv, nn.ConvTranspose2d):
        size = [(n - 1) * s - 2 * p + d * (k - 1) + o + 1 for (n, k, s, p, d), o in zip(geometry, conv.output_padding)]
    else:
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in geometry]
    return (h.shape[0], conv.out_channels, *size)


def conv_with_bias(conv: nn.Conv2d, h: Tensor) -> Tensor:
    """conv(h) as the module computes it (the head, whose bias no norm removes), on pre-packed weights where
    that runs; a conv with few output channels (the generator's 3-channel head) as 2x2 output blocks there
    and in half-precision inference on a CPU (`onednn.conv2d_blocked_2x2`, 2.5-2.8x faster)."""
    if _packed(h, conv):
        if onednn.blocked_2x2_fits(conv, h):
            return onednn.conv2d_blocked_2x2(conv, h, conv.bias)
        return onednn.conv2d(conv, h, conv.bias)
    if _blocked_half(h, conv):
        return onednn.conv2d_blocked_2x2(conv, h, conv.bias)
    return conv(h)


def _blocked_half(h: Tensor, conv: nn.Conv2d) -> bool:
    """Whether conv(h) runs as 2x2 output blocks on plain (unpacked) weights: half precision channels-last on
    a CPU, inference (autograd would need the blocked weight made at every call), a conv that fits."""
    if h.device.type != "cpu" or h.dtype not in (torch.bfloat16, torch.float16) or torch.compiler.is_compiling():
        return False
    if records_grad(h, conv.weight):
        return False
    cl = h.is_contiguous(memory_format=torch.channels_last) and conv.padding_mode == "zeros"
    return cl and h.dtype == conv.weight.dtype and onednn.blocked_2x2_fits(conv, h)


def runs_aten_layers(z: Tensor, residual: Tensor | None, *parameters: Tensor | None) -> bool:
    """Whether the norm site on conv output z (with this residual, affine weight and bias, conv bias) runs as
    eager PyTorch's own differentiable layers (`aten_norm_site`) instead of the fused op: eager autograd on
    fp32 NCHW-contiguous planes of more than one value that no kernel runs (a CPU). There the op's PyTorch
    implementation makes the same ATen batch-norm, activation and pad calls as InstanceNorm2d -> ReLU ->
    ReflectionPad2d, and its backward takes more passes than ATen's (the activation's mask recomputed, the
    pad's gradient folded in Python): a CycleGAN iteration ran 1.04-1.12x eager's time (bench/results/TUNING.md)."""
    tensors = (z, residual, *parameters)
    fp32 = all(t is None or t.dtype == torch.float32 for t in tensors)
    planes = z.shape[2] * z.shape[3] > 1  # ATen's instance norm refuses 1x1 planes in training; the op takes them
    if not (fp32 and planes and z.is_contiguous() and not use_triton(z)):
        return False
    return plain(*tensors) and records_grad(*tensors)


def aten_norm_site(
    z: Tensor, residual, weight, bias, conv_bias, *, relu: bool, negative_slope: float, eps: float, pad: int
) -> tuple[Tensor, Tensor]:
    """(the site's output padded by `pad`, the same unpadded) by the ATen layers eager PyTorch runs, differentiated
    by ATen's own backwards: instance norm (one (1, N*C, H, W) batch norm, as the op's CPU forward), the
    activation in place (the batch norm's backward does not read its output), the residual add, the reflection
    pad. Outputs equal the fused op's; gradients equal its formula's to fp32 rounding. The conv bias joins the
    norm's shift multiplied by zero: it adds exactly nothing and gets its exact gradient, zero (DDP needs one).
    The unpadded tensor is handed back for the next residual: a slice of the padded one would take a zero
    fill and a copy of the whole padded tensor in its gradient, twice."""
    if conv_bias is not None:
        zero = conv_bias * 0.0
        bias = zero if bias is None else bias + zero
    y = F.instance_norm(z, weight=weight, bias=bias, eps=eps)
    if relu and negative_slope:
        y = F.leaky_relu(y, negative_slope, inplace=True)
    elif relu:
        y = F.relu(y, inplace=True)
    if residual is not None:
        y = y + residual
    return (F.pad(y, (pad,) * 4, mode="reflect") if pad else y), y
