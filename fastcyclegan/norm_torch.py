"""The PyTorch implementation of the fused instance norm (`fastcyclegan.norm_contract`): for float64
everywhere, and on a CPU for what the C kernel does not run (fp16, a disabled or missing kernel, the
backward without an activation or channels-last). Statistics accumulate in fp32 (fp64 for fp64 x) and never
lose digits to |mean| >> std; every path is one batched computation for all (N, C) planes (no loop over
images or planes). Outputs go straight into `out` where its layout allows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import mirrored, stats_dtype


def _batch_norm_planes(z: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """Writes IN(x) * weight + bias into z (NCHW-contiguous, the statistics' dtype) for NCHW-contiguous x and
    returns the (N, C) mean and rstd: all N * C planes as the channels of one (1, N*C, H, W) batch norm,
    ATen's fastest CPU path. Its statistics are two-pass with double accumulators (|mean| >> std loses no
    digits in them); its transform x * a + b rounds like eager InstanceNorm2d's, |mean| / std * 2^-24 relative
    (a shift by x[n, c, 0] first, as the kernels do for free, would cost a whole extra pass here:
    bench/results/TUNING.md, CPU path)."""
    n, c, h, w = x.shape
    planes = x.to(z.dtype).view(1, n * c, h, w)
    if weight is not None:
        weight, bias = weight.to(z.dtype).repeat(n), bias.to(z.dtype).repeat(n)
    mean, rstd = z.new_empty(n * c), z.new_empty(n * c)
    torch.ops.aten.native_batch_norm.out(
        planes, weight, bias, None, None, True, 0.0, eps, out=z.view(1, n * c, h, w), save_mean=mean, save_invstd=rstd
    )
    return mean.view(n, c), rstd.view(n, c)


def _transform(mean: Tensor, var: Tensor, weight, bias, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(rstd, scale, shift) of the (N, C) statistics of the values v a plane holds: IN(v) * weight + bias =
    v * scale + shift. A constant plane with eps = 0 gets rstd 0, as ATen's."""
    rstd = torch.where(var + eps > 0, torch.rsqrt(var + eps), 0.0)
    scale = rstd if weight is None else rstd * weight.to(rstd.dtype)
    shift = -mean * scale if bias is None else bias.to(rstd.dtype) - mean * scale
    return rstd, scale, shift


def _zero_border(padded: Tensor, pad: int) -> None:
    """Zeroes the reflection-padding border of padded (N, C, H + 2 pad, W + 2 pad), in place: four strips."""
    h, w = padded.shape[2] - 2 * pad, padded.shape[3] - 2 * pad
    padded.narrow(2, 0, pad).zero_()
    padded.narrow(2, pad + h, pad).zero_()
    rows = padded.narrow(2, pad, h)
    rows.narrow(3, 0, pad).zero_()
    rows.narrow(3, pad + w, pad).zero_()


def _two_pass_channels_last(z: Tensor, x: Tensor, weight, bias, eps: float, whole: Tensor, pad: int):
    """The same for channels-last x of any float dtype, all planes at once: z (the statistics' dtype) is
    `whole`'s interior, `whole` being `out` (padded by `pad`; fp32 x: no temporary at all) or z itself (a
    temporary, for half precision x).

    The mean by ATen's sum over (H, W) (cascaded partial sums, vectorised across the channels); the variance
    as the sum of (x - mean)^2, squared in place in z (two-pass: exact where E[x^2] - mean^2 cancels); then
    z = x * a + b with a = rstd * weight, b = bias - mean * a, eager's batch-norm transform, from x again.
    Sums run over `whole` with its border zeroed: ATen reduces a contiguous tensor many times faster than a
    padded tensor's interior (0.04 against 0.47 ms for 64x128x128 on a 2-core EPYC). A constant number of
    ATen calls whatever the batch (ATen's channels-last batch norm, one call per image, accumulated in fp32
    sequentially: on a 256x256 forward that doubled the error against float64; bench/results/TUNING.md)."""
    count = x.shape[2] * x.shape[3]
    if x.dtype == z.dtype:
        mean = x.sum(dim=(2, 3)) / count
        torch.sub(x, mean[:, :, None, None], out=z)
    else:  # half precision (z a temporary): one conversion, then sums at fp32 speed (4x a converting sum's)
        z.copy_(x)
        mean = z.sum(dim=(2, 3)) / count
        z.sub_(mean[:, :, None, None])
    if whole is not z and pad:
        _zero_border(whole, pad)
    var = whole.square_().sum(dim=(2, 3)) / count
    rstd, scale, shift = _transform(mean, var, weight, bias, eps)
    torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None], out=z)
    return mean, rstd


