"""Command line: `fastcyclegan translate|export|build-kernel|report ...` (also `python -m fastcyclegan`)."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
from pathlib import Path

from . import stopping

# the modules each command needs beyond torch, and the extra that installs them
_NEEDS = {
    "report": ("bench", ("pandas",)),
    "translate": ("images", ("PIL",)),
    "export": ("onnx", ("onnx", "onnxscript")),
}


def missing_extra(command: str) -> str | None:
    """One line naming the extra to install when a module `command` needs is missing, else None."""
    if command not in _NEEDS:
        return None
    extra, modules = _NEEDS[command]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            return f"fastcyclegan {command} needs {module}, which is not installed: pip install 'fastcyclegan[{extra}]'"
    return None


def _report(args) -> int:
    from .harness.report import ReportError, find_result_files, report

    try:
        paths = []
        for source in args.sources or [Path(".benchmarks")]:
            # a folder is a storage (its newest run per machine); anything else that exists is read as a
            # file, or named as one that cannot be (a FIFO, a device)
            paths += find_result_files(source) if source.is_dir() or not os.path.lexists(source) else [source]
        written: list = []
        text, problems = report(paths, args.csv, args.markdown, args.plot, written)
    except ReportError as err:
        print(f"fastcyclegan report: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"fastcyclegan report: skipped {problem}", file=sys.stderr)
    if args.print or not (args.csv or args.markdown or args.plot):
        print(text, end="")
    for label, path in written:
        print(f"wrote {label}: {path}", file=sys.stderr)
    if problems:
        print(f"fastcyclegan report: {len(problems)} file(s) or result(s) skipped", file=sys.stderr)
        return 1
    return 0


def _translate(args) -> int:
    from .distributed import Job, JobFailed

    try:
        job = Job.from_env()
    except JobFailed as err:
        print(f"fastcyclegan translate: {err}", file=sys.stderr)
        return 2
    try:
        return _translate_alone(args) if job is None else _translate_in_job(args, job)
    except KeyboardInterrupt:
        return _interrupted()


def _export(args) -> int:
    output, checkpoint = args.output, args.checkpoint
    if str(output) == "-":
        print(
            "fastcyclegan export: the output is a file, not standard output: give its path (./- for a file named -)",
            file=sys.stderr,
        )
        return 2
    if output.exists() and checkpoint.exists() and os.path.samefile(output, checkpoint):
        print(
            f"fastcyclegan export: the output {output} is the checkpoint itself: give the ONNX file another name",
            file=sys.stderr,
        )
        return 2
    try:
        from .export import export_onnx
        from .loader import load_generator

        generator = load_generator(checkpoint, key=args.key)
        result = export_onnx(generator, output, dtype=args.dtype, opset=args.opset)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        print(f"fastcyclegan export: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastcyclegan export: interrupted; nothing written ({output} is as it was)", file=sys.stderr)
        return 130
    print(result.line())
    return 0


def _build_kernel(args) -> int:
    from .norm_cpu_build import KernelUnavailable, build

    try:
        path = build(args.cache_dir)
    except KernelUnavailable as err:
        print(f"fastcyclegan build-kernel: {err}", file=sys.stderr)
        return 2
    print(f"the CPU norm kernel is built: {path}")
    return 0


def _interrupted() -> int:
    print("fastcyclegan translate: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
    return 130


def _options(args) -> dict:
    return dict(
        size=args.size,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        backend=args.backend,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=not args.quiet,
        key=args.key,
    )


def _translate_alone(args) -> int:
    from .translate import translate

    try:
        summary = translate(args.checkpoint, args.input_dir, args.output_dir, **_options(args))
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"fastcyclegan translate: {err}", file=sys.stderr)
        return 2
    if summary.interrupted:
        return _interrupted()
    for path, why in summary.failed:
        print(f"failed {path}: {why}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.failed else 0


def _translate_in_job(args, job) -> int:
    """One process of a torchrun job: its shard of the inputs; rank 0 prints the job's summary. Every
    process exits with the job's status (0, 1 some inputs failed, 2 the job could not run)."""
    from .distributed import JobFailed
    from .translate import job_line, plan_translation, run_translation

    try:
        job.start(args.dist_timeout)
    except (RuntimeError, ValueError) as err:
        print(f"fastcyclegan translate: rank {job.rank} could not join the job: {err}", file=sys.stderr)
        return 2
    try:
        plan, problem = None, None
        options = _options(args) | dict(device=job.device(args.device), progress=not args.quiet and job.rank == 0)
        try:
            plan = plan_translation(
                args.checkpoint, args.input_dir, args.output_dir, shard=(job.rank, job.world_size), **options
            )
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            problem = str(err)
        job.agree(problem)  # all start, or none does
        try:
            result = run_translation(plan)
        except Exception as err:  # reported by rank 0, never left for the others to wait on
            result = f"{type(err).__name__}: {err}"
        summaries = job.finish(result)
    except JobFailed as err:
        if job.rank == 0 or "lost contact" in str(err):
            print(f"fastcyclegan translate: the job failed: {err}", file=sys.stderr)
        return 2
    finally:
        job.close()
    broken = [f"rank {rank}: {s}" for rank, s in enumerate(summaries) if isinstance(s, str)]
    if not broken and any(s.interrupted for s in summaries):
        return _interrupted() if job.rank == 0 else 130
    if job.rank == 0:
        for summary in summaries:
            for path, why in [] if isinstance(summary, str) else summary.failed:
                print(f"failed {path}: {why}", file=sys.stderr)
        for line in broken:
            print(f"fastcyclegan translate: {line}", file=sys.stderr)
        print(job_line(summaries))
    status = 2 if broken else 1 if any(s.failed for s in summaries) else 0
    if status and job.rank == 0:  # torchrun's own exit status is 1 whenever a process exits non-zero
        print(f"fastcyclegan translate: the job's exit status is {status}", file=sys.stderr)
    return status


