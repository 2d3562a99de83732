"""The benchmark matrix: which backends, sizes, batches and dtypes a run covers, from the pytest options."""

from __future__ import annotations

import pytest
import torch

from fastcyclegan.backends import DEFAULT_BACKENDS, DTYPES

BLOCKS_FOR_SIZE = {128: 6, 256: 9, 512: 9}  # the paper: 6 blocks for 128x128, 9 for 256x256 and larger


def blocks_for(size: int) -> int:
    return BLOCKS_FOR_SIZE.get(size, 9 if size >= 256 else 6)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# the generator's norm sites that dominate its bytes: the residual blocks' and the last up-sampling layer's
_CUDA_KERNEL_SHAPES = ";".join(f"{n},{c},{h},{h}" for c, h in ((256, 64), (64, 256)) for n in (1, 8, 32))


def _shapes(text: str) -> list[tuple[int, ...]]:
    shapes = [tuple(int(v) for v in _csv(s)) for s in text.split(";") if s.strip()]
    if any(len(s) != 4 for s in shapes):
        raise pytest.UsageError(f"--fcg-kernel-shapes: expected 'N,C,H,W;N,C,H,W', got {text!r}")
    return shapes


def bench_device(config) -> torch.device:
    name = config.getoption("--fcg-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def matrix(config) -> dict:
    """The benchmark matrix the options ask for, with device-dependent defaults."""
    device = bench_device(config)
    cuda = device.type == "cuda"
    smoke = config.getoption("--fcg-smoke")

    def pick(option, cuda_default, cpu_default, smoke_default):
        value = config.getoption(option)
        if value is not None:
            return value
        return smoke_default if smoke else (cuda_default if cuda else cpu_default)

    dtypes = _csv(pick("--fcg-dtypes", "bf16,fp32", "fp32,bf16", "fp32"))
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise pytest.UsageError(f"--fcg-dtypes: unknown {unknown}; expected some of {', '.join(DTYPES)}")
    backends = config.getoption("--fcg-backends")
    return {
        "device": device,
        "backends": _csv(backends) if backends else list(DEFAULT_BACKENDS),
        "sizes": [int(s) for s in _csv(pick("--fcg-sizes", "256", "128,256", "32"))],
        "batches": [int(b) for b in _csv(pick("--fcg-batches", "1,16", "1,8", "1"))],
        "dtypes": dtypes,
        "rounds": pick("--fcg-rounds", 30, 5, 1),
        "kernel_shapes": _shapes(pick("--fcg-kernel-shapes", _CUDA_KERNEL_SHAPES, "2,64,32,32", "1,8,8,8")),
        "ngf": 8 if smoke and config.getoption("--fcg-ngf") == 64 else config.getoption("--fcg-ngf"),
    }
