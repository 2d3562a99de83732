"""The benchmark matrix: which backends, sizes, batches and dtypes a run covers, from the pytest options."""

from __future__ import annotations

import functools
import time

import pytest
import torch

from fastcyclegan.devices import default_device
from fastcyclegan.fast import min_input_size
from fastcyclegan.harness.backends import BACKENDS, DEFAULT_BACKENDS, DTYPES

BLOCKS_FOR_SIZE = {128: 6, 256: 9, 512: 9}  # the paper: 6 blocks for 128x128, 9 for 256x256 and larger


def blocks_for(size: int) -> int:
    return BLOCKS_FOR_SIZE.get(size, 9 if size >= 256 else 6)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# the generator's norm sites that dominate its bytes: the residual blocks' and the last up-sampling layer's
_CUDA_KERNEL_SHAPES = ";".join(f"{n},{c},{h},{h}" for c, h in ((256, 64), (64, 256)) for n in (1, 8, 32))


def _shapes(text: str) -> list[tuple[int, ...]]:
    try:
        shapes = [tuple(int(v) for v in _csv(s)) for s in text.split(";") if s.strip()]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 4 or min(s) < 1 for s in shapes):
        raise pytest.UsageError(f"--fcg-kernel-shapes: expected 'N,C,H,W;N,C,H,W', got {text!r}")
    return shapes


NORMS = ("plain", "affine")
MODES = ("infer", "train", "cycle")


def bench_device(config) -> torch.device:
    name = config.getoption("--fcg-device") or str(default_device())
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise pytest.UsageError(f"--fcg-device: expected cuda, cuda:N or cpu, got {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--fcg-device {name}: this machine has no CUDA device (torch {torch.__version__})")
    if device.type not in ("cuda", "cpu"):
        raise pytest.UsageError(f"--fcg-device: expected cuda, cuda:N or cpu, got {name!r}")
    return device


def _choices(option: str, text: str, allowed) -> list[str]:
    values = _csv(text)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        found = f"unknown {unknown}" if unknown else f"nothing in {text!r}"
        raise pytest.UsageError(f"{option}: expected a comma list out of {', '.join(allowed)}; got {found}")
    return values


def _positive_ints(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in _csv(text)]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise pytest.UsageError(f"{option}: expected a comma list of positive integers, got {text!r}")
    return values


def _sizes(text: str) -> list[int]:
    """--fcg-sizes, each large enough for the generator's reflection pads (checked here, not case by case)."""
    sizes = _positive_ints("--fcg-sizes", text)
    small = [s for s in sizes if s < min_input_size(blocks_for(s))]
    if small:
        raise pytest.UsageError(
            f"--fcg-sizes: the generator's reflection pads need images of at least {min_input_size(1)} pixels "
            f"(its residual blocks pad 1 pixel after two stride-2 convs), got {', '.join(map(str, small))}"
        )
    return sizes


_BF16_SLOWDOWN = 3.0  # a bf16 conv slower than this many fp32 ones: the CPU has no native bf16


@functools.cache
def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 convolutions at native speed, and the measurement that says so: one 3x3
    conv (64 channels, 32x32, NCHW, as eager PyTorch runs it) in bf16 against fp32, best of 3 calls each.
    Without native bf16 (AVX2 only) eager's bf16 convs take 100x the fp32 ones: a default matrix with bf16
    would run for hours there."""
    conv, x = torch.nn.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 32, 32)

    def best(module, inp) -> float:
        times = []
        for _ in range(4):
            start = time.perf_counter()
            module(inp)
            times.append(time.perf_counter() - start)
        return min(times[1:])

    with torch.no_grad():
        ratio = best(conv.bfloat16(), x.bfloat16()) / best(conv.float(), x)
    return ratio <= _BF16_SLOWDOWN, f"a bf16 conv took {ratio:.1f}x the time of an fp32 one"


def _dtypes_option(config, device: torch.device, smoke: bool) -> str:
    """--fcg-dtypes as given (options win over defaults), else the default for this device."""
    given = config.getoption("--fcg-dtypes")
    if given is not None:
        return given
    return "fp32" if smoke else default_dtypes(device)[0]


def default_dtypes(device: torch.device) -> tuple[str, str]:
    """(the default --fcg-dtypes for a full run on this device, why)."""
    if device.type == "cuda":
        return "bf16,fp32", "CUDA"
    native, measured = cpu_bf16()
    if native:
        return "fp32,bf16", f"this CPU runs bf16 natively ({measured})"
    return "fp32", f"bf16 left out: this CPU has no native bf16 ({measured}); ask for it with --fcg-dtypes"


def matrix(config) -> dict:
    """The benchmark matrix the options ask for, with device-dependent defaults (on a CPU: batch 1, and bf16
    only where it runs natively, so a default run ends in minutes on 2 cores)."""
    device = bench_device(config)
    cuda = device.type == "cuda"
    smoke = config.getoption("--fcg-smoke")

    def pick(option, cuda_default, cpu_default, smoke_default):
        value = config.getoption(option)
        if value is not None:
            return value
        return smoke_default if smoke else (cuda_default if cuda else cpu_default)

    backends = config.getoption("--fcg-backends")
    rounds = pick("--fcg-rounds", 30, 5, 1)
    if rounds < 1:
        raise pytest.UsageError(f"--fcg-rounds: expected a positive integer, got {rounds}")
    if config.getoption("--fcg-ngf") < 1:
        raise pytest.UsageError(f"--fcg-ngf: expected a positive integer, got {config.getoption('--fcg-ngf')}")
    return {
        "device": device,
        "backends": _choices("--fcg-backends", backends, BACKENDS) if backends is not None else list(DEFAULT_BACKENDS),
        "sizes": _sizes(pick("--fcg-sizes", "256", "128,256", "32")),
        "batches": _positive_ints("--fcg-batches", pick("--fcg-batches", "1,16", "1", "1")),
        "train_batches": _positive_ints("--fcg-batches", pick("--fcg-batches", "1,4", "1", "1")),
        "modes": _choices("--fcg-mode", config.getoption("--fcg-mode"), MODES),
        "dtypes": _choices("--fcg-dtypes", _dtypes_option(config, device, smoke), DTYPES),
        "norms": _choices("--fcg-norms", config.getoption("--fcg-norms"), NORMS),
        "rounds": rounds,
        "cudnn_benchmark": config.getoption("--fcg-cudnn-benchmark") == "on",
        "kernel_shapes": _shapes(pick("--fcg-kernel-shapes", _CUDA_KERNEL_SHAPES, "2,64,32,32", "1,8,8,8")),
        "ngf": 8 if smoke and config.getoption("--fcg-ngf") == 64 else config.getoption("--fcg-ngf"),
    }


def generator_cases(m: dict, mode: str, backends=None, norms=None) -> list:
    """The (backend, size, batch, dtype, norm) cases of `mode` that matrix `m` asks for, as pytest params (none
    when the mode is not asked for): inference takes the matrix's batches, training modes its train batches;
    `backends` and `norms` narrow the matrix's own."""
    if mode not in m["modes"]:
        return []
    batches = m["batches"] if mode == "infer" else m["train_batches"]
    prefix = "" if mode == "infer" else f"{mode}-"
    backends = m["backends"] if backends is None else backends
    return [
        pytest.param((backend, size, batch, dtype, norm), id=f"{prefix}{backend}-{size}px-b{batch}-{dtype}-{norm}")
        for norm in norms or m["norms"]
        for dtype in m["dtypes"]
        for size in m["sizes"]
        for batch in batches
        for backend in backends
    ]
