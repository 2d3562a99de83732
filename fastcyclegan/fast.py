"""FastGenerator: the reference `Generator`, run channels-last through the fused instance-norm ops.

It subclasses `Generator`, so parameter names, `state_dict` keys and constructor arguments are identical:
`FastGenerator(...).load_state_dict(Generator(...).state_dict())` and public checkpoints load unchanged.
Only `forward` differs: every IN site goes through `fastcyclegan.ops.instance_norm` fused with the ReLU or
the residual add that follows it and with the reflection padding of the conv after it, and the convolutions
(cuDNN/ATen) see channels-last activations and weights, so no layout copies happen between them. CPU inference
on pre-packed weights replays the kernel calls recorded at the first call for an input shape (`cpu_plan`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import convs, cpu_plan, workspace
from .layout import interior
from .ops import instance_norm
from .recognition import NotConvertible
from .reference import Generator, GeneratorLayout
from .structure import describe_module


def _reflect(x: Tensor, pad: int) -> Tensor:
    return F.pad(x, (pad, pad, pad, pad), mode="reflect")


def norm_site(
    layers: nn.Sequential,
    conv: int,
    z: Tensor,
    *,
    residual: Tensor | None = None,
    relu: bool = False,
    negative_slope: float = 0.0,
    pad: int = 0,
    buffer: tuple | None = None,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(output padded by `pad`, the same unpadded) of the instance norm after layers[conv] (its affine weight and
    bias and its eps) on that conv's output z, computed without the conv's bias (the norm removes it), with
    the activation, residual add and padding given. The bias goes to the op all the same, which gives it its
    exact gradient, zero: every parameter gets a gradient, as in the reference (DDP needs that). CPU fp32
    training runs eager PyTorch's own layers instead (`convs.runs_aten_layers`). `buffer`: (owner module, role)
    of the output buffer a large CPU inference writes into (`workspace`; default: this site's own); `out`: that
    buffer itself (a group of images' part of it)."""
    norm = layers[GeneratorLayout.norm_after(conv)]
    weight, bias, conv_bias = norm.weight, norm.bias, layers[conv].bias
    fused = dict(relu=relu, negative_slope=negative_slope, eps=norm.eps, pad=pad)
    if convs.runs_aten_layers(z, residual, weight, bias, conv_bias):
        return convs.aten_norm_site(z, residual, weight, bias, conv_bias, **fused)
    if out is None:
        owner, role = buffer or (layers, conv)
        out = workspace.kept_output(owner, role, z, pad, residual, weight, bias, conv_bias)  # large CPU inference
    out = instance_norm(z, residual, weight=weight, bias=bias, conv_bias=conv_bias, out=out, **fused)
    return out, interior(out, pad)


def norm_after(layers: nn.Sequential, conv: int, z: Tensor, **fused) -> Tensor:
    """The output of `norm_site`, padded as asked."""
    return norm_site(layers, conv, z, **fused)[0]


def convert(cls: type[nn.Module], module: nn.Module, describe) -> nn.Module:
    """`cls` built from what `describe(module)` reads off it, on the module's device, in its dtype and train/eval
    mode; ValueError naming the reason (the layer that shows it) when `describe` raises NotConvertible."""
    try:
        spec = describe(module)
    except NotConvertible as err:  # NotAGenerator, NotAPatchGAN
        raise ValueError(f"cannot convert {type(module).__name__} to {cls.__name__}: it {err}") from err
    first = next(iter(spec.state.values()))
    return spec.build(cls).to(device=first.device, dtype=first.dtype).train(module.training)


