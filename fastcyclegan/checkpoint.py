"""Reading checkpoint files: a file (PyTorch or safetensors) or a mapping -> the flat state dict of tensors
inside it and the key it was nested under. A pure file reader: what the state dict is (a generator, a
PatchGAN) is `structure.py`'s and `patchgan.py`'s to say, and `loader.py` puts the two together.

Files are read with `torch.load(weights_only=True)`: a pickle that would import or call anything beyond
tensors and containers is refused before any of its code runs. A zip entry that inflates to many times its
stored size is refused before it is read. Checkpoints nested under one key of a dict (`state_dict`, `model`,
`netG_A`, `G_A2B`, ...) are unwrapped, and the key taken is reported. Nothing the file declares is
allocated by the loader before `structure.describe_state` has checked every shape and count.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping

import torch
from torch import Tensor

log = logging.getLogger("fastcyclegan")

_MAX_INFLATION = 50  # uncompressed / compressed size of a zip entry beyond which it is a zip bomb
_MAX_NESTING = 3
_MAX_VISITS = 100_000  # dict entries looked at while searching a checkpoint for its state dict


def describe_source(source) -> str:
    return f"'{os.fspath(source)}'" if isinstance(source, (str, os.PathLike)) else "the given state dict"


def _is_safetensors(path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then the JSON header '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def _refuse_zip_bomb(path, name: str) -> None:
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.file_size > _MAX_INFLATION * max(info.compress_size, 1) and info.file_size > (1 << 20):
                raise ValueError(
                    f"refused to load checkpoint {name}: its entry '{info.filename}' inflates from "
                    f"{info.compress_size:,} to {info.file_size:,} bytes (a zip bomb; torch.save stores tensors "
                    "uncompressed)"
                )


def _load_file(path, name: str, map_location):
    if _is_safetensors(path):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ValueError(
                f"checkpoint {name} is a safetensors file: install the optional dependency "
                "(pip install 'fastcyclegan[safetensors]')"
            ) from err
        try:
            return load_file(os.fspath(path), device=str(map_location))
        except Exception as err:  # truncated or malformed header
            raise ValueError(f"could not read safetensors checkpoint {name}: {err}") from err
    _refuse_zip_bomb(path, name)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line), text.splitlines()[0])
        if "Unsupported global" in text:
            raise ValueError(
                f"refused to load checkpoint {name}: it is not a plain weights file, and loading it would "
                f"run code from its pickle (weights_only=True rejected it: {detail})"
            ) from err
        raise ValueError(
            f"could not read checkpoint {name}: it is neither a PyTorch checkpoint nor a safetensors file "
            f"(unpickling it failed: {detail})"
        ) from err
    except Exception as err:  # truncated zip, not a torch file at all, ...
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"could not read checkpoint {name}: the file is truncated or not a PyTorch checkpoint ({first})"
        ) from err


def _is_state_dict(value) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, Tensor) for v in value.values())


def _find_state_dicts(loaded, name: str) -> list[tuple[str, Mapping]]:
    """(key path, state dict) of every state dict nested in `loaded` up to _MAX_NESTING levels. Each mapping
    is visited once, however many keys share it (a pickle can reference one dict from thousands of places:
    followed naively, 300 keys on each of 3 levels are 27 million paths), and at most _MAX_VISITS mappings
    and entries are looked at: a checkpoint that nests more is refused, naming the file."""
    found: list[tuple[str, Mapping]] = []
    seen: set[int] = set()
    visits = 0
    stack = [(loaded, "", 1)] if isinstance(loaded, Mapping) else []
    while stack:
        node, path, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        visits += 1 + len(node)
        if visits > _MAX_VISITS:
            raise ValueError(
                f"checkpoint {name} nests more than {_MAX_VISITS:,} dict entries: refused rather than searched "
                "(say which state dict with key=..., on the command line --key)"
            )
        children = []
        for k, v in node.items():
            if not isinstance(v, Mapping) or id(v) in seen:
                continue
            here = f"{path}/{k}" if path else str(k)
            if _is_state_dict(v):
                seen.add(id(v))
                found.append((here, v))
            elif depth < _MAX_NESTING:
                children.append((v, here, depth + 1))
        stack.extend(reversed(children))  # searched in the file's order
    return found


def _unnest(loaded, name: str, key: str | None) -> tuple[Mapping, str | None]:
    """The state dict inside `loaded` and the key path it was found under (None: loaded itself)."""
    if key is not None:
        node = loaded
        for part in key.split("/"):
            if not isinstance(node, Mapping) or part not in node:
                have = sorted(map(str, node))[:10] if isinstance(node, Mapping) else type(node).__name__
                raise ValueError(f"checkpoint {name} has no key '{key}' (keys: {have})")
            node = node[part]
        if not _is_state_dict(node):
            raise ValueError(f"checkpoint {name}: '{key}' does not hold a state dict of tensors")
        return node, key
    if _is_state_dict(loaded):
        return loaded, None
    found = _find_state_dicts(loaded, name)
    if not found:
        what = f"keys {sorted(map(str, loaded))[:10]}" if isinstance(loaded, Mapping) else type(loaded).__name__
        raise ValueError(f"checkpoint {name} does not hold a state dict of tensors (got {what})")
    if len(found) > 1:
        raise ValueError(
            f"checkpoint {name} holds several state dicts ({', '.join(k for k, _ in found[:8])}): say which "
            "one with key=... (on the command line: --key)"
        )
    return found[0][1], found[0][0]


def read_state_dict(source, *, map_location="cpu", key: str | None = None) -> tuple[dict[str, Tensor], str | None]:
    """A checkpoint file (path) or mapping -> (flat {key: tensor} dict, the key path it was nested under)."""
    name = describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ValueError(f"checkpoint {name} does not exist or is not a file")
        wanted = map_location if isinstance(map_location, (str, torch.device)) else None
        if wanted is not None and torch.device(wanted).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"cannot load checkpoint {name} onto {wanted}: no CUDA device is available (map_location='cpu')"
            )
        loaded = _load_file(source, name, map_location)
    else:
        loaded = source
    state, taken = _unnest(loaded, name, key)
    if taken is not None:
        log.info("checkpoint %s: took the state dict under '%s'", name, taken)
    return dict(state), taken
