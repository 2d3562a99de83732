"""The CycleGAN paper's networks, laid out like the public checkpoints.

Generator (Zhu et al. 2017, appendix 7.2): c7s1-64, d128, d256, R256 x num_blocks, u128, u64, c7s1-3.
The `nn.Sequential` indices reproduce the public repository's `ResnetGenerator`, so a
`latest_net_G.pth` loads with `load_state_dict` (keys `model.1.weight`, `model.10.conv_block.1.weight`, ...).

Three bugs of the tutorial this project grew from are deliberately absent (tests/test_reference.py proves it):
every residual block is its own module (not `[ResidualBlock()] * n`), c7s1-64 ends with a ReLU, and each
norm is built for its own channel count (not `InstanceNorm2d(256)` everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class GeneratorLayout:
    """Which `model.<index>` of the public ResNet generator holds which layer: the one map of the layout.

    `Generator` builds its `nn.Sequential` in this order (and checks it), the checkpoint loader counts blocks
    and reads channel counts through it, and `FastGenerator.forward` walks it. With n = num_blocks:

        0 pad(3)   1 conv7x7 (stem)   2 IN   3 ReLU
        4 conv3x3/2   5 IN   6 ReLU   7 conv3x3/2   8 IN   9 ReLU
        10 .. 10+n-1  residual blocks: conv_block.{0 pad, 1 conv, 2 IN, 3 ReLU, 4 pad, 5 conv, 6 IN}
        10+n convT   11+n IN   12+n ReLU   13+n convT   14+n IN   15+n ReLU
        16+n pad(3)   17+n conv7x7 (head)   18+n Tanh
    """

    num_blocks: int
    stem: int = 1
    down: tuple[int, int] = (4, 7)
    first_block: int = 10
    block_convs: tuple[int, int] = (1, 5)  # indices inside a ResidualBlock's conv_block

    @staticmethod
    def norm_after(conv: int) -> int:
        """Index of the instance norm that follows the conv at `conv` (in the Sequential or in a block)."""
        return conv + 1

    @property
    def blocks(self) -> range:
        return range(self.first_block, self.first_block + self.num_blocks)

    @property
    def up(self) -> tuple[int, int]:
        """The two fractionally strided convs."""
        first = self.first_block + self.num_blocks
        return first, first + 3

    @property
    def head(self) -> int:
        """The last 7x7 conv (before the Tanh)."""
        return self.first_block + self.num_blocks + 7

    @property
    def length(self) -> int:
        """Number of layers in the Sequential."""
        return self.head + 2

    def conv_keys(self) -> list[str]:
        """State-dict prefixes of every conv in execution order: stem, downs, block convs, ups, head."""
        keys = [f"model.{i}" for i in (self.stem, *self.down)]
        keys += [f"model.{b}.conv_block.{i}" for b in self.blocks for i in self.block_convs]
        return keys + [f"model.{i}" for i in (*self.up, self.head)]


def instance_norm(channels: int, affine: bool = False) -> nn.InstanceNorm2d:
    """The paper's norm: per-image, per-channel statistics, no running stats, and no affine parameters
    unless asked (many generators trained elsewhere learn a per-channel scale and shift)."""
    return nn.InstanceNorm2d(channels, affine=affine, track_running_stats=False)


class ResidualBlock(nn.Module):
    """R_k: pad, conv3x3, IN, ReLU, pad, conv3x3, IN; returns x + block(x). Keys conv_block.1.* and conv_block.5.*
    (and conv_block.2.*, conv_block.6.* for affine norms)."""

    def __init__(self, channels: int = 256, affine: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            instance_norm(channels, affine),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            instance_norm(channels, affine),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


def _down(in_channels: int, out_channels: int, affine: bool) -> list[nn.Module]:
    """d_k: 3x3 stride-2 conv, IN, ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    return [conv, instance_norm(out_channels, affine), nn.ReLU(True)]


def _up(in_channels: int, out_channels: int, affine: bool) -> list[nn.Module]:
    """u_k: 3x3 fractionally strided conv (exactly doubles H and W), IN, ReLU."""
    conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
    return [conv, instance_norm(out_channels, affine), nn.ReLU(True)]


class Generator(nn.Module):
    """The ResNet generator: 6 blocks for 128x128 images, 9 for 256x256.

    Input and output are (N, in_channels, H, W) and (N, out_channels, H', W') with H' = 4 * ceil(ceil(H / 2) / 2),
    so H' == H when H is a multiple of 4. Values of the output lie in [-1, 1] (Tanh).
    """

    def __init__(
        self, num_blocks: int = 9, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, affine: bool = False
    ):
        super().__init__()
        if num_blocks < 0 or in_channels < 1 or out_channels < 1 or ngf < 1:
            raise ValueError(
                "Generator expects num_blocks >= 0 and positive channel counts, got "
                f"num_blocks={num_blocks}, in_channels={in_channels}, out_channels={out_channels}, ngf={ngf}"
            )
        self.num_blocks = num_blocks
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ngf = ngf
        self.affine = affine
        layers: list[nn.Module] = [  # c7s1-64 (indices 0-3)
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7),
            instance_norm(ngf, affine),
            nn.ReLU(True),
        ]
        layers += _down(ngf, ngf * 2, affine) + _down(ngf * 2, ngf * 4, affine)  # d128, d256 (4-9)
        layers += [ResidualBlock(ngf * 4, affine) for _ in range(num_blocks)]  # R256 x n, each its own weights
        layers += _up(ngf * 4, ngf * 2, affine) + _up(ngf * 2, ngf, affine)  # u128, u64
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]  # c7s1-3
        self.model = nn.Sequential(*layers)
        self.layout = GeneratorLayout(num_blocks)
        assert len(self.model) == self.layout.length and isinstance(self.model[self.layout.head], nn.Conv2d)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Discriminator(nn.Module):
    """The 70x70 PatchGAN: C64 (no norm), C128, C256, C512 (stride 1), then a 1-channel 4x4 conv; LeakyReLU(0.2)
    after every conv but the last, instance norm after the 2nd to 4th (affine when trained so elsewhere).

    Keys follow the public NLayerDiscriminator (model.0, model.2, model.5, model.8, model.11; the norms, when
    affine, model.3, model.6, model.9). A 256x256 input gives a 30x30 map of patch logits.
    """

    CONVS = (0, 2, 5, 8, 11)  # Sequential indices of the convs; a norm follows those at 2, 5 and 8

    def __init__(self, in_channels: int = 3, ndf: int = 64, affine: bool = False):
        super().__init__()
        if in_channels < 1 or ndf < 1:
            raise ValueError(f"Discriminator expects positive channel counts, got in_channels={in_channels}, ndf={ndf}")
        self.in_channels, self.ndf, self.affine = in_channels, ndf, affine
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for stride in (2, 2, 1):
            layers += [
                nn.Conv2d(channels, channels * 2, 4, stride=stride, padding=1),
                instance_norm(channels * 2, affine),
                nn.LeakyReLU(0.2, True),
            ]
            channels *= 2
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
