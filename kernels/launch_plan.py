"""Launch planning for the instance-norm kernels: tile shape, chunks per plane and warps for (N, C, P) planes.

A plane's P positions are cut into `split` chunks so that a batch of one still gives every SM work; the tile
puts its long side on the contiguous axis (channels for channels-last, positions for NCHW) so every warp reads
whole 32-byte sectors. Imports torch and triton only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

_TILE_ELEMENTS = 4096  # elements per [BLOCK_P, BLOCK_C] tile: 16 fp32 registers a thread at 8 warps
_PROGRAMS_PER_SM = 8  # split planes until the grid has about this many programs per SM
# Every apply program combines its planes' partials, a [SPLIT_BLOCK, BLOCK_C] fp32 tile per statistic: 64 keeps
# that at the size of one data tile (registers) and its re-reads from L2 small next to the data it moves.
_MAX_SPLIT = 64
_MIN_BLOCK_C = 16  # 16 bf16 channels = one 32-byte sector per position


@dataclass(frozen=True)
class LaunchPlan:
    block_p: int  # positions per tile
    block_c: int  # channels per tile (and per program)
    split: int  # chunks per plane
    chunk: int  # positions per chunk, a multiple of block_p
    num_warps: int

    def grid(self, n: int, c: int) -> tuple[int, int]:
        return (n * triton.cdiv(c, self.block_c), self.split)


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another: splitting only adds programs


def _tiles_of(p: int, block_c: int) -> tuple[int, int]:
    """(block_p, tiles per plane) for a channel block."""
    block_p = max(16, min(_TILE_ELEMENTS // block_c, triton.next_power_of_2(p)))
    return block_p, triton.cdiv(p, block_p)


@functools.lru_cache(maxsize=512)  # one call per norm site per forward: keep the Python cost off the hot path
def plan(
    n: int, c: int, p: int, channels_last: bool, device: torch.device, split: int | None = None, sms: int | None = None
) -> LaunchPlan:
    """Tile shape, chunking and warps for (n, c, p) planes; `split` asks for that many chunks per plane (capped
    by the plane's tiles and _MAX_SPLIT), `sms` the number of SMs to fill (default: the device's)."""
    block_c = min(64, max(4, triton.next_power_of_2(c))) if channels_last else min(4, triton.next_power_of_2(c))
    wanted = _PROGRAMS_PER_SM * (sms or _sm_count(device))

    def programs_at(block_c: int, tiles: int) -> int:
        """Programs in the grid when every plane is split as far as the cap allows."""
        return n * triton.cdiv(c, block_c) * min(tiles, _MAX_SPLIT)

    block_p, tiles = _tiles_of(p, block_c)
    # Few, large planes (batch 1): narrower channel blocks give more programs once the split is capped.
    while channels_last and block_c > _MIN_BLOCK_C and programs_at(block_c, tiles) < wanted:
        narrower = _tiles_of(p, block_c // 2)
        if programs_at(block_c // 2, narrower[1]) <= programs_at(block_c, tiles):
            break
        block_c, (block_p, tiles) = block_c // 2, narrower
    if split is None:
        plane_programs = n * triton.cdiv(c, block_c)
        split = triton.cdiv(wanted, plane_programs) if plane_programs < wanted else 1
    split = max(1, min(split, tiles, _MAX_SPLIT))
    chunk = triton.cdiv(tiles, split) * block_p
    split = triton.cdiv(p, chunk)  # no empty chunks
    num_warps = 8 if block_p * block_c >= 4096 else 4
    return LaunchPlan(block_p, block_c, split, chunk, num_warps)
