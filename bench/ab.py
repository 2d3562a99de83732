"""Interleaved A/B timing of generator backends on one device: the fair comparison on a noisy machine.

    python -m bench.ab --backends eager,fast --size 256 --batch 8 --dtype fp32 --rounds 7 [--json out.json]
    python -m bench.ab --backends fast,fast:stem8,fast:head8,fast:stem8+head8 --dtype bf16
    python -m bench.ab --backends eager,compiled,fast,fast_compiled,onnxruntime,openvino --size 128 --busy 2

`fast:NAME` is the FastGenerator candidate NAME of bench/fcg_variants.py (stem8, head8, stem8+head8, aten-norms,
unplanned), run eagerly like `fast`: the A/B of a change before it moves into FastGenerator.

Each round calls every backend once, in turn, on the same input (after a warm-up call each, compile
included), so slow drift of the machine (other processes, clocks) hits all of them alike. Each call starts
IDLE_S after the last one ended, untimed: worker threads spin for a while after a parallel region (libgomp's,
OpenVINO's), and spinning they took the CPU from the next backend's own pool (OpenVINO at 128x128 fp32 on a
2-core EPYC: 44-46 ms after a PyTorch backend, 41.5 ms after ONNX Runtime, whose pool does not spin); a
process running one backend has no such neighbour. `--busy N` runs
N busy PyTorch processes beside the rounds (bench/fcg_busy.py: a shared CPU); the table gives
each backend's median and its ratio to the first backend's median. pytest-benchmark's suites time one case
after another instead; use this for the A/B of a change and those for the matrix.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from bench.fcg_busy import busy_processes
from bench.fcg_cycle import BACKENDS as CYCLE_BACKENDS
from bench.fcg_cycle import build, iteration, reference_networks
from bench.fcg_matrix import blocks_for
from bench.fcg_variants import VARIANTS
from fastcyclegan import Generator
from fastcyclegan.devices import default_device
from fastcyclegan.harness.backends import BACKENDS, DTYPES, Backend, build_backend
from fastcyclegan.harness.measure import device_facts, synchronize

IDLE_S = 0.02  # between timed calls: OpenVINO after a PyTorch backend then ran as after ONNX Runtime (41.0 ms)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = ", ".join(BACKENDS)
    variants = ", ".join(f"fast:{v}" for v in VARIANTS)
    parser.add_argument("--backends", default="eager,fast", help=f"comma list of {choices}, {variants}")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--json", help="also write the timings here")
    parser.add_argument(
        "--mode",
        default="infer",
        choices=["infer", "cycle"],
        help="infer: one forward; cycle: one whole CycleGAN training iteration (bench/fcg_cycle.py, backends "
        "eager, compiled, fast, fast_compiled; --dtype bf16 is autocast)",
    )
    parser.add_argument("--busy", type=int, default=0, help="busy PyTorch processes beside the timed rounds")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    if not names or args.rounds < 1 or args.batch < 1 or args.busy < 0:
        parser.error("need at least one backend, --rounds >= 1, --batch >= 1 and --busy >= 0")
    device = torch.device(args.device) if args.device else default_device()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    calls = (
        _cycle_calls(names, args, x, device, parser)
        if args.mode == "cycle"
        else _forward_calls(names, args, x, device, parser)
    )
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for call in calls.values():
        call()  # compile and warm up outside the timed rounds
    synchronize(device)
    with busy_processes(args.busy):
        for _ in range(args.rounds):
            for name, call in calls.items():
                _idle()
                start = time.perf_counter()
                call()
                synchronize(device)
                seconds[name].append(time.perf_counter() - start)
    first = statistics.median(seconds[names[0]])
    facts = device_facts(device)
    print(
        f"{facts['device']}, torch {facts['torch']}, {args.mode}, {args.size}x{args.size} batch {args.batch} "
        f"{args.dtype}, {args.rounds} interleaved rounds, {torch.get_num_threads()} threads, "
        f"{args.busy} busy PyTorch processes beside:"
    )
    for name in names:
        median = statistics.median(seconds[name])
        print(f"  {name:36s} {median * 1e3:10.1f} ms  {args.batch / median:8.2f} img/s  {median / first:5.2f}x time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": facts, "seconds": seconds}, f, indent=1)
    return 0


def _idle() -> None:
    time.sleep(IDLE_S)


def _forward_calls(names, args, x, device, parser) -> dict:
    """name -> a call of one inference forward of that backend on x."""
    reference = Generator(blocks_for(args.size), ngf=args.ngf).eval()
    calls = {}
    for name in names:
        backend = _build(name, reference, device, DTYPES[args.dtype], x, parser)
        inp = backend.prepare(x.to(DTYPES[args.dtype]))
        calls[name] = lambda backend=backend, inp=inp: _no_grad(backend.run, inp)
    return calls


def _no_grad(run, inp):
    with torch.inference_mode():
        return run(inp)


def _cycle_calls(names, args, x, device, parser) -> dict:
    """name -> a call of one whole CycleGAN training iteration of that backend (A = x, B = x flipped)."""
    unknown = [n for n in names if n not in CYCLE_BACKENDS]
    if unknown:
        parser.error(f"--mode cycle takes the backends {', '.join(CYCLE_BACKENDS)}; got {', '.join(unknown)}")
    networks = reference_networks(blocks_for(args.size), args.ngf)
    real_b = x.flip(-1)
    gans = {name: build(name, networks, device) for name in names}
    return {name: lambda gan=gan: iteration(gan, x, real_b, DTYPES[args.dtype]) for name, gan in gans.items()}


def _build(name: str, reference, device, dtype, example, parser) -> Backend:
    """The backend `name`, or for 'fast:VARIANT' that FastGenerator candidate run eagerly."""
    base, _, variant = name.partition(":")
    if base not in BACKENDS or (variant and (base != "fast" or variant not in VARIANTS)):
        parser.error(
            f"{name}: expected one of {', '.join(BACKENDS)} or fast:VARIANT with VARIANT one of {', '.join(VARIANTS)}"
        )
    if not variant:
        return build_backend(name, reference, device=device, dtype=dtype, example=example)
    module = VARIANTS[variant].from_module(reference).to(device=device, dtype=dtype).eval()
    return Backend(name, module, module, channels_last_input=True)


if __name__ == "__main__":
    sys.exit(main())
