"""The reference networks: the tutorial's shape checks, the public key layout, and its three bugs absent."""

import pytest
import torch
from torch import nn

from fastcyclegan import Discriminator, Generator, ResidualBlock


def _public_generator_keys(num_blocks: int) -> list[str]:
    """The key list of the public ResnetGenerator with instance norm, written out index by index."""
    convs = [1, 4, 7]
    convs += [f"{10 + b}.conv_block.{i}" for b in range(num_blocks) for i in (1, 5)]
    convs += [10 + num_blocks, 13 + num_blocks, 17 + num_blocks]
    return [f"model.{c}.{p}" for c in convs for p in ("weight", "bias")]


@pytest.mark.parametrize("num_blocks, size", [(9, 256), (6, 128)])
def test_generator_keeps_the_image_shape(num_blocks, size):
    with torch.no_grad():
        out = Generator(num_blocks)(torch.rand(1, 3, size, size))
    assert out.shape == (1, 3, size, size)
    assert out.abs().max() <= 1.0  # Tanh


def test_discriminator_gives_30x30_patch_logits():
    with torch.no_grad():
        assert Discriminator()(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_parameter_count_of_the_paper_generator():
    assert sum(p.numel() for p in Generator(9).parameters()) == 11_378_179


@pytest.mark.parametrize("num_blocks", [9, 6, 0])
def test_state_dict_keys_are_the_public_checkpoint_keys(num_blocks):
    assert list(Generator(num_blocks).state_dict()) == _public_generator_keys(num_blocks)


def test_discriminator_keys_follow_the_public_layout():
    keys = list(Discriminator().state_dict())
    assert keys == [f"model.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias")]


def test_every_residual_block_has_its_own_weights():
    """The tutorial's `[ResidualBlock()] * n` puts one module (one set of weights) n times."""
    g = Generator(9)
    blocks = [m for m in g.model if isinstance(m, ResidualBlock)]
    assert len(blocks) == 9 and len({id(b) for b in blocks}) == 9
    weights = [b.conv_block[1].weight for b in blocks]
    assert len({w.data_ptr() for w in weights}) == 9
    assert all(not torch.equal(weights[0], w) for w in weights[1:])


def test_stem_ends_with_relu():
    """The tutorial's c7s1-64 stops after its norm; the paper's has a ReLU."""
    stem = list(Generator().model)[:4]
    assert [type(m) for m in stem] == [nn.ReflectionPad2d, nn.Conv2d, nn.InstanceNorm2d, nn.ReLU]


@pytest.mark.parametrize("ngf", [64, 32])
def test_every_norm_is_built_for_its_own_channels(ngf):
    """The tutorial builds every norm as InstanceNorm2d(256); each must match the conv before it."""
    g = Generator(2, ngf=ngf)
    layers = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d))]
    pairs = [(a, b) for a, b in zip(layers, layers[1:]) if isinstance(b, nn.InstanceNorm2d)]
    assert len(pairs) == 3 + 2 * 2 + 2
    for conv, norm in pairs:
        assert norm.num_features == conv.out_channels
        assert not norm.affine and not norm.track_running_stats


def test_residual_block_adds_its_input():
    block = ResidualBlock(8)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + block.conv_block(x))


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="num_blocks >= 0"):
        Generator(num_blocks=-1)
