"""FastDiscriminator: the 70x70 PatchGAN `Discriminator`, its norms fused with their LeakyReLU(0.2).

It subclasses `Discriminator`: same constructor, parameter names, state_dict keys and outputs. The convs
before the three instance norms run without their bias (the norm removes a per-channel constant exactly),
and the fused op (`fastcyclegan.ops.instance_norm`, negative_slope=0.2) gives those biases their exact
gradient, zero, so every parameter gets one (DistributedDataParallel needs that). Activations and conv
weights follow the same device policy as FastGenerator's (`convs.py`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from . import convs, workspace
from .fast import convert, norm_after
from .patchgan import SLOPE, describe_discriminator_module
from .reference import Discriminator


class FastDiscriminator(Discriminator):
    """Drop-in for `Discriminator` (the public NLayerDiscriminator, 3 layers, instance norm)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, affine: bool = False):
        super().__init__(in_channels, ndf, affine)
        convs.place_weights(self)

    def _apply(self, fn, recurse=True):
        """Every move or cast also puts the conv weights in their device's and dtype's memory format."""
        super()._apply(fn, recurse)
        convs.place_weights(self)
        workspace.forget(self)  # buffers of the old device or dtype
        return self

    @classmethod
    def from_module(cls, module: nn.Module) -> FastDiscriminator:
        """A FastDiscriminator with the weights, device, dtype and train/eval mode of any 3-layer PatchGAN
        whose layers, in registration order, are the paper's (any names, nesting and wrappers; affine norms
        or not); ValueError naming the layer that shows why for anything else (batch norm, spectral norm,
        another depth or slope, ...)."""
        return convert(cls, module, describe_discriminator_module)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"FastDiscriminator expects a float image of shape (N, {self.in_channels}, H, W), got {got}"
            )
        m = self.model
        first, *normed, head = self.CONVS
        h = x.contiguous(memory_format=convs.activation_format(x, m[first]))
        h = F.leaky_relu(convs.conv_with_bias(m[first], h), SLOPE, inplace=True)  # the conv keeps no output
        for conv in normed:  # conv (bias-free), instance norm and LeakyReLU(0.2) fused
            h = norm_after(m, conv, convs.conv_without_bias(m[conv], h), relu=True, negative_slope=SLOPE)
        return convs.conv_with_bias(m[head], h).contiguous()  # NCHW, as the reference returns it
