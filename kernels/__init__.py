"""Triton kernels of fastcyclegan, installed as `fastcyclegan.kernels`.

Import through `fastcyclegan.ops`, which adds the custom-op registration, the layout checks and the
PyTorch fallback; these launchers assume their inputs were already checked.
"""

from .instance_norm import instance_norm_backward, instance_norm_forward, plan

__all__ = ["instance_norm_forward", "instance_norm_backward", "plan"]
