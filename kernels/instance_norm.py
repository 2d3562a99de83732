"""Fused instance norm, optionally followed by ReLU and/or a residual add: Triton kernels and launchers.

Every (image n, channel c) plane of x (N, C, H, W) is normalized over its P = H * W positions:

    mean = sum(x) / P        var = sum((x - mean)^2) / P        rstd = 1 / sqrt(var + eps)  (0 if var + eps == 0)
    xhat = (x - mean) * rstd        z = xhat * weight[c] + bias[c]      (AFFINE; else z = xhat)
    forward:   y  = act(z) + r                 act = leaky relu of slope s (s = 0: relu) or identity, r = residual
    backward:  g  = dy * act'(z)               (act' = 1 where z > 0, else s; 1 everywhere without act)
               dx = rstd * weight[c] * (g - mean(g) - xhat * mean(g * xhat))       d residual = dy
               d weight[c] = sum over n and the plane of g * xhat     d bias[c] = sum of g

All statistics are fp32 whatever the storage dtype (fp32, fp16, bf16). The variance is never E[x^2] - E[x]^2:
every register lane runs Welford's update over the positions it visits, and the lanes, then the chunks, are
merged by Chan et al.'s parallel formula. The forward accumulates x - x[n, c, 0] rather than x, so activations
with |mean| >> std keep their digits in the sums too (1e4 +- 1 in fp32: 1e-6 error instead of 1e-2).

The tensors are addressed as (N, C, P) through three strides, so channels-last (stride_c == 1) and NCHW
(stride_p == 1) run through the same kernels. The forward can write its output straight into a reflection-
padded buffer (PAD > 0) that the next 3x3 or 7x7 conv reads, which saves the separate padding pass; it then
walks the padded output and reads each position's reflected source, and the residual may be any strided view
(the interior of the previous padded output). A plane's P positions are cut into `split` chunks, so that a
batch of one still gives every SM work: pass 1 writes one partial per (n, c, chunk), pass 2 combines the
partials of its plane (cheap: `split` values) and then transforms its own chunk.

The launchers have the contract of fastcyclegan.norm_torch's functions of the same names (same arguments,
same outputs): the op picks one implementation or the other. Tiles and chunks come from launch_plan.plan.
Names: pointers end in `_ptr`, sizes and strides are lower case, upper case is for `tl.constexpr` only.
This file imports torch and triton only: the caller (fastcyclegan.ops) checks inputs and allocates outputs.
Order: shared helpers, forward kernels, backward kernels, launchers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch_plan import LaunchPlan, plan

# ----------------------------------------------------------------------------------------------------------
# helpers shared by the kernels


@triton.jit
def _program_plane(n_channels, BLOCK_C: tl.constexpr):
    """Program axis 0 enumerates (image, channel block); returns n and the channel offsets [BLOCK_C]."""
    pid = tl.program_id(0)
    num_cb = tl.cdiv(n_channels, BLOCK_C)
    n = pid // num_cb
    offs_c = (pid % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, offs_c


@triton.jit
def _program_chunk(n_pos, chunk):
    """Program axis 1 enumerates the chunks of a plane; returns s and its positions [start, end)."""
    s = tl.program_id(1)
    start = s * chunk
    return s, start, tl.minimum(start + chunk, n_pos)


@triton.jit
def _tile(n, offs_c, p0, end, n_channels, stride_n, stride_c, stride_p, BLOCK_P: tl.constexpr):
    """Offsets and mask of the [BLOCK_P, BLOCK_C] tile of positions p0 .. p0 + BLOCK_P (clipped at end)."""
    offs_p = p0 + tl.arange(0, BLOCK_P)
    mask = (offs_p < end)[:, None] & (offs_c < n_channels)[None, :]
    offsets = (
        n.to(tl.int64) * stride_n + offs_p.to(tl.int64)[:, None] * stride_p + offs_c.to(tl.int64)[None, :] * stride_c
    )
    return offsets, mask


@triton.jit
def _offsets(n64, h, w, c64, stride_n, stride_c, stride_h, stride_w):
    """Offsets of the [BLOCK_P, BLOCK_C] positions (h, w) [BLOCK_P, 1] of channels c64 [1, BLOCK_C] in image n
    of a 4-D tensor with these strides (int64: a batch of large planes passes 2^31 elements)."""
    return n64 * stride_n + h * stride_h + w * stride_w + c64 * stride_c


@triton.jit
def _plane_shift(x_ptr, n, offs_c, n_channels, stride_n, stride_c):
    """x[n, c, 0] in fp32 [BLOCK_C]: statistics of x - shift keep their digits when |mean| >> std."""
    offsets = n.to(tl.int64) * stride_n + offs_c.to(tl.int64) * stride_c
    return tl.load(x_ptr + offsets, mask=offs_c < n_channels, other=0.0).to(tl.float32)


@triton.jit
def _saved_stats(mean_ptr, rstd_ptr, n, offs_c, n_channels):
    """(index into the (N, C) buffers, mean, rstd) of the planes (n, offs_c), as saved by the forward."""
    stats = n.to(tl.int64) * n_channels + offs_c
    mean = tl.load(mean_ptr + stats, mask=offs_c < n_channels, other=0.0)
    rstd = tl.load(rstd_ptr + stats, mask=offs_c < n_channels, other=0.0)
    return stats, mean, rstd


@triton.jit
def _affine(w_ptr, b_ptr, offs_c, n_channels, AFFINE: tl.constexpr):
    """(gamma, beta) of the channels offs_c in fp32 [BLOCK_C]: the learned weight and bias, or 1 and 0."""
    if AFFINE:
        gamma = tl.load(w_ptr + offs_c, mask=offs_c < n_channels, other=1.0).to(tl.float32)
        beta = tl.load(b_ptr + offs_c, mask=offs_c < n_channels, other=0.0).to(tl.float32)
    else:
        gamma = tl.full([offs_c.shape[0]], 1.0, tl.float32)
        beta = tl.zeros([offs_c.shape[0]], tl.float32)
    return gamma, beta


@triton.jit
def _xhat_and_g(x_ptr, dy_ptr, offsets, mask, mean, rstd, gamma, beta, slope, RELU: tl.constexpr):
    """The tile's normalized input and the gradient reaching the affine map (dy through the leaky relu's
    slope: 1 where its input is > 0, else `slope`), fp32."""
    xhat = (tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
    g = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        g = tl.where(xhat * gamma[None, :] + beta[None, :] > 0.0, g, g * slope)
    return xhat, g


@triton.jit
def _partials(part_ptr, n, offs_c, n_channels, split, SPLIT_BLOCK: tl.constexpr):
    """The [SPLIT_BLOCK, BLOCK_C] partials of the planes (n, offs_c) from a (N, C, split) fp32 buffer."""
    offs_s = tl.arange(0, SPLIT_BLOCK)
    mask = (offs_s < split)[:, None] & (offs_c < n_channels)[None, :]
    index = (n.to(tl.int64) * n_channels + offs_c[None, :]) * split + offs_s[:, None]
    return tl.load(part_ptr + index, mask=mask, other=0.0)


# ----------------------------------------------------------------------------------------------------------
# forward


@triton.jit
def _in_fwd_stats_kernel(
    x_ptr,  # the input, (N, C, P) through the strides
    part_mean_ptr,  # fp32 (N, C, split): mean of each chunk, minus the plane's shift x[n, c, 0]
    part_m2_ptr,  # fp32 (N, C, split): centred sum of squares of each chunk
    n_pos,  # positions per plane, P = H * W
    n_channels,  # C
    chunk,  # positions per chunk, a multiple of BLOCK_P; chunk s covers [s * chunk, min((s + 1) * chunk, P))
    split,  # chunks per plane (program axis 1)
    stride_n,
    stride_c,
    stride_p,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c = _program_plane(n_channels, BLOCK_C)
    s, start, end = _program_chunk(n_pos, chunk)
    shift = _plane_shift(x_ptr, n, offs_c, n_channels, stride_n, stride_c)
    # Welford per register lane: every (row, channel) lane of the tile keeps its own running (count, mean, m2)
    # with elementwise updates only; the rows are merged once, after the loop (Chan et al.). A cross-thread
    # reduction per tile would stall the loads (bench/results/TUNING.md, step 1).
    count = tl.zeros([BLOCK_P, 1], dtype=tl.float32)  # the same for every channel of a row
    mean = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        offsets, mask = _tile(n, offs_c, p0, end, n_channels, stride_n, stride_c, stride_p, BLOCK_P)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32) - shift[None, :]
        row_valid = (p0 + tl.arange(0, BLOCK_P) < end)[:, None]
        count += row_valid.to(tl.float32)
        delta = tl.where(row_valid, x - mean, 0.0)
        mean += delta * (1.0 / tl.maximum(count, 1.0))
        m2 += delta * tl.where(row_valid, x - mean, 0.0)
    total = tl.sum(count, axis=0)  # [1]: the chunk's positions
    chunk_mean = tl.sum(mean * count, axis=0) / total
    spread = mean - chunk_mean[None, :]
    chunk_m2 = tl.sum(m2 + count * spread * spread, axis=0)
    index = (n.to(tl.int64) * n_channels + offs_c) * split + s
    tl.store(part_mean_ptr + index, chunk_mean, mask=offs_c < n_channels)
    tl.store(part_m2_ptr + index, chunk_m2, mask=offs_c < n_channels)


@triton.jit
def _reflect(i, size, PAD: tl.constexpr):
    """Source index of padded index i under reflection padding by PAD (PAD < size)."""
    i = i - PAD
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= size, 2 * (size - 1) - i, i)


@triton.jit
def _in_fwd_apply_kernel(
    x_ptr,  # the input (N, C, H, W), strides x_stride_*
    res_ptr,  # the residual (N, C, H, W), strides res_stride_* (read only when HAS_RESIDUAL)
    y_ptr,  # the output (N, C, H + 2 PAD, W + 2 PAD), strides y_stride_*
    part_mean_ptr,  # fp32 (N, C, split), from the stats kernel
    part_m2_ptr,  # fp32 (N, C, split), from the stats kernel
    mean_ptr,  # fp32 (N, C): the plane means, saved for the backward
    rstd_ptr,  # fp32 (N, C): 1 / sqrt(var + eps), saved for the backward
    w_ptr,  # the affine weight (C,) (read only when AFFINE)
    b_ptr,  # the affine bias (C,) (read only when AFFINE)
    height,
    width,
    n_channels,
    chunk,  # the stats kernel's positions per chunk (to weigh its partials)
    split,  # the stats kernel's chunks per plane
    out_chunk,  # output positions per program of this kernel (a multiple of BLOCK_P)
    eps,
    slope,  # the leaky relu's slope below 0 (0.0: relu; read only when RELU)
    x_stride_n,
    x_stride_c,
    x_stride_h,
    x_stride_w,
    x_stride_p,  # stride of x's collapsed H*W axis (used when FLAT)
    res_stride_n,
    res_stride_c,
    res_stride_h,
    res_stride_w,
    y_stride_n,
    y_stride_c,
    y_stride_h,
    y_stride_w,
    PAD: tl.constexpr,  # reflection padding written around the output (0: none)
    FLAT: tl.constexpr,  # no padding and the residual and y share x's strides: address positions as one axis
    AFFINE: tl.constexpr,  # scale by weight[c] and add bias[c] after the normalization
    RELU: tl.constexpr,  # apply the leaky relu of `slope` after the norm (slope 0: max(., 0); NaN stays NaN)
    HAS_RESIDUAL: tl.constexpr,  # add the residual after the norm (and the ReLU)
    SPLIT_BLOCK: tl.constexpr,  # next power of two >= split
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c = _program_plane(n_channels, BLOCK_C)
    width_out = width + 2 * PAD
    s, start, end = _program_chunk((height + 2 * PAD) * width_out, out_chunk)
    n_pos = height * width
    # Combine the chunks' (count, mean, m2) exactly: mean = sum(n_s mean_s) / P, m2 = sum(m2_s + n_s d_s^2).
    # All of them are relative to the plane's shift, and so is `mean` until it is stored.
    shift = _plane_shift(x_ptr, n, offs_c, n_channels, x_stride_n, x_stride_c)
    part_mean = _partials(part_mean_ptr, n, offs_c, n_channels, split, SPLIT_BLOCK)
    part_m2 = _partials(part_m2_ptr, n, offs_c, n_channels, split, SPLIT_BLOCK)
    chunk_start = tl.arange(0, SPLIT_BLOCK) * chunk
    part_count = tl.minimum(tl.maximum(n_pos - chunk_start, 0), chunk).to(tl.float32)[:, None]
    mean = tl.sum(part_count * part_mean, axis=0) / n_pos
    delta = tl.where(part_count > 0, part_mean - mean[None, :], 0.0)
    var = tl.sum(part_m2 + part_count * delta * delta, axis=0) / n_pos
    # a constant plane with eps = 0 normalizes to 0 (rstd 0, not inf * 0 = NaN), as ATen's norms give
    rstd = tl.where(var + eps > 0, 1.0 / tl.sqrt(var + eps), 0.0)
    gamma, beta = _affine(w_ptr, b_ptr, offs_c, n_channels, AFFINE)
    if s == 0:
        stats = n.to(tl.int64) * n_channels + offs_c
        tl.store(mean_ptr + stats, shift + mean, mask=offs_c < n_channels)
        tl.store(rstd_ptr + stats, rstd, mask=offs_c < n_channels)
    c64 = offs_c.to(tl.int64)[None, :]
    n64 = n.to(tl.int64)
    for q0 in range(start, end, BLOCK_P):
        if FLAT:  # one multiply per position: the compiler sees NCHW rows as contiguous and vectorizes them
            src, mask = _tile(n, offs_c, q0, end, n_channels, x_stride_n, x_stride_c, x_stride_p, BLOCK_P)
            res = src
            out = src
        else:  # output position q -> (row, col) of the padded output -> reflected source (h, w)
            q = q0 + tl.arange(0, BLOCK_P)
            mask = (q < end)[:, None] & (offs_c < n_channels)[None, :]
            row = q // width_out
            col = q - row * width_out
            h = _reflect(row, height, PAD).to(tl.int64)[:, None]
            w = _reflect(col, width, PAD).to(tl.int64)[:, None]
            src = _offsets(n64, h, w, c64, x_stride_n, x_stride_c, x_stride_h, x_stride_w)
            res = _offsets(n64, h, w, c64, res_stride_n, res_stride_c, res_stride_h, res_stride_w)
            row, col = row.to(tl.int64)[:, None], col.to(tl.int64)[:, None]
            out = _offsets(n64, row, col, c64, y_stride_n, y_stride_c, y_stride_h, y_stride_w)
        x = tl.load(x_ptr + src, mask=mask, other=0.0).to(tl.float32)
        y = ((x - shift[None, :]) - mean[None, :]) * rstd[None, :]
        if AFFINE:
            y = y * gamma[None, :] + beta[None, :]
        if RELU:
            y = tl.where(y < 0.0, y * slope, y)
        if HAS_RESIDUAL:
            y += tl.load(res_ptr + res, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# backward


@triton.jit
def _in_bwd_reduce_kernel(
    dy_ptr,  # the output gradient, same strides as x
    x_ptr,  # the forward input, (N, C, P) through the strides
    mean_ptr,  # fp32 (N, C), saved by the forward
    rstd_ptr,  # fp32 (N, C), saved by the forward
    w_ptr,  # the affine weight (C,) (read only when AFFINE)
    b_ptr,  # the affine bias (C,) (read only when AFFINE)
    part_g_ptr,  # fp32 (N, C, split): sum of g over each chunk
    part_gx_ptr,  # fp32 (N, C, split): sum of g * xhat over each chunk
    n_pos,
    n_channels,
    chunk,
    split,
    slope,  # the leaky relu's slope below 0 (read only when RELU)
    stride_n,
    stride_c,
    stride_p,
    AFFINE: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c = _program_plane(n_channels, BLOCK_C)
    s, start, end = _program_chunk(n_pos, chunk)
    stats, mean, rstd = _saved_stats(mean_ptr, rstd_ptr, n, offs_c, n_channels)
    gamma, beta = _affine(w_ptr, b_ptr, offs_c, n_channels, AFFINE)
    sum_g = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)  # per lane, reduced once after the loop
    sum_gx = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        offsets, mask = _tile(n, offs_c, p0, end, n_channels, stride_n, stride_c, stride_p, BLOCK_P)
        xhat, g = _xhat_and_g(x_ptr, dy_ptr, offsets, mask, mean, rstd, gamma, beta, slope, RELU)
        sum_g += g
        sum_gx += g * xhat
    index = stats * split + s
    tl.store(part_g_ptr + index, tl.sum(sum_g, axis=0), mask=offs_c < n_channels)
    tl.store(part_gx_ptr + index, tl.sum(sum_gx, axis=0), mask=offs_c < n_channels)


@triton.jit
def _in_bwd_apply_kernel(
    dy_ptr,  # the output gradient, same strides as x
    x_ptr,  # the forward input
    dx_ptr,  # the input gradient, same strides as x
    mean_ptr,  # fp32 (N, C)
    rstd_ptr,  # fp32 (N, C)
    w_ptr,  # the affine weight (C,) (read only when AFFINE)
    b_ptr,  # the affine bias (C,) (read only when AFFINE)
    part_g_ptr,  # fp32 (N, C, split), from the reduce kernel
    part_gx_ptr,  # fp32 (N, C, split), from the reduce kernel
    n_pos,
    n_channels,
    chunk,
    split,
    slope,  # the leaky relu's slope below 0 (read only when RELU)
    stride_n,
    stride_c,
    stride_p,
    AFFINE: tl.constexpr,
    RELU: tl.constexpr,
    SPLIT_BLOCK: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c = _program_plane(n_channels, BLOCK_C)
    s, start, end = _program_chunk(n_pos, chunk)
    _, mean, rstd = _saved_stats(mean_ptr, rstd_ptr, n, offs_c, n_channels)
    gamma, beta = _affine(w_ptr, b_ptr, offs_c, n_channels, AFFINE)
    mean_g = tl.sum(_partials(part_g_ptr, n, offs_c, n_channels, split, SPLIT_BLOCK), axis=0) / n_pos
    mean_gx = tl.sum(_partials(part_gx_ptr, n, offs_c, n_channels, split, SPLIT_BLOCK), axis=0) / n_pos
    for p0 in range(start, end, BLOCK_P):
        offsets, mask = _tile(n, offs_c, p0, end, n_channels, stride_n, stride_c, stride_p, BLOCK_P)
        xhat, g = _xhat_and_g(x_ptr, dy_ptr, offsets, mask, mean, rstd, gamma, beta, slope, RELU)
        dx = (rstd * gamma)[None, :] * (g - mean_g[None, :] - xhat * mean_gx[None, :])
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# launchers: x and dy must share one (N, C, P)-collapsible layout; fastcyclegan.ops ensures it.


def _strides(name: str, t: torch.Tensor) -> dict:
    """{name}_stride_n, _c, _h, _w of a 4-D tensor, by keyword."""
    return {f"{name}_stride_{axis}": stride for axis, stride in zip("nchw", t.stride())}


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1


def _plan_for(x: torch.Tensor, n_pos: int) -> LaunchPlan:
    n, c = x.shape[:2]
    return plan(n, c, n_pos, _is_channels_last(x), x.device)


def _affine_args(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> dict:
    """w_ptr, b_ptr and AFFINE; x stands in as a valid pointer when there are no affine parameters."""
    return dict(w_ptr=x if weight is None else weight, b_ptr=x if bias is None else bias, AFFINE=weight is not None)


def _plane_args(x: torch.Tensor, cfg: LaunchPlan) -> dict:
    """The (N, C, P) addressing, chunking and tiling arguments every plane kernel takes, by keyword."""
    n, c, h, w = x.shape
    stride_n, stride_c, stride_p = x.view(n, c, h * w).stride()
    tiling = dict(chunk=cfg.chunk, split=cfg.split, BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    return dict(n_pos=h * w, n_channels=c, stride_n=stride_n, stride_c=stride_c, stride_p=stride_p) | tiling


def instance_norm_forward(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    out: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Writes act(IN(x) * weight + bias) (+ residual) into `out`, reflection-padded by (out's H - x's H) / 2,
    and returns the fp32 (N, C) mean and rstd. act, when `relu`: the leaky relu of `negative_slope` (0: relu).
    x: (N, C, H, W), (N, C, P)-collapsible; residual: x's shape, any strides; weight, bias: both (C,)
    contiguous or both None; out: (N, C, H + 2 pad, W + 2 pad) in x's dtype, any strides."""
    n, c, h, w = x.shape
    mean = torch.empty((n, c), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if x.numel() == 0:
        return mean, rstd
    stats_plan, out_plan = _plan_for(x, h * w), _plan_for(x, out.shape[2] * out.shape[3])
    part_mean = torch.empty((n, c, stats_plan.split), device=x.device, dtype=torch.float32)
    part_m2 = torch.empty_like(part_mean)
    stats_args = _plane_args(x, stats_plan)
    _in_fwd_stats_kernel[stats_plan.grid(n, c)](x_ptr=x, part_mean_ptr=part_mean, part_m2_ptr=part_m2, **stats_args)
    res = x if residual is None else residual  # a valid pointer even when HAS_RESIDUAL is off
    pointers = dict(x_ptr=x, res_ptr=res, y_ptr=out, part_mean_ptr=part_mean, part_m2_ptr=part_m2)
    # the stats kernel's chunks (to weigh its partials), this kernel's own chunks and tiles
    chunks = dict(chunk=stats_plan.chunk, split=stats_plan.split, SPLIT_BLOCK=triton.next_power_of_2(stats_plan.split))
    tiles = dict(out_chunk=out_plan.chunk, BLOCK_P=out_plan.block_p, BLOCK_C=out_plan.block_c)
    epilogue = dict(RELU=relu, slope=negative_slope, HAS_RESIDUAL=residual is not None, PAD=(out.shape[2] - h) // 2)
    flat = out.shape == x.shape and res.stride() == x.stride() == out.stride()
    strides = _strides("x", x) | _strides("res", res) | _strides("y", out) | dict(x_stride_p=stats_args["stride_p"])
    plane = dict(mean_ptr=mean, rstd_ptr=rstd, eps=eps, height=h, width=w, n_channels=c, FLAT=flat)
    launch = pointers | plane | chunks | tiles | epilogue | strides | _affine_args(x, weight, bias)
    _in_fwd_apply_kernel[out_plan.grid(n, c)](num_warps=out_plan.num_warps, **launch)
    return mean, rstd


def instance_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    negative_slope: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, sum of g, sum of g * xhat) of y = act(IN(x) * weight + bias) (+ residual): dx in x's dtype and
    layout; the sums are fp32 (N, C) per plane, so d bias = sum_g.sum(0) and d weight = sum_gx.sum(0). The
    residual's gradient is dy itself. dy: x's shape and strides; mean, rstd: the forward's fp32 (N, C)."""
    n, c, h, w = x.shape
    dx = torch.empty_like(x)
    if x.numel() == 0:
        zeros = torch.zeros((n, c), device=x.device, dtype=torch.float32)
        return dx, zeros, zeros.clone()
    cfg = _plan_for(x, h * w)
    part_g = torch.empty((n, c, cfg.split), device=x.device, dtype=torch.float32)
    part_gx = torch.empty_like(part_g)
    pointers = dict(dy_ptr=dy, x_ptr=x, mean_ptr=mean, rstd_ptr=rstd, part_g_ptr=part_g, part_gx_ptr=part_gx)
    common = pointers | dict(slope=negative_slope, RELU=relu) | _plane_args(x, cfg) | _affine_args(x, weight, bias)
    _in_bwd_reduce_kernel[cfg.grid(n, c)](**common)
    _in_bwd_apply_kernel[cfg.grid(n, c)](dx_ptr=dx, SPLIT_BLOCK=triton.next_power_of_2(cfg.split), **common)
    return dx, part_g.sum(dim=2), part_gx.sum(dim=2)
