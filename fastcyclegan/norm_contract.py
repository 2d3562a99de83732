"""The one contract of the fused instance norm's implementations: the Triton kernels (`fastcyclegan.kernels`),
the C kernel (`fastcyclegan.norm_cpu`) and PyTorch (`fastcyclegan.norm_torch`). `fastcyclegan.ops` picks one
per call (its routing table) and calls it through these two functions; each module provides both.

Maths, per (image n, channel c) plane of H*W values, statistics in fp32 (fp64 for fp64 x) whatever the
storage, by Welford or two passes (|mean| >> std loses no digits):
    mean = sum(x) / HW,  var = sum((x - mean)^2) / HW,  rstd = 1 / sqrt(var + eps)  (0 for var + eps = 0)
    xhat = (x - mean) * rstd,  z = xhat * weight + bias (affine; xhat alone without),  a = act(z)
    y = a (+ residual), written reflection-padded by p = (out's H - x's H) / 2
Backward, from dy, the gradient of the unpadded y: g = dy * act'(z) (1 or 0 for ReLU, the slope where z <= 0
for LeakyReLU), then with gamma = weight (1 without) and per plane S1 = sum(g), S2 = sum(g * xhat):
    dx = gamma * rstd * (g - S1 / HW - xhat * S2 / HW);  dweight = sum over n of S2, dbias = sum over n of S1
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class NormImplementation(Protocol):
    def instance_norm_forward(
        self,
        x: Tensor,
        residual: Tensor | None,
        out: Tensor,
        *,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        relu: bool = False,
        eps: float = 1e-5,
        negative_slope: float = 0.0,
    ) -> tuple[Tensor, Tensor]:
        """Writes y into `out` (N, C, H + 2p, W + 2p), x's dtype and memory format; returns the (N, C) mean and
        rstd. x: (N, C, H, W), NCHW- or channels-last-contiguous; residual: None or x's shape and dtype, any
        strides (the interior view of a padded output works); weight, bias: None or both (C,), any float dtype."""
        ...

    def instance_norm_backward(
        self,
        dy: Tensor,
        x: Tensor,
        mean: Tensor,
        rstd: Tensor,
        *,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        relu: bool = False,
        negative_slope: float = 0.0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(dx in x's strides, S1, S2 per plane (N, C) in the statistics' dtype) from dy (x's shape and strides)
        and the forward's saved x, mean and rstd."""
        ...
