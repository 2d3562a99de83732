"""What the generator's and the PatchGAN's recognition share: the one not-convertible error, the wrappers
(DataParallel, DistributedDataParallel, torch.compile) taken off modules and state-dict keys, and the check
every weight tensor passes before anything reads its values."""

from __future__ import annotations

import torch
from torch import Tensor, nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


class NotConvertible(ValueError):
    """A module or state dict the fast modules cannot run; the message says why (NotAGenerator, NotAPatchGAN)."""


def strip_wrappers(key: str) -> str:
    """A key without the prefixes that DataParallel, DistributedDataParallel and torch.compile add."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


# the one rule for the dtype of a weight: what FastGenerator and Generator compute in (float8 and integer
# tensors are refused, naming the key, before anything else looks at their values)
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(key: str, t: Tensor, error: type[NotConvertible] = NotConvertible) -> None:
    """Refuses (raising `error`, the caller's kind of NotConvertible) anything under `key` that is no dense
    floating-point weight tensor holding what it declares."""
    if not isinstance(t, Tensor):
        raise error(f"holds a {type(t).__name__} under '{key}', not a tensor")
    if t.is_meta or t.layout != torch.strided:
        raise error(f"holds a {'meta' if t.is_meta else str(t.layout)} tensor under '{key}', not weights")
    if t.dtype not in WEIGHT_DTYPES:
        raise error(
            f"holds a {t.dtype} tensor under '{key}'; weights are float16, bfloat16, float32 or float64 "
            "(what the generator computes in)"
        )
    if any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape)):
        raise error(
            f"holds an expanded tensor under '{key}' (shape {tuple(t.shape)} over {t.untyped_storage().nbytes()} "
            "bytes, stride 0): a checkpoint that declares more than it stores"
        )
