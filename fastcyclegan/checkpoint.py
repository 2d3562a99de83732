"""Reading real CycleGAN generator checkpoints (the public repository's `latest_net_G.pth` layout) and
building a generator class from a state dict.

Files are read with `torch.load(weights_only=True)`: a pickle that would import or call anything beyond
tensors and containers is refused before any of its code runs. Keys and shapes are checked against the
architecture built on the meta device (no memory) before the real module is allocated.
This module knows the layout only through `reference.GeneratorLayout`; it never imports the fast path.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .reference import GeneratorLayout

# Buffers that pre-0.4 PyTorch saved for InstanceNorm layers; the public repository deletes them too.
_LEGACY_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_LAYOUT = GeneratorLayout(0)  # the indices that do not depend on the number of blocks
_BLOCK_KEY = re.compile(rf"^model\.(\d+)\.conv_block\.{_LAYOUT.block_convs[0]}\.weight$")


def describe_source(source) -> str:
    return f"'{os.fspath(source)}'" if isinstance(source, (str, os.PathLike)) else "the given state dict"


def read_state_dict(source, *, map_location="cpu") -> dict[str, Tensor]:
    """A checkpoint file (path) or mapping -> a flat {key: tensor} dict, untouched otherwise."""
    name = describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ValueError(f"checkpoint {name} does not exist or is not a file")
        try:
            loaded = torch.load(source, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"refused to load checkpoint {name}: it is not a plain weights file, and loading it would "
                f"run code from its pickle (weights_only=True rejected it: {str(err).splitlines()[0]})"
            ) from err
        except Exception as err:  # truncated zip, not a torch file at all, ...
            raise ValueError(
                f"could not read checkpoint {name}: the file is truncated or not a PyTorch checkpoint ({err})"
            ) from err
    else:
        loaded = source
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # training frameworks often wrap the weights
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"checkpoint {name} does not hold a state dict of tensors (got {type(loaded).__name__})")
    return dict(loaded)


def clean_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip a DataParallel `module.` prefix and the legacy InstanceNorm running-stat buffers."""
    cleaned = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.rsplit(".", 1)[-1] in _LEGACY_NORM_BUFFERS:
            continue
        cleaned[key] = value
    return cleaned


def infer_generator_config(state: Mapping[str, Tensor], name: str = "the given state dict") -> dict[str, int]:
    """num_blocks, in_channels, out_channels and ngf of a public-layout generator, read off its weights."""
    stem_key = f"model.{_LAYOUT.stem}.weight"
    stem = state.get(stem_key)
    if stem is None or stem.dim() != 4:
        raise ValueError(
            f"checkpoint {name} is not a CycleGAN ResNet generator: it has no 4-D '{stem_key}' "
            f"(first keys: {sorted(state)[:6]})"
        )
    num_blocks = sum(1 for key in state if _BLOCK_KEY.match(key))
    final = state.get(f"model.{GeneratorLayout(num_blocks).head}.weight")
    return {
        "num_blocks": num_blocks,
        "in_channels": stem.shape[1],
        "out_channels": final.shape[0] if final is not None and final.dim() == 4 else 3,
        "ngf": stem.shape[0],
    }


def check_fits(module: nn.Module, state: Mapping[str, Tensor], name: str = "the given state dict") -> None:
    """Raises ValueError naming the file and the keys or shapes of `state` that `module` (meta is fine) lacks."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {name} does not fit {type(module).__name__}"
            f"(num_blocks={getattr(module, 'num_blocks', '?')}): missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''} (a dropout, U-Net or discriminator checkpoint does not load)"
        )
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"checkpoint {name} has tensors of the wrong shape (file vs model): {wrong[:8]}")


def build_generator(cls: type[nn.Module], state: Mapping[str, Tensor], name: str = "the given state dict"):
    """`cls(**config)` holding `state`'s weights, with the config inferred from `state`'s keys.

    `cls` is `Generator` or a subclass with its constructor (FastGenerator). The keys and shapes are checked
    on a meta-device instance first, so nothing that the state dict declares is allocated before it fits.
    """
    config = infer_generator_config(state, name)
    with torch.device("meta"):
        check_fits(cls(**config), state, name)
    model = cls(**config)
    model.load_state_dict(state, strict=True)
    return model
