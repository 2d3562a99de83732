"""FastGenerator: the reference `Generator`, run channels-last through the fused instance-norm ops.

It subclasses `Generator`, so parameter names, `state_dict` keys and constructor arguments are identical:
`FastGenerator(...).load_state_dict(Generator(...).state_dict())` and public checkpoints load unchanged.
Only `forward` differs: every IN site goes through `fastcyclegan.ops.instance_norm` fused with the ReLU or
the residual add that follows it and with the reflection padding of the conv after it, and the convolutions
(cuDNN/ATen) see channels-last activations and weights, so no layout copies happen between them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checkpoint import build_generator, clean_state_dict
from .ops import instance_norm
from .reference import Generator

_FORBIDDEN_LAYERS = {
    nn.Dropout: "it has dropout layers (use_dropout=True); FastGenerator has none",
    nn.BatchNorm2d: "it uses batch norm; FastGenerator fuses instance norm only",
    nn.ReplicationPad2d: "it pads by replication; FastGenerator pads by reflection",
    nn.ZeroPad2d: "it pads with zeros; FastGenerator pads by reflection",
}


def _reflect(x: Tensor, pad: int) -> Tensor:
    return nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")


def _interior(padded: Tensor, pad: int) -> Tensor:
    """The unpadded view of a reflection-padded activation (no copy)."""
    return padded[:, :, pad:-pad, pad:-pad]


def min_input_size(num_blocks: int) -> int:
    """Smallest H and W the reflection pads accept: 4 (7x7 stem), 5 with residual blocks (their 1-pixel pad
    needs >= 2 positions after two stride-2 convs: ceil(ceil(H / 2) / 2) >= 2)."""
    return 5 if num_blocks > 0 else 4


class FastGenerator(Generator):
    """Drop-in for `Generator`: same arguments, keys, outputs (shape, dtype, NCHW memory format)."""

    def __init__(self, num_blocks: int = 9, in_channels: int = 3, out_channels: int = 3, ngf: int = 64):
        super().__init__(num_blocks, in_channels, out_channels, ngf)
        self.to(memory_format=torch.channels_last)  # cuDNN picks NHWC kernels when weights are NHWC too

    @classmethod
    def from_module(cls, module: nn.Module) -> FastGenerator:
        """A FastGenerator with the weights, device and dtype of any public-layout ResNet generator.

        Accepts our `Generator` and the public repository's `ResnetGenerator` (instance norm, reflection
        padding, no dropout), also inside `nn.DataParallel`; keeps its train/eval mode; raises ValueError
        saying why for anything else.
        """
        if not isinstance(module, nn.Module):
            raise ValueError(f"from_module expects an nn.Module, got {type(module).__name__}")
        for layer in module.modules():
            for kind, why in _FORBIDDEN_LAYERS.items():
                if isinstance(layer, kind):
                    raise ValueError(f"cannot convert {type(module).__name__}: {why}")
            if isinstance(layer, nn.InstanceNorm2d) and (layer.affine or layer.track_running_stats):
                raise ValueError(
                    f"cannot convert {type(module).__name__}: its InstanceNorm2d has affine={layer.affine}, "
                    f"track_running_stats={layer.track_running_stats}; FastGenerator needs both False"
                )
        state = clean_state_dict(module.state_dict())  # a DataParallel wrapper's `module.` prefix goes
        fast = build_generator(cls, state, f"module {type(module).__name__}")
        first = next(iter(state.values()))
        return fast.to(device=first.device, dtype=first.dtype).train(module.training)

    def compile(self, *, mode: str | None = None, dynamic: bool | None = None, **options) -> FastGenerator:
        """Compile in place with `fullgraph=True` (the fused ops stay single nodes) and return self.

        mode="reduce-overhead" adds CUDA graphs, which pays at small batches on a GPU.
        """
        super().compile(fullgraph=True, mode=mode, dynamic=dynamic, **options)
        return self

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"FastGenerator expects input of shape (N, {self.in_channels}, H, W), got {got}")
        smallest = min_input_size(self.num_blocks)
        if x.shape[2] < smallest or x.shape[3] < smallest:
            raise ValueError(
                f"FastGenerator needs H and W of at least {smallest} for its reflection padding, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        m, at = self.model, self.layout
        # Only the 3-channel input is padded by F.pad; every other reflection pad is written by the norm
        # before it (pad=...), so no activation takes a separate padding pass (or, on CUDA, ATen's
        # NCHW-only reflection pad and the layout copies around it).
        h = _reflect(x, 3).contiguous(memory_format=torch.channels_last)
        h = instance_norm(m[at.stem](h), relu=True)
        h = instance_norm(m[at.down[0]](h), relu=True)
        h = instance_norm(m[at.down[1]](h), relu=True, pad=1 if at.num_blocks else 0)
        first, second = at.block_convs
        for b in at.blocks:  # h: the block input, reflection-padded by 1
            block = m[b].conv_block
            t = instance_norm(block[first](h), relu=True, pad=1)
            h = instance_norm(block[second](t), residual=_interior(h, 1), pad=1)
        if at.num_blocks:
            h = _interior(h, 1)
        h = instance_norm(m[at.up[0]](h), relu=True)
        h = instance_norm(m[at.up[1]](h), relu=True, pad=3)
        out = torch.tanh(m[at.head](h))
        return out.contiguous()  # the reference returns NCHW whatever the input layout (its norms do)
