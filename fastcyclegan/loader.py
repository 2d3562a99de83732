"""`load_generator`: a checkpoint file or state dict -> `Generator` or `FastGenerator`.

It sits above both the checkpoint reader and the fast path, so neither imports the other: the reader
(`checkpoint.py`) knows the layout, `fast.py` knows the fused forward, and this module only picks the class.
"""

from __future__ import annotations

from torch import nn

from .checkpoint import build_generator, clean_state_dict, describe_source, read_state_dict
from .fast import FastGenerator
from .reference import Generator


def load_generator(source, *, map_location="cpu", fast: bool = False) -> nn.Module:
    """A `Generator` (or `FastGenerator` with fast=True) holding the weights of `source`.

    `source` is a path to a public-layout checkpoint (`latest_net_G.pth`) or a state dict; the architecture
    (num_blocks, channels, ngf) is inferred from the keys. Raises ValueError naming the file and the keys
    that do not fit for anything that is not such a generator.
    """
    state = clean_state_dict(read_state_dict(source, map_location=map_location))
    return build_generator(FastGenerator if fast else Generator, state, describe_source(source))