def _single_value_planes(z: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """1x1 planes (no H*W > 1 path takes them: ATen's batch norm and sums want more than one value): each value
    is its plane's mean, so IN(x) = 0 and z holds the shift (bias, or 0), rstd as `_transform` gives it for a
    variance of 0. (x - mean) * scale keeps NaN and infinity as NaN, as the other paths do."""
    mean = x.reshape(x.shape[:2]).to(z.dtype)
    zero = torch.zeros_like(mean)
    rstd, scale, shift = _transform(zero, zero, weight, bias, eps)  # of the centred values, whose mean is 0
    centred = x.to(z.dtype) - mean[:, :, None, None]
    torch.addcmul(shift[:, :, None, None], centred, scale[:, :, None, None], out=z)
    return mean, rstd


def fill_reflect_border(y: Tensor, pad: int) -> Tensor:
    """Writes the reflection-padding border of y (N, C, H + 2 pad, W + 2 pad) from its interior, in place."""
    h, w = y.shape[2] - 2 * pad, y.shape[3] - 2 * pad
    rows = y[:, :, pad : pad + h]
    rows[..., :pad].copy_(mirrored(rows[..., pad + 1 : 2 * pad + 1], -1))  # left columns mirror the interior
    rows[..., pad + w :].copy_(mirrored(rows[..., w - 1 : w - 1 + pad], -1))
    y[:, :, :pad].copy_(mirrored(y[:, :, pad + 1 : 2 * pad + 1], 2))  # then whole rows, corners included
    y[:, :, pad + h :].copy_(mirrored(y[:, :, h - 1 : h - 1 + pad], 2))
    return y


def instance_norm_forward(
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
    """Writes act(IN(x) * weight + bias) (+ residual) into `out`, reflection-padded by (out's H - x's H) / 2,
    and returns the (N, C) mean and rstd (fp32; fp64 for fp64 x). Arguments as the kernels' launcher.

    The normalized values z stay in the statistics' dtype until the end: they are `out`'s interior itself
    where its dtype and layout allow, else a temporary copied (or reflection-padded by ATen) into `out` in one pass.
    """
    n, c, h, w = x.shape
    dtype = stats_dtype(x)
    if x.numel() == 0:
        empty = torch.empty((n, c), dtype=dtype, device=x.device)
        return empty, empty.clone()
    pad = (out.shape[2] - h) // 2
    interior = out[:, :, pad : pad + h, pad : pad + w]
    with torch.autocast(x.device.type, enabled=False):  # outputs in x's dtype, as the op promises
        if h * w == 1:
            z = interior if out.dtype == dtype else torch.empty_like(x, dtype=dtype)
            mean, rstd = _single_value_planes(z, x, weight, bias, eps)
        elif x.is_contiguous():
            z = interior if interior.is_contiguous() and out.dtype == dtype else torch.empty_like(x, dtype=dtype)
            mean, rstd = _batch_norm_planes(z, x, weight, bias, eps)
        else:  # channels-last (`layout.plane_layout` gives nothing else), out in x's memory format
            z = interior if out.dtype == dtype else torch.empty_like(x, dtype=dtype)
            mean, rstd = _two_pass_channels_last(z, x, weight, bias, eps, out if z is interior else z, pad)
        if relu and negative_slope:
            torch.nn.functional.leaky_relu_(z, negative_slope)  # keeps NaN
        elif relu:
            z.relu_()  # keeps NaN
        if residual is not None:
            z.add_(residual)
        if z is not interior and pad and z.dtype == out.dtype:
            torch.ops.aten.reflection_pad2d.out(z, [pad] * 4, out=out)  # one pass, the border included
        else:
            if z is not interior:
                interior.copy_(z)  # rounds to out's dtype
            if pad:
                fill_reflect_border(out, pad)
    return mean, rstd


def _through_activation(g: Tensor, z: Tensor, negative_slope: float) -> Tensor:
    """The gradient g through the (leaky) ReLU whose input was z: g where z > 0, else 0 (or g * slope). One
    pass each, the kernels eager's ReLU and LeakyReLU backward run."""
    if negative_slope:
        return torch.ops.aten.leaky_relu_backward(g, z, negative_slope, False)
    return torch.ops.aten.threshold_backward(g, z, 0.0)


def _batch_norm_backward_planes(dy, x, mean, rstd, weight, bias, relu: bool, negative_slope: float):
    """The backward for NCHW-contiguous x as the forward runs it: all N * C planes as the channels of one
    (1, N*C, H, W) batch norm, whose ATen backward computes dx and both per-plane sums in two passes (the
    elementwise formula takes several). The activation's mask first: where its input, the affine map of
    xhat, is <= 0 the gradient is scaled by the slope (0 for ReLU)."""
    n, c, h, w = x.shape
    dtype = mean.dtype
    planes = x.to(dtype).view(1, n * c, h, w)
    g = dy.to(dtype).view(1, n * c, h, w)
    gamma = None if weight is None else weight.to(dtype).repeat(n)
    if relu:
        scale = rstd.reshape(-1) if gamma is None else rstd.reshape(-1) * gamma
        shift = -mean.reshape(-1) * scale
        if bias is not None:
            shift = shift + bias.to(dtype).repeat(n)
        z = torch.addcmul(shift[None, :, None, None], planes, scale[None, :, None, None])
        g = _through_activation(g, z, negative_slope)
    dx, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
        g, planes, gamma, None, None, mean.reshape(-1), rstd.reshape(-1), True, 0.0, [True, True, True]
    )
    return dx.view(n, c, h, w).to(x.dtype), sum_g.view(n, c), sum_gx.view(n, c)


def instance_norm_backward(
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
    """(dx, sum of g, sum of g * xhat) per plane, as the kernels' launcher returns them."""
    n, c, h, w = x.shape
    with torch.autocast(x.device.type, enabled=False):
        if x.numel() and x.is_contiguous() and dy.is_contiguous() and h * w > 1:
            return _batch_norm_backward_planes(dy, x, mean, rstd, weight, bias, relu, negative_slope)
        mean4, rstd4 = mean[:, :, None, None], rstd[:, :, None, None]
        xhat = (x.to(mean.dtype) - mean4) * rstd4
        g = dy.to(mean.dtype)
        gamma = None if weight is None else weight.to(mean.dtype)[None, :, None, None]
        if relu:
            z = xhat if weight is None else xhat * gamma + bias.to(mean.dtype)[None, :, None, None]
            g = _through_activation(g, z, negative_slope)
        sum_g = g.sum(dim=(2, 3))
        sum_gx = (g * xhat).sum(dim=(2, 3))
        count = x.shape[2] * x.shape[3]
        mean_g, mean_gx = (sum_g / count)[:, :, None, None], (sum_gx / count)[:, :, None, None]
        scale = rstd4 if gamma is None else rstd4 * gamma
        dx = torch.empty_like(x).copy_(scale * (g - mean_g - xhat * mean_gx))
    return dx, sum_g, sum_gx
