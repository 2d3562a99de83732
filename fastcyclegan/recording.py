"""`records_grad(*tensors)`: whether autograd would record an op on these tensors. The fast paths that have no
backward (pre-packed or blocked conv weights, the op's implementation called without its dispatcher) run only
where it would not."""

from __future__ import annotations

import torch


def records_grad(*tensors) -> bool:
    """Grad mode on and one of the tensors (None skipped) requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