def _conv_norm(owner: nn.Module, layers: nn.Sequential, conv: int, h: Tensor, **fused) -> tuple[Tensor, Tensor]:
    """layers[conv](h), bias-free, through the fused norm after it: (padded, unpadded) as `norm_site`. A conv
    output too large for the allocator to keep (`workspace.LARGE_BYTES`, CPU inference) is written into a
    scratch buffer `owner` keeps, or, where the conv cannot write into one (a transposed conv), made a group of
    images at a time, each group's norm writing its part of the site's output buffer."""
    layer = layers[conv]
    shape = convs.output_shape(layer, h)
    norm = layers[GeneratorLayout.norm_after(conv)]
    residual, pad = fused.pop("residual", None), fused.get("pad", 0)
    others = (residual, layer.weight, layer.bias, norm.weight, norm.bias)
    # the size first (the rest is Python on every site otherwise), never while tracing (no guard on the size)
    large = not torch.compiler.is_compiling() and workspace.is_large(shape, h)
    scratch = workspace.scratch(owner, shape, h, *others) if large and convs.writes_into(layer, h) else None
    step = workspace.images_per_group(shape, h, *others) if large and scratch is None else shape[0]
    if step >= shape[0]:
        z = convs.conv_without_bias(layer, h, out=scratch)
        return norm_site(layers, conv, z, residual=residual, **fused)
    out = None
    for start in range(0, shape[0], step):
        z = convs.conv_without_bias(layer, h[start : start + step])
        if out is None:  # the site's buffer for the whole batch: kept, as `images_per_group` found buffers in play
            site_owner, role = fused.get("buffer") or (layers, conv)
            out = workspace.kept_output(site_owner, role, z, pad, *others, images=shape[0])
        part = None if residual is None else residual[start : start + step]
        norm_site(layers, conv, z, residual=part, out=out[start : start + step], **fused)
        # freed before the next group's output is made, so glibc hands the same block back: with two alive the
        # heap grew past its trim threshold and was faulted in again at every forward (bench/results/TUNING.md)
        del z
    return out, interior(out, pad)


def min_input_size(num_blocks: int) -> int:
    """Smallest H and W the reflection pads accept: 4 (7x7 stem), 5 with residual blocks (their 1-pixel pad
    needs >= 2 positions after two stride-2 convs: ceil(ceil(H / 2) / 2) >= 2)."""
    return 5 if num_blocks > 0 else 4


