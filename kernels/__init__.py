"""Triton kernels of fastcyclegan, installed as `fastcyclegan.kernels`.

Import through `fastcyclegan.ops`, which adds the custom-op registration, the input checks and the choice
between these kernels and the PyTorch implementation of the same contract (fastcyclegan.norm_torch); these
launchers assume their inputs were already checked.
"""

from .instance_norm import instance_norm_backward, instance_norm_forward
from .launch_plan import LaunchPlan, plan

__all__ = ["instance_norm_forward", "instance_norm_backward", "plan", "LaunchPlan"]
