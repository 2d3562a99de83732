"""How a call on these tensors is dispatched: whether autograd would record it (`records_grad`), whether it
may skip PyTorch's dispatcher (`plain`: no compiler tracing, no tensor subclass) and whether the Triton
kernels run it (`use_triton`). The fast paths that have no backward or no fake implementation (pre-packed or
blocked conv weights, the op's implementation called directly, eager PyTorch's own layers in CPU training)
run only where these say they may; `ThreadSwitch` turns one of them off for a block of a thread's code, and
`environment_switch` reads the variable that turns one off for a process."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading

import torch
from torch import Tensor

_TRITON = importlib.util.find_spec("triton") is not None
_SWITCH = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def records_grad(*tensors) -> bool:
    """Grad mode on and one of the tensors (None skipped) requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def plain(*tensors) -> bool:
    """Plain tensors or parameters (no fake or functional subclass, None skipped), no compiler tracing: an
    op's implementation may run without its dispatch."""
    return not torch.compiler.is_compiling() and all(t is None or type(t) in _PLAIN_TYPES for t in tensors)


def use_triton(x: Tensor) -> bool:
    """Whether x goes through the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1; never float64)."""
    if x.dtype == torch.float64 or not _TRITON:
        return False
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


class ThreadSwitch:
    """A fast path's off switch for one thread at a time: `off()` says whether this thread turned it off,
    `disabled()` turns it off for a block (the A/B of the path, and tests)."""

    def __init__(self):
        self._local = threading.local()

    def off(self) -> bool:
        return getattr(self._local, "off", False)

    @contextlib.contextmanager
    def disabled(self):
        before = self.off()
        self._local.off = True
        try:
            yield
        finally:
            self._local.off = before


def environment_switch(name: str, what: str) -> bool:
    """The environment variable `name`: 1/true/on/yes (the default, unset) or 0/false/off/no; ValueError naming
    it, `what` it switches and the value found for anything else."""
    value = os.environ.get(name, "1")
    if value.strip().lower() not in _SWITCH:
        raise ValueError(f"{name} must be 1, true, on, yes or 0, false, off, no ({what}), got {value!r}")
    return _SWITCH[value.strip().lower()]
