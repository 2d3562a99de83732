"""`load_generator`: a checkpoint file or state dict -> `Generator` or `FastGenerator`.

It sits above both the checkpoint reader and the fast path, so neither imports the other: `checkpoint.py`
reads files, `structure.py` knows the layout, `fast.py` knows the fused forward; this module picks the class.
"""

from __future__ import annotations

from torch import nn

from .checkpoint import describe_checkpoint
from .fast import FastGenerator
from .fast_discriminator import FastDiscriminator
from .reference import Discriminator, Generator


def load_generator(source, *, map_location="cpu", fast: bool = False, key: str | None = None) -> nn.Module:
    """A `Generator` (or `FastGenerator` with fast=True) holding the weights of `source`.

    `source` is a checkpoint file (PyTorch or safetensors) or a state dict of any ResNet generator: the
    public layout (`latest_net_G.pth`) or one trained elsewhere (affine instance norms, `block.` or other
    names, `module.` / `_orig_mod.` prefixes, nested under one key such as `netG_A`; `key="a/b"` picks one
    when there are several). num_blocks, channels, ngf and affine are read off the weights. A state dict
    cannot show the padding: it is taken to be reflection, the public default. Raises ValueError naming the
    file and the reason for anything else. `model.checkpoint_key` records the key the weights came from.
    """
    spec, taken = describe_checkpoint(source, map_location=map_location, key=key)
    model = spec.build(FastGenerator if fast else Generator)
    model.checkpoint_key = taken
    return model


def load_discriminator(source, *, map_location="cpu", fast: bool = False, key: str | None = None) -> nn.Module:
    """A `Discriminator` (or `FastDiscriminator` with fast=True) holding the weights of `source`: a checkpoint
    file (`latest_net_D_A.pth`, PyTorch or safetensors, read without running pickled code) or a state dict
    of the public 3-layer PatchGAN, plain or affine norms, `module.` / `_orig_mod.` prefixes, nested under
    one key (`key="netD_A"` picks one of several). Raises ValueError naming the file and the reason."""
    spec, taken = describe_checkpoint(source, map_location=map_location, key=key, network="discriminator")
    model = spec.build(FastDiscriminator if fast else Discriminator)
    model.checkpoint_key = taken
    return model