_MAX_TIMEOUT_S = 7 * 24 * 3600.0


def _seconds(text: str) -> float:
    """A timeout: a finite number of seconds > 0 and at most a week (the process group's timer overflows far
    beyond: 1e30 and inf crashed every rank)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= _MAX_TIMEOUT_S:  # NaN fails every comparison
        raise argparse.ArgumentTypeError(
            f"expected seconds, a number > 0 and at most {_MAX_TIMEOUT_S:.0f}; got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="fastcyclegan", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastcyclegan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "report",
        help="benchmark JSON -> CSV / markdown / plot comparison tables",
        epilog="exit status: 0 all read and written, 1 written but some files or results "
        "skipped (named), 2 nothing readable or an output that cannot be written",
    )
    rep.add_argument(
        "sources",
        nargs="*",
        type=Path,
        help="pytest-benchmark storage folders (newest run per machine) or JSON files (default: .benchmarks)",
    )
    rep.add_argument("--csv", type=Path, help="long-form CSV, one row per result; - for standard output")
    rep.add_argument("--markdown", type=Path, help="markdown table, one column per backend")
    rep.add_argument("--plot", type=Path, help="bar chart, .png, .svg or .pdf (needs matplotlib: the `bench` extra)")
    rep.add_argument("--print", action="store_true", help="also print the markdown table")
    rep.set_defaults(func=_report)

    from .variants import VARIANTS

    tr = sub.add_parser(
        "translate",
        help="run a generator checkpoint over a folder of images",
        epilog="exit status: 0 every input translated or already there, 1 some inputs failed "
        "(each named), 2 nothing done (bad arguments, checkpoint or output folder), "
        "130 interrupted",
    )
    tr.add_argument("checkpoint", type=Path, help="a ResNet generator checkpoint (public layout or trained elsewhere)")
    tr.add_argument("input_dir", type=Path, help="folder of PNG/JPEG images (searched recursively)")
    tr.add_argument("output_dir", type=Path, help="PNGs are written here under the inputs' relative names")
    tr.add_argument("--size", type=int, default=256, help="images are resized to size x size (default 256)")
    tr.add_argument("--batch-size", type=int, default=16, help="images per forward (default 16)")
    tr.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="compute dtype (auto: bf16 on CUDA, fp32 on CPU)",
    )
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (auto: cuda when available)")
    tr.add_argument(
        "--backend",
        default="fast",
        choices=VARIANTS,  # the PyTorch ways to run it (fastcyclegan.variants)
        help="generator backend (default fast)",
    )
    tr.add_argument("--key", default=None, help="which state dict of a checkpoint that holds several (netG_A, a/b)")
    tr.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: skip them)")
    tr.add_argument("--workers", type=int, default=None, help="image decoding processes (default min(4, CPUs))")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument(
        "--dist-timeout",
        type=_seconds,
        default=600.0,
        help="under torchrun: seconds a process waits at the start for the others to join and agree before "
        "the job fails (default 600); at the end it waits for slower processes as long as they live",
    )
    tr.set_defaults(func=_translate)

    ex = sub.add_parser(
        "export",
        help="write a generator checkpoint as an ONNX file (for ONNX Runtime, OpenVINO, TensorRT)",
        epilog="exit status: 0 written and checked, 2 nothing written (bad checkpoint, argument or check)",
    )
    ex.add_argument("checkpoint", type=Path, help="a ResNet generator checkpoint (public layout or trained elsewhere)")
    ex.add_argument("output", type=Path, help="the ONNX file to write (replaced if it exists)")
    ex.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="the file's precision (default fp32)")
    ex.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 or newer (default 18)")
    ex.add_argument("--key", default=None, help="which state dict of a checkpoint that holds several (netG_A, a/b)")
    ex.set_defaults(func=_export)

    bk = sub.add_parser(
        "build-kernel",
        help="compile the CPU norm kernel now (images, read-only deployments) instead of at the first CPU norm",
        epilog="exit status: 0 built (or already there), 2 it cannot be built here (the reason named); the "
        "modules then run their CPU norms on ATen",
    )
    bk.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where to put it (default: $FASTCYCLEGAN_CACHE_DIR, else ~/.cache/fastcyclegan); the process that "
        "runs the model must find it there (the same variable)",
    )
    bk.set_defaults(func=_build_kernel)
    return parser


# iterations an idle OpenMP thread spins before it sleeps (libgomp's default without OMP_WAIT_POLICY: 300,000)
OPENMP_SPIN = "2000"


def short_openmp_spin() -> None:
    """Lets PyTorch's OpenMP threads (libgomp) spin OPENMP_SPIN iterations before sleeping, not 300,000, unless
    the user chose (GOMP_SPINCOUNT or OMP_WAIT_POLICY set) or torch has already loaded libgomp, which reads it
    once. Spinning threads beside other busy processes kept taking the cores from the threads they waited
    for: FastGenerator at 128x128 fp32 beside 2 busy PyTorch processes took 506-693 ms a forward against
    162-176 ms so; alone, the same within noise (2-core EPYC; bench/results/TUNING.md). Decoding processes
    inherit it."""
    if "torch" in sys.modules or {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):
        return
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN


def main(argv=None) -> int:
    # Ctrl-C and SIGTERM (torchrun stopping a job, GNU timeout, docker stop, a scheduler's preemption) stop a
    # translate run after the batch in hand: its decoding processes shut down, writes in progress finish,
    # finished outputs stay; a second one interrupts at once. Installed before torch loads (it takes seconds).
    if (sys.argv[1:] if argv is None else argv)[:1] == ["translate"]:
        signal.signal(signal.SIGINT, stopping.request_stop)
        signal.signal(signal.SIGTERM, stopping.request_stop)
        short_openmp_spin()
    try:
        args = build_parser().parse_args(argv)
        problem = missing_extra(args.command)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        return args.func(args)
    except KeyboardInterrupt:  # before a command's own handling (its imports take seconds): one line, not a traceback
        print("fastcyclegan: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
