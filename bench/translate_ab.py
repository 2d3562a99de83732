"""`fastcyclegan translate` with one backend against another, alternating whole runs (decode workers, the
model, the PNG writers: what a user runs), optionally beside busy PyTorch processes (bench/fcg_busy.py).

    python -m bench.translate_ab --images 26 --size 128 --batch-size 16 --runs 3 --busy 2 [--backends eager,fast]

Makes that many synthetic photos (smooth gradients and noise, PNG) and a random-weight 6-block generator
checkpoint in a temporary folder, then runs `python -m fastcyclegan translate` into a fresh output folder
per run, timing each process from start to exit, and prints each backend's median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.fcg_busy import busy_processes
from fastcyclegan import Generator


def _photos(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)
    for i in range(count):
        base = np.stack([np.outer(ramp, ramp), np.outer(ramp[::-1], ramp), np.outer(ramp, ramp[::-1])], axis=-1)
        pixels = np.clip(base * 200 + rng.normal(0, 20, (size, size, 3)) + i, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i:03d}.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="eager,fast")
    parser.add_argument("--images", type=int, default=26)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="busy PyTorch processes beside the runs")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "in").mkdir()
        _photos(root / "in", args.images, args.size)
        torch.manual_seed(0)
        torch.save(Generator(6).state_dict(), root / "g.pth")
        with busy_processes(args.busy):
            for run in range(args.runs):
                for name in names:
                    out = root / f"out-{name}-{run}"
                    command = [sys.executable, "-m", "fastcyclegan", "translate", str(root / "g.pth"), str(root / "in")]
                    command += [str(out), "--size", str(args.size), "--batch-size", str(args.batch_size)]
                    command += ["--backend", name, "--device", "cpu", "--quiet"]
                    start = time.perf_counter()
                    done = subprocess.run(command, capture_output=True, text=True)
                    seconds[name].append(time.perf_counter() - start)
                    if done.returncode != 0 or len(list(out.iterdir())) != args.images:
                        print(f"{name} run {run} failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
                        return 1
    print(
        f"translate: {args.images} photos, {args.size}x{args.size}, batch {args.batch_size}, {args.runs} alternating "
        f"runs, {args.busy} busy PyTorch processes beside (process start to exit):"
    )
    first = statistics.median(seconds[names[0]])
    for name in names:
        median = statistics.median(seconds[name])
        runs = ", ".join(f"{s:.1f}" for s in seconds[name])
        print(f"  --backend {name:14s} median {median:6.2f} s ({median / first:.2f}x)   runs: {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
