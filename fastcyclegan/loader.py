"""`load_generator` / `load_discriminator`: a checkpoint file or state dict -> the reference or fast module.

It sits above the checkpoint reader, the recognition and the fast path, so none imports another:
`checkpoint.py` reads files, `structure.py` and `patchgan.py` know the layouts, `fast.py` knows the fused
forward; this module checks what a file holds and picks the class.
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import describe_source, read_state_dict
from .fast import FastGenerator
from .fast_discriminator import FastDiscriminator
from .patchgan import DiscriminatorSpec, describe_discriminator_state
from .recognition import NotConvertible
from .reference import Discriminator, Generator
from .structure import GeneratorSpec, describe_state


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


def describe_checkpoint(
    source, *, map_location="cpu", key: str | None = None, network: str = "generator"
) -> tuple[GeneratorSpec | DiscriminatorSpec, str | None]:
    """The network a checkpoint holds (network: "generator", a ResNet generator, or "discriminator", a 3-layer
    PatchGAN) and the key it was nested under; ValueError naming the file and the reason (the layer or key
    that shows it) for anything the fast modules cannot run."""
    state, taken = read_state_dict(source, map_location=map_location, key=key)
    where = describe_source(source) + (f" (under '{taken}')" if taken else "")
    describe, what = _NETWORKS[network]
    try:
        spec = describe(state)
    except NotConvertible as err:  # NotAGenerator, NotAPatchGAN
        raise ValueError(f"checkpoint {where} is not {what}: it {err}") from err
    for name, tensor in spec.state.items():  # a diverged training run: every output would be NaN or black
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(
                f"checkpoint {where} holds non-finite weights: '{name}' has {bad} NaN or infinite values of "
                f"{tensor.numel()} (a diverged training run?); expected finite numbers"
            )
    return spec, taken


_NETWORKS = {
    "generator": (describe_state, "a ResNet generator FastGenerator can run"),
    "discriminator": (describe_discriminator_state, "a 3-layer PatchGAN discriminator FastDiscriminator can run"),
}
