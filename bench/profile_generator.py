"""Where a backend's time goes: one profiled forward, kernels grouped by name, layout copies counted.

    python -m bench.profile_generator --backend fast --size 256 --batch 16 --dtype bf16 [--trace trace.json]

Prints the top kernels (CUDA time on a GPU, CPU time otherwise) and how many copy/contiguous/pad kernels ran:
the layout copies that FastGenerator exists to avoid. For issue-style tuning notes: run it before and after
a change, on the same machine.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench.fcg_matrix import blocks_for
from fastcyclegan import Generator
from fastcyclegan.devices import default_device
from fastcyclegan.harness.backends import BACKENDS, DTYPES, build_backend
from fastcyclegan.harness.measure import synchronize

LAYOUT_WORDS = ("copy", "contiguous", "pad", "nchwtonhwc", "nhwctonchw", "nchw2nhwc", "nhwc2nchw")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="fast", choices=BACKENDS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--trace", help="also write a Chrome trace here")
    args = parser.parse_args(argv)

    device = default_device()
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    reference = Generator(blocks_for(args.size), ngf=args.ngf).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    backend = build_backend(args.backend, reference, device=device, dtype=DTYPES[args.dtype], example=x)
    inp = backend.prepare(x.to(DTYPES[args.dtype]))
    with torch.inference_mode():
        for _ in range(3):  # compile and warm up outside the profile
            backend.run(inp)
        synchronize(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            backend.run(inp)
            synchronize(device)
    if args.trace:
        prof.export_chrome_trace(args.trace)

    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        us = event.device_time if cuda else event.cpu_time
        is_kernel = event.device_type == torch.autograd.DeviceType.CUDA if cuda else not event.cpu_parent
        if is_kernel and us > 0:
            totals[event.name][0] += us
            totals[event.name][1] += 1
    total = sum(t for t, _ in totals.values()) or 1.0
    unit = "CUDA" if cuda else "CPU"
    print(
        f"{args.backend} {args.size}x{args.size} batch {args.batch} {args.dtype} on {device}: "
        f"{total / 1e3:.2f} ms of {unit} time in {sum(n for _, n in totals.values())} kernels"
    )
    for name, (us, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{100 * us / total:6.1f}%  {us / 1e3:8.3f} ms  x{count:<4d} {name[:110]}")
    layout = {n: c for n, (_, c) in totals.items() if any(w in n.lower() for w in LAYOUT_WORDS)}
    print(
        f"layout/pad kernels: {sum(layout.values())} launches"
        + "".join(f"\n  x{c:<4d} {n[:110]}" for n, c in sorted(layout.items(), key=lambda kv: -kv[1]))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
