"""Fused instance norm, optionally followed by ReLU and/or a residual add: Triton kernels and launchers.

Every (image n, channel c) plane of x (N, C, H, W) is normalized over its P = H * W positions:

    mean = sum(x) / P        var = sum((x - mean)^2) / P        rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd
    forward:   y  = act(xhat) + r              act = relu or identity, r = residual or 0
    backward:  g  = dy * act'(xhat)            (act' = [xhat > 0] for relu, 1 otherwise)
               dx = rstd * (g - mean(g) - xhat * mean(g * xhat))          d residual = dy

All statistics are fp32 whatever the storage dtype (fp32, fp16, bf16). The variance is never E[x^2] - E[x]^2:
every register lane runs Welford's update over the positions it visits, and the lanes, then the chunks, are
merged by Chan et al.'s parallel formula. The forward accumulates x - x[n, c, 0] rather than x, so activations with
|mean| >> std keep their digits in the sums too (1e4 +- 1 in fp32: 1e-6 error instead of 1e-2).

The tensors are addressed as (N, C, P) through three strides, so channels-last (stride_c == 1) and NCHW
(stride_p == 1) run through the same kernels. The forward can write its output straight into a reflection-
padded buffer (PAD > 0) that the next 3x3 or 7x7 conv reads, which saves the separate padding pass; it then
walks the padded output and reads each position's reflected source, and the residual may be any strided view
(the interior of the previous padded output). A plane's P positions are cut into SPLIT chunks, so that a
batch of one still gives every SM work: pass 1 writes one partial per (n, c, chunk), pass 2 combines the
partials of its plane (cheap: SPLIT values) and then transforms its own chunk.

Order of this file: forward kernels, backward kernels, launch planning, launchers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..layout import padded_empty

# ----------------------------------------------------------------------------------------------------------
# helpers shared by the kernels


@triton.jit
def _program_plane(C, BLOCK_C: tl.constexpr):
    """Program axis 0 enumerates (image, channel block); returns n and the channel offsets [BLOCK_C]."""
    pid = tl.program_id(0)
    num_cb = tl.cdiv(C, BLOCK_C)
    n = pid // num_cb
    offs_c = (pid % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, offs_c


@triton.jit
def _program_chunk(P, CHUNK):
    """Program axis 1 enumerates the chunks of a plane; returns s and its positions [start, end)."""
    s = tl.program_id(1)
    start = s * CHUNK
    return s, start, tl.minimum(start + CHUNK, P)


@triton.jit
def _tile(n, offs_c, p0, end, C, stride_n, stride_c, stride_p, BLOCK_P: tl.constexpr):
    """Offsets and mask of the [BLOCK_P, BLOCK_C] tile of positions p0 .. p0 + BLOCK_P (clipped at end)."""
    offs_p = p0 + tl.arange(0, BLOCK_P)
    mask = (offs_p < end)[:, None] & (offs_c < C)[None, :]
    offsets = (
        n.to(tl.int64) * stride_n + offs_p.to(tl.int64)[:, None] * stride_p + offs_c.to(tl.int64)[None, :] * stride_c
    )
    return offsets, mask


@triton.jit
def _plane_shift(X, n, offs_c, C, stride_n, stride_c):
    """x[n, c, 0] in fp32 [BLOCK_C]: statistics of x - shift keep their digits when |mean| >> std."""
    return tl.load(X + n.to(tl.int64) * stride_n + offs_c.to(tl.int64) * stride_c, mask=offs_c < C, other=0.0).to(
        tl.float32
    )


@triton.jit
def _saved_stats(MEAN, RSTD, n, offs_c, C):
    """(index into the (N, C) buffers, mean, rstd) of the planes (n, offs_c), as saved by the forward."""
    stats = n.to(tl.int64) * C + offs_c
    mean = tl.load(MEAN + stats, mask=offs_c < C, other=0.0)
    rstd = tl.load(RSTD + stats, mask=offs_c < C, other=0.0)
    return stats, mean, rstd


@triton.jit
def _xhat_and_g(X, DY, offsets, mask, mean, rstd, RELU: tl.constexpr):
    """The tile's normalized input and the gradient reaching the norm (dy through relu's mask) in fp32."""
    xhat = (tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
    g = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        g = tl.where(xhat > 0.0, g, 0.0)
    return xhat, g


@triton.jit
def _partials(PART, n, offs_c, C, SPLIT, SPLIT_BLOCK: tl.constexpr):
    """The [SPLIT_BLOCK, BLOCK_C] partials of the planes (n, offs_c) from a (N, C, SPLIT) fp32 buffer."""
    offs_s = tl.arange(0, SPLIT_BLOCK)
    mask = (offs_s < SPLIT)[:, None] & (offs_c < C)[None, :]
    index = (n.to(tl.int64) * C + offs_c[None, :]) * SPLIT + offs_s[:, None]
    return tl.load(PART + index, mask=mask, other=0.0)


# ----------------------------------------------------------------------------------------------------------
# forward


@triton.jit
def _in_fwd_stats_kernel(
    X,  # pointer to the input, (N, C, P) through the strides
    PART_MEAN,  # pointer to fp32 (N, C, SPLIT): mean of each chunk, minus the plane's shift x[n, c, 0]
    PART_M2,  # pointer to fp32 (N, C, SPLIT): centred sum of squares of each chunk
    P,  # positions per plane (H * W)
    C,  # channels
    CHUNK,  # positions per chunk, a multiple of BLOCK_P; chunk s covers [s * CHUNK, min((s + 1) * CHUNK, P))
    SPLIT,  # chunks per plane (program axis 1)
    stride_n,
    stride_c,
    stride_p,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c = _program_plane(C, BLOCK_C)
    s, start, end = _program_chunk(P, CHUNK)
    shift = _plane_shift(X, n, offs_c, C, stride_n, stride_c)
    # Welford per register lane: every (row, channel) lane of the tile keeps its own running (count, mean,
    # m2) with elementwise updates only; the rows are merged once, after the loop (Chan et al.). A
    # cross-thread reduction per tile would stall the loads (measured: 56 us for a 43 MB read on an H200).
    count = tl.zeros([BLOCK_P, 1], dtype=tl.float32)  # the same for every channel of a row
    mean = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        offsets, mask = _tile(n, offs_c, p0, end, C, stride_n, stride_c, stride_p, BLOCK_P)
        x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32) - shift[None, :]
        row_valid = (p0 + tl.arange(0, BLOCK_P) < end)[:, None]
        count += row_valid.to(tl.float32)
        delta = tl.where(row_valid, x - mean, 0.0)
        mean += delta * (1.0 / tl.maximum(count, 1.0))
        m2 += delta * tl.where(row_valid, x - mean, 0.0)
    total = tl.sum(count, axis=0)  # [1]: the chunk's positions
    chunk_mean = tl.sum(mean * count, axis=0) / total
    spread = mean - chunk_mean[None, :]
    chunk_m2 = tl.sum(m2 + count * spread * spread, axis=0)
    index = (n.to(tl.int64) * C + offs_c) * SPLIT + s
    tl.store(PART_MEAN + index, chunk_mean, mask=offs_c < C)
    tl.store(PART_M2 + index, chunk_m2, mask=offs_c < C)


@triton.jit
def _reflect(i, size, PAD: tl.constexpr):
    """Source index of padded index i under reflection padding by PAD (PAD < size)."""
    i = i - PAD
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= size, 2 * (size - 1) - i, i)


@triton.jit
def _in_fwd_apply_kernel(
    X,  # pointer to the input (N, C, H, W), strides sx_*
    R,  # pointer to the residual (N, C, H, W), strides sr_* (read only when HAS_RESIDUAL)
    Y,  # pointer to the output (N, C, H + 2 PAD, W + 2 PAD), strides sy_*
    PART_MEAN,  # pointer to fp32 (N, C, SPLIT), from the stats kernel
    PART_M2,  # pointer to fp32 (N, C, SPLIT), from the stats kernel
    MEAN,  # pointer to fp32 (N, C): the plane means, saved for the backward
    RSTD,  # pointer to fp32 (N, C): 1 / sqrt(var + eps), saved for the backward
    H,
    W,
    C,
    CHUNK,  # the stats kernel's positions per chunk (to weigh its partials)
    SPLIT,  # the stats kernel's chunks per plane
    OUT_CHUNK,  # output positions per program of this kernel (a multiple of BLOCK_P)
    eps,
    sx_n, sx_c, sx_h, sx_w,
    sr_n, sr_c, sr_h, sr_w,
    sy_n, sy_c, sy_h, sy_w,
    sx_p,  # stride of x's collapsed H*W axis (used when FLAT)
    PAD: tl.constexpr,  # reflection padding written around the output (0: none)
    FLAT: tl.constexpr,  # no padding and R, Y share x's strides: address positions as one axis
    RELU: tl.constexpr,  # apply max(., 0) after the norm (NaN stays NaN)
    HAS_RESIDUAL: tl.constexpr,  # add R after the norm (and the ReLU)
    SPLIT_BLOCK: tl.constexpr,  # next power of two >= SPLIT
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, offs_c = _program_plane(C, BLOCK_C)
    W_OUT = W + 2 * PAD
    s, start, end = _program_chunk((H + 2 * PAD) * W_OUT, OUT_CHUNK)
    P = H * W
    # Combine the chunks' (count, mean, m2) exactly: mean = sum(n_s mean_s) / P, m2 = sum(m2_s + n_s d_s^2).
    # All of them are relative to the plane's shift, and so is `mean` until it is stored.
    shift = _plane_shift(X, n, offs_c, C, sx_n, sx_c)
    part_mean = _partials(PART_MEAN, n, offs_c, C, SPLIT, SPLIT_BLOCK)
    part_m2 = _partials(PART_M2, n, offs_c, C, SPLIT, SPLIT_BLOCK)
    chunk_start = tl.arange(0, SPLIT_BLOCK) * CHUNK
    part_count = tl.minimum(tl.maximum(P - chunk_start, 0), CHUNK).to(tl.float32)[:, None]
    mean = tl.sum(part_count * part_mean, axis=0) / P
    delta = tl.where(part_count > 0, part_mean - mean[None, :], 0.0)
    var = tl.sum(part_m2 + part_count * delta * delta, axis=0) / P
    rstd = 1.0 / tl.sqrt(var + eps)
    if s == 0:
        stats = n.to(tl.int64) * C + offs_c
        tl.store(MEAN + stats, shift + mean, mask=offs_c < C)
        tl.store(RSTD + stats, rstd, mask=offs_c < C)
    c64 = offs_c.to(tl.int64)[None, :]
    n64 = n.to(tl.int64)
    for q0 in range(start, end, BLOCK_P):
        if FLAT:  # one multiply per position: the compiler sees NCHW rows as contiguous and vectorizes them
            src, mask = _tile(n, offs_c, q0, end, C, sx_n, sx_c, sx_p, BLOCK_P)
            res = src
            out = src
        else:  # output position q -> (row, col) of the padded output -> reflected source (h, w)
            q = q0 + tl.arange(0, BLOCK_P)
            mask = (q < end)[:, None] & (offs_c < C)[None, :]
            row = q // W_OUT
            col = q - row * W_OUT
            h = _reflect(row, H, PAD).to(tl.int64)[:, None]
            w = _reflect(col, W, PAD).to(tl.int64)[:, None]
            src = n64 * sx_n + h * sx_h + w * sx_w + c64 * sx_c
            res = n64 * sr_n + h * sr_h + w * sr_w + c64 * sr_c
            out = n64 * sy_n + row.to(tl.int64)[:, None] * sy_h + col.to(tl.int64)[:, None] * sy_w + c64 * sy_c
        x = tl.load(X + src, mask=mask, other=0.0).to(tl.float32)
        y = ((x - shift[None, :]) - mean[None, :]) * rstd[None, :]
        if RELU:
            y = tl.where(y < 0.0, 0.0, y)
        if HAS_RESIDUAL:
            y += tl.load(R + res, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + out, y.to(Y.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# backward


@triton.jit
def _in_bwd_reduce_kernel(
    DY,  # pointer to the output gradient, same strides as X
    X,  # pointer to the forward input, (N, C, P) through the strides
    MEAN,  # pointer to fp32 (N, C), saved by the forward
    RSTD,  # pointer to fp32 (N, C), saved by the forward
    PART_G,  # pointer to fp32 (N, C, SPLIT): sum of g over each chunk
    PART_GX,  # pointer to fp32 (N, C, SPLIT): sum of g * xhat over each chunk
    P,
    C,
    CHUNK,
    SPLIT,
    stride_n,
    stride_c,
    stride_p,
    RELU: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c = _program_plane(C, BLOCK_C)
    s, start, end = _program_chunk(P, CHUNK)
    stats, mean, rstd = _saved_stats(MEAN, RSTD, n, offs_c, C)
    sum_g = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)  # per lane, reduced once after the loop
    sum_gx = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        offsets, mask = _tile(n, offs_c, p0, end, C, stride_n, stride_c, stride_p, BLOCK_P)
        xhat, g = _xhat_and_g(X, DY, offsets, mask, mean, rstd, RELU)
        sum_g += g
        sum_gx += g * xhat
    index = stats * SPLIT + s
    tl.store(PART_G + index, tl.sum(sum_g, axis=0), mask=offs_c < C)
    tl.store(PART_GX + index, tl.sum(sum_gx, axis=0), mask=offs_c < C)


@triton.jit
def _in_bwd_apply_kernel(
    DY,  # pointer to the output gradient, same strides as X
    X,  # pointer to the forward input
    DX,  # pointer to the input gradient, same strides as X
    MEAN,  # pointer to fp32 (N, C)
    RSTD,  # pointer to fp32 (N, C)
    PART_G,  # pointer to fp32 (N, C, SPLIT), from the reduce kernel
    PART_GX,  # pointer to fp32 (N, C, SPLIT), from the reduce kernel
    P,
    C,
    CHUNK,
    SPLIT,
    stride_n,
    stride_c,
    stride_p,
    RELU: tl.constexpr,
    SPLIT_BLOCK: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c = _program_plane(C, BLOCK_C)
    s, start, end = _program_chunk(P, CHUNK)
    _, mean, rstd = _saved_stats(MEAN, RSTD, n, offs_c, C)
    mean_g = tl.sum(_partials(PART_G, n, offs_c, C, SPLIT, SPLIT_BLOCK), axis=0) / P
    mean_gx = tl.sum(_partials(PART_GX, n, offs_c, C, SPLIT, SPLIT_BLOCK), axis=0) / P
    for p0 in range(start, end, BLOCK_P):
        offsets, mask = _tile(n, offs_c, p0, end, C, stride_n, stride_c, stride_p, BLOCK_P)
        xhat, g = _xhat_and_g(X, DY, offsets, mask, mean, rstd, RELU)
        dx = rstd[None, :] * (g - mean_g[None, :] - xhat * mean_gx[None, :])
        tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# launch planning

_TILE_ELEMENTS = 4096  # elements per [BLOCK_P, BLOCK_C] tile: 16 fp32 registers a thread at 8 warps
_PROGRAMS_PER_SM = 8  # split planes until the grid has about this many programs per SM
# Every apply program combines its planes' partials, a [SPLIT_BLOCK, BLOCK_C] fp32 tile per statistic: 64 keeps
# that at the size of one data tile (registers) and its re-reads from L2 small next to the data it moves.
_MAX_SPLIT = 64
_MIN_BLOCK_C = 16  # 16 bf16 channels = one 32-byte sector per position


@dataclass(frozen=True)
class Plan:
    block_p: int
    block_c: int
    split: int
    chunk: int
    num_warps: int

    def grid(self, n: int, c: int) -> tuple[int, int]:
        return (n * triton.cdiv(c, self.block_c), self.split)


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another: splitting only adds programs


@functools.lru_cache(maxsize=512)  # one call per norm site per forward: keep the Python cost off the hot path
def plan(
    n: int, c: int, p: int, channels_last: bool, device: torch.device, split: int | None = None, sms: int | None = None
) -> Plan:
    """Tile shape, chunking and warps for (n, c, p) planes; `split` forces the number of chunks per plane,
    `sms` the number of SMs to fill (default: the device's)."""
    # The contiguous axis gets the long side of the tile, so every warp reads whole 32-byte sectors.
    block_c = min(64, max(4, triton.next_power_of_2(c))) if channels_last else min(4, triton.next_power_of_2(c))
    wanted = _PROGRAMS_PER_SM * (sms or _sm_count(device))

    def shape(block_c):
        block_p = max(16, min(_TILE_ELEMENTS // block_c, triton.next_power_of_2(p)))
        return block_p, triton.cdiv(p, block_p)

    def programs(block_c, tiles):
        return n * triton.cdiv(c, block_c) * min(tiles, _MAX_SPLIT)

    block_p, tiles = shape(block_c)
    # Few, large planes (batch 1): narrower channel blocks give more programs once the split is capped.
    while channels_last and block_c > _MIN_BLOCK_C and programs(block_c, tiles) < wanted:
        narrower = shape(block_c // 2)
        if programs(block_c // 2, narrower[1]) <= programs(block_c, tiles):
            break
        block_c, (block_p, tiles) = block_c // 2, narrower
    if split is None:
        programs = n * triton.cdiv(c, block_c)
        split = triton.cdiv(wanted, programs) if programs < wanted else 1
    split = max(1, min(split, tiles, _MAX_SPLIT))
    chunk = triton.cdiv(tiles, split) * block_p
    split = triton.cdiv(p, chunk)  # no empty chunks
    num_warps = 8 if block_p * block_c >= 4096 else 4
    return Plan(block_p, block_c, split, chunk, num_warps)


def plane_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(stride_n, stride_c, stride_p) of a 4-D tensor whose H and W collapse into one axis of P = H * W."""
    n, c, h, w = x.shape
    return x.view(n, c, h * w).stride()


# ----------------------------------------------------------------------------------------------------------
# launchers: x and dy must share one (N, C, P)-collapsible layout; fastcyclegan.ops ensures it.


def instance_norm_forward(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    relu: bool,
    eps: float,
    pad: int = 0,
    split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = act(IN(x)) (+ residual), reflection-padded by `pad`, in x's dtype and memory format, and the fp32
    (N, C) mean and rstd. x must be (N, C, P)-collapsible; the residual may have any strides."""
    n, c, h, w = x.shape
    p = h * w
    y = padded_empty(x, pad)
    mean = torch.empty((n, c), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if x.numel() == 0:
        return y, mean, rstd
    channels_last = x.stride(1) == 1 and c > 1
    cfg = plan(n, c, p, channels_last, x.device, split)
    out = plan(n, c, y.shape[2] * y.shape[3], channels_last, x.device, split)
    part_mean = torch.empty((n, c, cfg.split), device=x.device, dtype=torch.float32)
    part_m2 = torch.empty_like(part_mean)
    strides = plane_strides(x)
    _in_fwd_stats_kernel[cfg.grid(n, c)](
        x, part_mean, part_m2, p, c, cfg.chunk, cfg.split, *strides,
        BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
    )  # fmt: skip
    r = x if residual is None else residual
    flat = pad == 0 and r.stride() == x.stride() == y.stride()
    _in_fwd_apply_kernel[out.grid(n, c)](
        x, r, y, part_mean, part_m2, mean, rstd, h, w, c, cfg.chunk, cfg.split, out.chunk, eps,
        *x.stride(), *r.stride(), *y.stride(), strides[2],
        PAD=pad, FLAT=flat, RELU=relu, HAS_RESIDUAL=residual is not None,
        SPLIT_BLOCK=triton.next_power_of_2(cfg.split),
        BLOCK_P=out.block_p, BLOCK_C=out.block_c, num_warps=out.num_warps,
    )  # fmt: skip
    return y, mean, rstd


def instance_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    relu: bool,
    split: int | None = None,
) -> torch.Tensor:
    """dx of y = act(IN(x)) (+ residual), in x's dtype and layout; the residual's gradient is dy itself."""
    n, c, h, w = x.shape
    p = h * w
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    cfg = plan(n, c, p, x.stride(1) == 1 and c > 1, x.device, split)
    part_g = torch.empty((n, c, cfg.split), device=x.device, dtype=torch.float32)
    part_gx = torch.empty_like(part_g)
    strides = plane_strides(x)
    grid = cfg.grid(n, c)
    _in_bwd_reduce_kernel[grid](
        dy, x, mean, rstd, part_g, part_gx, p, c, cfg.chunk, cfg.split, *strides,
        RELU=relu, BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
    )  # fmt: skip
    _in_bwd_apply_kernel[grid](
        dy, x, dx, mean, rstd, part_g, part_gx, p, c, cfg.chunk, cfg.split, *strides,
        RELU=relu, SPLIT_BLOCK=triton.next_power_of_2(cfg.split),
        BLOCK_P=cfg.block_p, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
    )  # fmt: skip
    return dx
