"""Interleaved A/B timing of generator backends on one device: the fair comparison on a noisy machine.

    python bench/ab.py --backends eager,fast --size 256 --batch 8 --dtype fp32 --rounds 7 [--json out.json]
    python bench/ab.py --backends fast,fast:stem_channels=8,fast:head_channels=8+stem_channels=8 --dtype bf16

A backend name may carry attributes to set on its module after it is built (`name:attr=int+attr=int`):
the A/B of a FastGenerator candidate that is off by default (stem_channels, head_channels).

Each round calls every backend once, in turn, on the same input (after a warm-up call each, compile
included), so slow drift of the machine (other processes, clocks) hits all of them alike; the table gives
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
from fcg_matrix import blocks_for

from fastcyclegan import Generator
from fastcyclegan.backends import BACKENDS, DTYPES, build_backend
from fastcyclegan.measure import device_facts, synchronize


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = ", ".join(BACKENDS)
    parser.add_argument("--backends", default="eager,fast", help=f"comma list of {choices} (or name:attr=int+attr=int)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--json", help="also write the timings here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    if not names or args.rounds < 1 or args.batch < 1:
        parser.error("need at least one backend, --rounds >= 1 and --batch >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    reference = Generator(blocks_for(args.size), ngf=args.ngf).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    runs = {}
    for name in names:
        base, settings = _variant(name, parser)
        backend = build_backend(base, reference, device=device, dtype=DTYPES[args.dtype], example=x)
        for attr, value in settings.items():
            if not hasattr(backend.module, attr):
                parser.error(f"{name}: {type(backend.module).__name__} has no attribute {attr!r}")
            setattr(backend.module, attr, value)
        inp = backend.prepare(x.to(DTYPES[args.dtype]))
        runs[name] = (backend, inp)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for backend, inp in runs.values():
            backend.run(inp)  # compile and warm up outside the timed rounds
        synchronize(device)
        for _ in range(args.rounds):
            for name, (backend, inp) in runs.items():
                start = time.perf_counter()
                backend.run(inp)
                synchronize(device)
                seconds[name].append(time.perf_counter() - start)
    first = statistics.median(seconds[names[0]])
    facts = device_facts(device)
    print(f"{facts['device']}, torch {facts['torch']}, {args.size}x{args.size} batch {args.batch} {args.dtype}, "
          f"{args.rounds} interleaved rounds:")  # fmt: skip
    for name in names:
        median = statistics.median(seconds[name])
        print(f"  {name:36s} {median * 1e3:10.1f} ms  {args.batch / median:8.2f} img/s  {median / first:5.2f}x time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": facts, "seconds": seconds}, f, indent=1)
    return 0


def _variant(name: str, parser) -> tuple[str, dict[str, int]]:
    """'fast:stem_channels=8+head_channels=8' -> ('fast', {'stem_channels': 8, 'head_channels': 8})."""
    base, _, rest = name.partition(":")
    settings = {}
    for item in filter(None, rest.split("+")):
        attr, _, value = item.partition("=")
        if not value.isdigit():
            parser.error(f"{name}: expected name:attr=int+attr=int, got {item!r}")
        settings[attr] = int(value)
    if base not in BACKENDS:
        parser.error(f"{name}: unknown backend {base!r}; expected one of {', '.join(BACKENDS)}")
    return base, settings


if __name__ == "__main__":
    sys.exit(main())