class FastGenerator(Generator):
    """Drop-in for `Generator`: same arguments, keys, outputs (shape, dtype, NCHW memory format)."""

    def __init__(
        self, num_blocks: int = 9, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, affine: bool = False
    ):
        super().__init__(num_blocks, in_channels, out_channels, ngf, affine)
        self._apply(lambda t: t)  # conv weights in the memory format of their device and dtype

    def _apply(self, fn, recurse=True):
        """Every move or cast (.to, .cuda, .bfloat16, ...) also puts the conv weights in the memory format
        that runs fastest for their device and dtype (`convs.weight_format`): the convs follow the weights."""
        super()._apply(fn, recurse)
        convs.place_weights(self)
        workspace.forget(self)  # buffers of the old device or dtype
        return self

    @classmethod
    def from_module(cls, module: nn.Module) -> FastGenerator:
        """A FastGenerator with the weights, device, dtype and train/eval mode of any ResNet generator.

        Any module whose layers, in execution order, are the paper's generator's (reflection pad, 7x7 conv,
        IN, ReLU; stride-2 convs with IN + ReLU; residual blocks; transposed convs with IN + ReLU; pad, 7x7
        conv, Tanh), whatever its attribute names, nesting and wrappers (nn.Sequential, DataParallel,
        DistributedDataParallel, torch.compile); blocks, channels, ngf and affine norms are inferred.
        Raises ValueError naming the layer that shows why for anything else (batch norm, dropout, zero or
        replicate padding, an upsample decoder, running statistics, ...).
        """
        return convert(cls, module, describe_module)

    def compile(self, *, mode: str | None = None, dynamic: bool | None = None, **options) -> FastGenerator:
        """Compile in place with `fullgraph=True` (the fused ops stay single nodes) and return self.

        mode="reduce-overhead" adds CUDA graphs, which pays at small batches on a GPU. Calls that would run on
        a CPU's pre-packed oneDNN weights (inference in fp32 or natively run bf16, `convs.runs_packed`) take the
        uncompiled path: inductor packs weights only when freezing and fuses nothing into the fused op, so
        compiled they ran 1.1x the eager path's time in fp32, 1.07-1.08x in bf16 (bench/results/TUNING.md).
        Autograd, fp16 and GPUs run compiled.
        """
        super().compile(fullgraph=True, mode=mode, dynamic=dynamic, **options)
        compiled = self._compiled_call_impl

        def call(*args, **kwargs):
            x = args[0] if args else kwargs.get("x")
            if isinstance(x, Tensor) and x.dim() == 4 and self._runs_packed(x):
                return self._call_impl(*args, **kwargs)
            return compiled(*args, **kwargs)

        self._compiled_call_impl = call
        return self

    def _runs_packed(self, x: Tensor) -> bool:
        """Whether forward(x) runs channels-last on pre-packed oneDNN weights (CPU inference, fp32 or bf16)."""
        return convs.runs_packed(x, self.model[self.layout.stem])

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"FastGenerator expects input of shape (N, {self.in_channels}, H, W), got {got}")
        if not x.is_floating_point():
            raise ValueError(
                f"FastGenerator expects a floating-point image in [-1, 1] (float32, bfloat16, float16 or float64), "
                f"got {x.dtype}: for uint8 pixels use x.float() / 127.5 - 1"
            )
        smallest = min_input_size(self.num_blocks)
        if x.shape[2] < smallest or x.shape[3] < smallest:
            raise ValueError(
                f"FastGenerator needs H and W of at least {smallest} for its reflection padding, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )

    def _stem_input(self, x: Tensor) -> Tensor:
        """reflect(x, 3) in the activations' layout, which they take here (`convs.activation_format`)."""
        return _reflect(x, 3).contiguous(memory_format=convs.activation_format(x, self.model[self.layout.stem]))

    def _stem(self, h0: Tensor, site) -> Tensor:
        """relu(IN(stem(h0))) for the stem's input h0 (`_stem_input`)."""
        return site(self.model, self.layout.stem, h0, relu=True)[0]

    def _head(self, head: nn.Conv2d, h: Tensor) -> Tensor:
        """head(h), with its bias."""
        return convs.conv_with_bias(head, h)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        # CPU inference replays the kernel calls recorded at the first call for this input (`cpu_plan`)
        h = cpu_plan.head_input(self, x, self._body)
        if h is None:
            h = self._body(self._stem_input(x), functools.partial(_conv_norm, self))
        out = torch.tanh(self._head(self.model[self.layout.head], h))
        return out.contiguous()  # the reference returns NCHW whatever the input layout (its norms do)

    def _body(self, h0: Tensor, site) -> Tensor:
        """The network from the stem's input h0 to the head's input, each conv and the norm after it run by
        `site(layers, conv, h, **fused) -> (padded, unpadded)` (`_conv_norm`'s contract)."""
        m, at = self.model, self.layout
        # Only the 3-channel input is padded by F.pad; every other reflection pad is written by the norm
        # before it (pad=...), so no activation takes a separate padding pass (or, on CUDA, ATen's
        # NCHW-only reflection pad and the layout copies around it).
        h = self._stem(h0, site)
        h, _ = site(m, at.down[0], h, relu=True)
        # the residual stream alternates between two kept buffers (a block reads one, writes the other), the
        # blocks' inner norms share a third: three buffers for any number of blocks (`workspace`)
        h, inner = site(m, at.down[1], h, relu=True, pad=1 if at.num_blocks else 0, buffer=(self, "h0"))
        first, second = at.block_convs
        for k, b in enumerate(at.blocks):  # h: the block input reflection-padded by 1, inner the same unpadded
            block = m[b].conv_block
            t, _ = site(block, first, h, relu=True, pad=1, buffer=(self, "t"))
            h, inner = site(block, second, t, residual=inner, pad=1, buffer=(self, f"h{(k + 1) % 2}"))
        h, _ = site(m, at.up[0], inner, relu=True)
        h, _ = site(m, at.up[1], h, relu=True, pad=3)
        return h
