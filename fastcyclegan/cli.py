"""Command line: `fastcyclegan report ...` (also `python -m fastcyclegan report ...`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _report(args) -> int:
    from .report import ReportError, find_result_files, report

    try:
        paths = []
        for source in args.sources or [Path(".benchmarks")]:
            paths += [source] if source.is_file() else find_result_files(source)
        text, problems = report(paths, args.csv, args.markdown, args.plot)
    except ReportError as err:
        print(f"fastcyclegan report: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"fastcyclegan report: skipped {problem}", file=sys.stderr)
    if args.print or not (args.csv or args.markdown or args.plot):
        print(text, end="")
    for label, path in (("CSV", args.csv), ("markdown", args.markdown), ("plot", args.plot)):
        if path and Path(path).exists():
            print(f"wrote {label}: {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcyclegan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="benchmark JSON -> CSV / markdown / plot comparison tables")
    rep.add_argument("sources", nargs="*", type=Path,
                     help="pytest-benchmark storage folders (newest run per machine) or JSON files "
                          "(default: .benchmarks)")  # fmt: skip
    rep.add_argument("--csv", type=Path, help="long-form CSV, one row per (device, backend, size, batch, dtype)")
    rep.add_argument("--markdown", type=Path, help="markdown table, one column per backend")
    rep.add_argument("--plot", type=Path, help="bar chart PNG (needs matplotlib: the `plot` extra)")
    rep.add_argument("--print", action="store_true", help="also print the markdown table")
    rep.set_defaults(func=_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
