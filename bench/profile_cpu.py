"""Where each CPU backend spends a forward, per layer kind, side by side: FastGenerator and torch.compile
(torch.profiler's top-level ops, each conv told apart by its input's shape, the C norm kernel's own time
recorded around its calls) and OpenVINO (its per-node performance counters, PERF_COUNT).

    python -m bench.profile_cpu --size 128 --batch 1 --dtype bf16 [--backends fast,compiled_frozen,openvino]

Prints one markdown table per backend (ms per forward, averaged over --calls profiled calls after warm-up)
and the total against the wall clock of the same calls; the part no op accounts for is Python and dispatch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.fcg_matrix import blocks_for
from fastcyclegan import Generator, norm_cpu
from fastcyclegan.harness.backends import DTYPES, build_backend, unavailable_reason


def _with_c_kernel_recorded():
    """norm_cpu's kernel calls inside a record_function, so the profile shows the C kernel's time (a ctypes call
    is no ATen op): each call `norm_cpu.forward_call` makes, for the call-by-call path and the recorded plan
    (`fastcyclegan.cpu_plan`) alike. Only in this script: the product pays nothing for it."""
    make = norm_cpu.forward_call

    def recorded_call(*args, **kwargs):
        call = make(*args, **kwargs)

        def recorded(x):
            with record_function("fastcyclegan C norm kernel"):
                return call(x)

        return recorded

    norm_cpu.forward_call = recorded_call


def _layer(name: str, shapes) -> str:
    """A row label: the op, and for convolutions the input's channels and size (which layer it is)."""
    if "conv" in name.lower() and shapes and shapes[0]:
        n, c, h, w = (list(shapes[0]) + [0, 0, 0, 0])[:4]
        return f"{name} {c}x{h}x{w}"
    return name


def profile_torch(run, inp, calls: int) -> tuple[dict, float]:
    with torch.inference_mode():
        for _ in range(3):
            run(inp)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            for _ in range(calls):
                run(inp)
            wall = (time.perf_counter() - start) / calls
    rows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if _wrapper(event.name):
            if event.name.startswith(_GRAPH):  # what its ops leave: inductor's fused C++ kernels, its own code
                rows["inductor's C++ kernels and graph code"][0] += _self_ms(event, prof) / calls
                rows["inductor's C++ kernels and graph code"][1] += 1 / calls
            continue
        if _under_wrappers_only(event):
            key = _layer(event.name, event.input_shapes)
            rows[key][0] += event.cpu_time_total / 1e3 / calls
            rows[key][1] += 1 / calls
    return rows, wall * 1e3


_GRAPH = "## Call CompiledFxGraph"
_WRAPPERS = ("Torch-Compiled Region", _GRAPH, "TorchDynamo", "AOTDispatcher", "Pregraph", "fastcyclegan C norm")


def _wrapper(name: str) -> bool:
    return name.startswith(_WRAPPERS) and not name.startswith("fastcyclegan C norm")


def _under_wrappers_only(event) -> bool:
    """A top-level op: no ancestor but torch.compile's wrappers (and not inside the C kernel's record)."""
    parent = event.cpu_parent
    while parent is not None:
        if not _wrapper(parent.name):
            return False
        parent = parent.cpu_parent
    return True


def _self_ms(event, prof) -> float:
    children = [e for e in prof.events() if e.cpu_parent is event]
    return (event.cpu_time_total - sum(c.cpu_time_total for c in children)) / 1e3


def profile_openvino(reference, dtype, x, calls: int) -> tuple[dict, float]:
    import openvino

    from fastcyclegan.export import onnx_model

    model, _ = onnx_model(reference, dtype="fp32")
    core = openvino.Core()
    precision = {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
        "PERF_COUNT": "YES",
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generator.onnx"
        path.write_bytes(model.SerializeToString())
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    data = x.float().numpy()
    for _ in range(3):
        request.infer([data])
    rows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    wall = 0.0
    for _ in range(calls):
        start = time.perf_counter()
        request.infer([data])
        wall += time.perf_counter() - start
        for info in request.get_profiling_info():
            ms = info.real_time.total_seconds() * 1e3
            if ms > 0:
                rows[f"{info.node_type} ({info.exec_type})"][0] += ms / calls
                rows[f"{info.node_type} ({info.exec_type})"][1] += 1 / calls
    return rows, wall / calls * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="fast,compiled,compiled_frozen,openvino")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args(argv)
    device, dtype = torch.device("cpu"), DTYPES[args.dtype]
    torch.manual_seed(0)
    reference = Generator(blocks_for(args.size)).eval()
    x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    _with_c_kernel_recorded()
    for name in [n.strip() for n in args.backends.split(",") if n.strip()]:
        reason = unavailable_reason(name, device, dtype=dtype)
        if reason:
            print(f"\n{name}: not profiled ({reason})")
            continue
        if name == "openvino":
            rows, wall = profile_openvino(reference, dtype, x, args.calls)
        else:
            torch._dynamo.reset()
            backend = build_backend(name, reference, device=device, dtype=dtype)
            rows, wall = profile_torch(backend.run, backend.prepare(x.to(dtype)), args.calls)
        counted = sum(ms for ms, _ in rows.values())
        print(
            f"\n{name}, {args.size}x{args.size} batch {args.batch} {args.dtype}, {torch.get_num_threads()} threads: "
            f"{wall:.2f} ms a forward (wall clock, profiled), {counted:.2f} ms in the rows' ops\n"
        )
        print("| op (conv: input CxHxW) | calls | ms | % |\n|---|---|---|---|")
        for label, (ms, count) in sorted(rows.items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(f"| {label[:90]} | {count:.0f} | {ms:.3f} | {100 * ms / wall:.1f} |")
        rest = sorted(rows.items(), key=lambda kv: -kv[1][0])[args.top :]
        if rest:
            calls_left, ms_left = sum(c for _, (_, c) in rest), sum(m for _, (m, _) in rest)
            print(f"| {len(rest)} other ops | {calls_left:.0f} | {ms_left:.3f} | {100 * ms_left / wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
