"""Benchmark JSON (pytest-benchmark) -> pandas -> CSV, markdown and a bar chart of speedups.

Reads the files that `pytest bench --benchmark-autosave` writes (STORAGE/<machine>/<NNNN>_*.json; the newest
per machine by default) or files named explicitly (`--benchmark-json` output). Only results of this project's
suites are read; a file that cannot be read, or holds no such results, is named in a problem line and the
other files are still reported.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import sys
from pathlib import Path

import pandas as pd

from ..atomic import atomic_file
from .measure import GENERATOR_SUITE, KERNEL_SUITE, UNTIMED_KEY, UNTIMED_STATUSES

KEY = ["machine", "device", "mode", "size", "batch", "dtype", "norm"]
CSV_COLUMNS = (
    KEY[:2]
    + ["backend"]
    + KEY[2:]
    + [
        "img_per_s",
        "ms_per_batch",
        "compile_s",
        "parity_err",
        "speedup_vs_eager",
        "num_blocks",
        "ngf",
        "compile_mode",
        "cudnn_benchmark",
        "parity_ref_err",
        "peak_mem_mb",
        "tflop_s",
        "compute_fraction",
        "copy_gb_s",
        "matmul_bf16_tflop_s",
        "matmul_fp32_tflop_s",
        "torch",
        "triton",
        "cuda",
        "driver",
        "datetime",
        "source",
        "status",  # timed, or why not: failed parity (a peer's result), skipped, failed
        "reason",
    ]
)
KERNEL_KEY = ["machine", "device", "variant", "shape", "dtype"]
KERNEL_COLUMNS = [
    "machine",
    "device",
    "variant",
    "impl",
    "shape",
    "dtype",
    "gb_s",
    "copy_fraction",
    "us",
    "parity_err",
    "timing",
    "copy_gb_s",
    "torch",
    "triton",
    "datetime",
    "source",
]


class ReportError(Exception):
    """Nothing could be reported; the message says which folder or files and why."""


def find_result_files(storage: Path) -> list[Path]:
    """The newest autosaved JSON of every machine folder under `storage` (and JSON files directly in it)."""
    storage = Path(storage)
    if not storage.is_dir():
        raise ReportError(
            f"benchmark storage '{storage}' does not exist: run `pytest bench --benchmark-autosave` first"
        )
    files = sorted(storage.glob("*.json"))
    for folder in sorted(p for p in storage.iterdir() if p.is_dir()):
        runs = sorted(folder.glob("*.json"))
        if runs:
            files.append(runs[-1])  # autosave names start with a run counter: the last is the newest
    if not files:
        raise ReportError(f"no benchmark JSON files under '{storage}': run `pytest bench --benchmark-autosave` first")
    return files


# what a timed row of each suite must hold to be reported: field -> accepted types
_REQUIRED = {
    GENERATOR_SUITE: {
        "backend": str,
        "device": str,
        "size": int,
        "batch": int,
        "dtype": str,
        "img_per_s": (int, float),
        "ms_per_batch": (int, float),
    },
    "untimed": {"backend": str, "device": str, "size": int, "batch": int, "dtype": str, "status": str, "reason": str},
    KERNEL_SUITE: {
        "variant": str,
        "device": str,
        "shape": str,
        "dtype": str,
        "gb_s": (int, float),
        "copy_fraction": (int, float),
        "us": (int, float),
    },
}


_MAX_INT = 1 << 53  # integers beyond this are no sizes or batches (and 10**400 overflows every float)


def _row_problem(info: dict, kind: str | None = None) -> str | None:
    """Why a timed result (or an untimed case: kind "untimed") cannot be reported (a field missing, of the
    wrong type, not finite, not > 0 where it is a size, a batch or a rate), or None."""
    if kind == "untimed" and info.get("status") not in UNTIMED_STATUSES:
        return f"'status' is {str(info.get('status'))[:40]!r}, expected one of {', '.join(UNTIMED_STATUSES)}"
    for field, kinds in _REQUIRED[kind or info["suite"]].items():
        value = info.get(field)
        if value is None:
            return f"no '{field}'"
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"'{field}' is {type(value).__name__} {str(value)[:40]!r}, expected {_kind_names(kinds)}"
        if isinstance(value, int) and not 0 < value < _MAX_INT:
            return f"'{field}' is {str(value)[:40]}, expected a whole number from 1 to 2^53"
        if isinstance(value, float) and not (math.isfinite(value) and value > 0):
            return f"'{field}' is {value!r}, expected a finite number > 0"
    for field, value in info.items():  # the other numbers are computed with too: finite, within float range
        if isinstance(value, float) and not math.isfinite(value):
            return f"'{field}' is {value!r}, expected a finite number"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _MAX_INT:
            return f"'{field}' is {str(value)[:40]}..., expected a number of at most 2^53"
    return None


def _kind_names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join("a number" if k in (int, float) else "text" if k is str else k.__name__ for k in kinds)


def _machine(data: dict, path: Path) -> str:
    """Which machine ran the file: pytest-benchmark's machine_info node name, else the storage folder
    (autosave writes one folder per machine), so two machines with one device name stay apart."""
    info = data.get("machine_info")
    node = info.get("node") if isinstance(info, dict) else None
    return node if isinstance(node, str) and node else path.parent.name or "?"


MAX_FILE_BYTES = 256 << 20  # a results file larger than this is no benchmark run of ours


def _read_bounded(path: Path) -> str:
    """The text of a regular file of at most MAX_FILE_BYTES; ReportError for anything else (a FIFO would
    block the read forever, /dev/zero behind a link would never end)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ReportError("not a regular file (a FIFO, a device or a folder): not read")
    if info.st_size > MAX_FILE_BYTES:
        raise ReportError(f"{info.st_size:,} bytes, over the {MAX_FILE_BYTES:,} a results file may have: not read")
    with open(path, "rb") as f:
        return f.read(MAX_FILE_BYTES + 1).decode()


def read_results(paths) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(generator rows, kernel rows, problems), one row per timed benchmark of our suites. A file or a row
    that cannot be read is named in `problems` and skipped; the rest is still reported."""
    rows: dict[str, list[dict]] = {GENERATOR_SUITE: [], KERNEL_SUITE: []}
    problems = []
    for path in map(Path, paths):
        try:
            data = json.loads(_read_bounded(path))
        except ReportError as err:
            problems.append(f"{path}: {err}")
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            why = "nested too deeply" if isinstance(err, RecursionError) else err
            problems.append(f"{path}: cannot be read as JSON ({why})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            problems.append(f"{path}: not a pytest-benchmark results file (no 'benchmarks' list)")
            continue
        found, machine = 0, _machine(data, path)
        for bench in data["benchmarks"]:
            info = bench.get("extra_info") if isinstance(bench, dict) else None
            if not isinstance(info, dict) or info.get("suite") not in rows:
                continue
            found += 1
            if "us" not in info and "img_per_s" not in info:  # a --benchmark-disable run: nothing timed
                continue
            why = _row_problem(info)
            if why:
                problems.append(f"{path}: result {str(bench.get('name'))[:80]!r} skipped: {why}")
                continue
            # files from before --fcg-norms / --fcg-mode: the paper's norm, inference
            norm = info.get("norm") if isinstance(info.get("norm"), str) else "plain"
            mode = info.get("mode") if isinstance(info.get("mode"), str) else "infer"
            rows[info["suite"]].append(
                {
                    **info,
                    "norm": norm,
                    "mode": mode,
                    "machine": machine,
                    "datetime": data.get("datetime"),
                    "source": str(path),
                    "status": "timed",
                }
            )
        listed = data.get(UNTIMED_KEY, [])
        for case in listed if isinstance(listed, list) else []:
            why = _row_problem(case, "untimed") if isinstance(case, dict) else "not a record"
            if why:
                problems.append(f"{path}: untimed case {str(case)[:80]!r} skipped: {why}")
                continue
            found += 1
            norm = case.get("norm") if isinstance(case.get("norm"), str) else "plain"
            mode = case.get("mode") if isinstance(case.get("mode"), str) else "infer"
            row = {**case, "norm": norm, "mode": mode, "machine": machine, "datetime": data.get("datetime")}
            rows[GENERATOR_SUITE].append(row | {"suite": GENERATOR_SUITE, "source": str(path)})
        if not found:
            problems.append(f"{path}: holds no fastcyclegan benchmark results (a file from another suite?)")
    return pd.DataFrame(rows[GENERATOR_SUITE]), pd.DataFrame(rows[KERNEL_SUITE]), problems


def generator_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Long-form rows with speedup against `eager` at the same device, size, batch and dtype."""
    if raw.empty:
        return pd.DataFrame(columns=CSV_COLUMNS)
    df = raw.drop_duplicates(subset=KEY + ["backend"], keep="last").copy()
    for column in ("img_per_s", "tflop_s"):  # absent where no case was timed
        df[column] = pd.to_numeric(df[column], errors="coerce") if column in df else math.nan
    timed_eager = df[(df.backend == "eager") & df.img_per_s.notna()]
    eager = timed_eager.set_index(KEY)["img_per_s"].rename("eager_img_per_s")
    df = df.join(eager, on=KEY)
    df["speedup_vs_eager"] = df["img_per_s"] / df["eager_img_per_s"]
    ceiling = df["dtype"].map({"fp32": "matmul_fp32_tflop_s"}).fillna("matmul_bf16_tflop_s")
    peak = [row.get(col) for (_, row), col in zip(df.iterrows(), ceiling)]
    df["compute_fraction"] = df["tflop_s"] / pd.to_numeric(pd.Series(peak, index=df.index), errors="coerce")
    for column in CSV_COLUMNS:
        if column not in df:
            df[column] = None
    return df[CSV_COLUMNS].sort_values(KEY + ["backend"]).reset_index(drop=True)


def kernel_table(raw: pd.DataFrame) -> pd.DataFrame:
    if raw.empty:
        return pd.DataFrame(columns=KERNEL_COLUMNS)
    df = raw.drop_duplicates(subset=KERNEL_KEY, keep="last").copy()
    for column in KERNEL_COLUMNS:
        if column not in df:
            df[column] = None
    return df[KERNEL_COLUMNS].sort_values(["machine", "device", "dtype", "shape", "variant"]).reset_index(drop=True)


def _cell(value) -> str:
    """Text for one markdown table cell: a `|` would split the cell and a newline end the table."""
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _markdown_grid(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _provenance(df: pd.DataFrame) -> list[str]:
    seen = df.drop_duplicates(subset=["machine", "device", "torch", "triton", "source"])
    return [
        _cell(
            f"- {r.device} on {r.machine}: torch {r.torch}, triton {r.triton}, run {str(r.datetime)[:19]}, "
            f"file `{r.source}`"
        )
        for r in seen.itertuples()
    ]


def _device_labels(df: pd.DataFrame) -> dict:
    """(machine, device) -> the device's name, with its machine's when several machines are reported."""
    pairs = df[["machine", "device"]].drop_duplicates().itertuples(index=False)
    several = df.machine.nunique() > 1
    return {(m, d): f"{d} ({m})" if several else str(d) for m, d in pairs}


def to_markdown(gen: pd.DataFrame, kernel: pd.DataFrame | None = None) -> str:
    """One row per (machine, device, mode, size, batch, dtype, norm), one column per backend: img/s (a
    training step's images per second in train mode) and speedup against eager. The machine is named only
    when there are several, the mode only when one is train, the norm only when one is affine."""
    parts = []
    if not gen.empty:
        backends = _backend_order(gen.backend.unique())
        labels, with_norm = _device_labels(gen), bool((gen.norm != "plain").any())
        with_mode = bool((gen["mode"] != "infer").any())
        rows = []
        for key, group in gen.groupby(KEY, sort=True):
            by_backend = group.set_index("backend")
            cells = []
            for b in backends:
                if b not in by_backend.index:
                    cells.append("—")
                    continue
                r = by_backend.loc[b]
                if r.status != "timed":
                    cells.append(_untimed_cell(r))
                    continue
                speed = f" ({r.speedup_vs_eager:.2f}x)" if pd.notna(r.speedup_vs_eager) else ""
                cells.append(f"{r.img_per_s:,.1f}{speed}")
            machine, device, mode, size, batch, dtype, norm = key
            row = [labels[machine, device]] + ([mode] if with_mode else []) + [f"{size}x{size}", str(batch), str(dtype)]
            row += [norm] if with_norm else []
            rows.append(row + cells)
        parts.append("Images per second (speedup against eager at the same device, size, batch and dtype):\n")
        header = ["device"] + (["mode"] if with_mode else []) + ["size", "batch", "dtype"]
        header += ["norm"] if with_norm else []
        parts.append(_markdown_grid(header + backends, rows))
        untimed = gen[gen.status != "timed"]
        if not untimed.empty:
            parts.append("\nNot timed:")
            parts += [
                _cell(f"- {r.backend}, {r.size}x{r.size} batch {r.batch} {r.dtype} ({r.mode}): {r.status}: {r.reason}")
                for r in untimed.itertuples()
            ]
        parts.append("\n" + "\n".join(_provenance(gen[gen.status == "timed"])))
    if kernel is not None and not kernel.empty:
        variants = sorted(kernel.variant.unique(), key=lambda v: (v != "fused", v))
        labels, rows = _device_labels(kernel), []
        for (machine, device, shape, dtype), group in kernel.groupby(
            ["machine", "device", "shape", "dtype"], sort=True
        ):
            by = group.set_index("variant")
            cells = [
                f"{_gb(by.loc[v].gb_s)} ({100 * by.loc[v].copy_fraction:.0f}%)" if v in by.index else "—"
                for v in variants
            ]
            rows.append([labels[machine, device], shape, dtype] + cells)
        fused = kernel[kernel.variant == "fused"]
        how = (  # per device and dtype: a CPU runs fp32 in the C kernel and bf16 on ATen
            ", ".join(f"{d} {t}: {i}" for (d, t), i in fused.groupby(["device", "dtype"])["impl"].first().items())
            if "impl" in fused
            else ""
        )
        parts.append(
            "\nIN+ReLU GB/s (one read + one write; % of the device-to-device copy measured in the run)"
            + (f"; `fused` ran as {_cell(how)}" if how else "")
            + ":\n"
        )
        parts.append(_markdown_grid(["device", "shape", "dtype"] + variants, rows))
        parts.append("\n" + "\n".join(_provenance(kernel)))
    return "\n".join(parts) + "\n" if parts else "No timed results (was the run --benchmark-disable?).\n"


def _untimed_cell(r) -> str:
    """A table cell for a case that was not timed: a peer's parity failure with its error against eager's."""
    if r.status == "failed parity" and pd.notna(r.parity_err) and r.parity_ref_err:
        return f"failed parity ({r.parity_err / r.parity_ref_err:.1f}x error)"
    return str(r.status)


def _gb(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _backend_order(names) -> list[str]:
    from .backends import BACKENDS

    return sorted(names, key=lambda b: BACKENDS.index(b) if b in BACKENDS else len(BACKENDS))


# what one figure shows at most: more would make an unreadable (and, for 1,000 machines, 432,000-pixel) image
MAX_PANELS, MAX_GROUPS, MAX_LABEL = 6, 12, 60


def plot(gen: pd.DataFrame, path, fmt: str = "png") -> list[str]:
    """Speedup against eager, one panel per device (named once, in its title), one group of bars per
    (size, batch, dtype), one bar per backend, a line at 1x; each bar labelled with its speedup. At most
    MAX_PANELS devices and MAX_GROUPS groups each; returns a line for what was left out (the CSV and the
    markdown hold every result)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if gen.dropna(subset=["speedup_vs_eager"]).empty:
        return [f"{path}: plot not written, no result has an eager result of its case to compare with"]
    rows = gen[gen.speedup_vs_eager.notna() | (gen.status != "timed")].copy()
    labels = _device_labels(rows)
    rows["panel"] = [_short(labels[m, d]) for m, d in zip(rows.machine, rows.device)]
    devices = sorted(rows.panel.unique())
    left_out = []
    if len(devices) > MAX_PANELS:
        left_out.append(f"{len(devices) - MAX_PANELS} of {len(devices)} devices")
        devices = devices[:MAX_PANELS]
    backends = [b for b in _backend_order(rows[rows.panel.isin(devices)].backend.unique()) if b != "eager"]
    groups = {}
    for d in devices:
        panel = rows[rows.panel == d]
        table = panel.pivot(index=KEY[2:], columns="backend", values="speedup_vs_eager").astype(float)
        table.attrs["status"] = panel.pivot(index=KEY[2:], columns="backend", values="status")
        if len(table) > MAX_GROUPS:
            left_out.append(f"{len(table) - MAX_GROUPS} of {len(table)} cases of {d}")
            table = table.iloc[:MAX_GROUPS]
        groups[d] = table
    widest = max((len(g) for g in groups.values()), default=1)
    fig, axes = plt.subplots(len(devices), 1, figsize=(max(6.0, 1.6 * widest + 2), 3.6 * len(devices)), squeeze=False)
    width = 0.8 / max(1, len(backends))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    marked: set[str] = set()
    for ax, device in zip(axes[:, 0], devices):
        table = groups[device]
        positions = range(len(table))
        for k, backend in enumerate(backends):
            if backend not in table:
                continue
            xs = [p + (k - (len(backends) - 1) / 2) * width for p in positions]
            bars = ax.bar(xs, table[backend], width, label=backend, color=colors[k % len(colors)])
            ax.bar_label(
                bars, labels=[f"{v:.2f}" if pd.notna(v) else "" for v in table[backend]], fontsize=7, padding=1
            )
            statuses = table.attrs["status"][backend]
            for status, (marker, style) in _UNTIMED_MARKS.items():  # a mark where the bar would stand
                at = [x for x, st in zip(xs, statuses) if st == status]
                if at:
                    ax.scatter(at, [0.06] * len(at), marker=marker, s=40, zorder=3, **style)
                    marked.add(status)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ticks = [
            f"{size}x{size}, batch {batch}\n{dtype}"
            + (f", {norm}" if norm != "plain" else "")
            + (", train step" if mode == "train" else "")
            for mode, size, batch, dtype, norm in table.index
        ]
        ax.set_xticks(list(positions), ticks)
        ax.set_ylabel("speedup vs eager (x)")
        highest = table.max().max()
        ax.set_ylim(0, max(1.2, float(highest) if pd.notna(highest) else 1.2) * 1.4)  # room for the legend
        ax.set_title(device, fontsize=10)
    handles, names = axes[0, 0].get_legend_handles_labels()
    for status in [s for s in _UNTIMED_MARKS if s in marked]:  # "failed parity" and "skipped" look different
        marker, style = _UNTIMED_MARKS[status]
        handles.append(Line2D([], [], linestyle="", marker=marker, markersize=7, **_legend_style(style)))
        names.append(status)
    axes[0, 0].legend(handles, names, loc="upper left", fontsize=8, ncols=min(len(names), 5), frameon=False)
    # two short lines fit the narrowest figure (6 in); bbox_inches="tight" keeps every label inside the PNG
    fig.suptitle("fastcyclegan: generator throughput against eager PyTorch\n(higher is faster; dashed line: eager)")
    if left_out:
        fig.text(0.5, 0.0, _short("not shown (see the CSV): " + "; ".join(left_out), 140), ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format=fmt, bbox_inches="tight")
    plt.close(fig)
    return [f"{path}: the plot leaves out {'; '.join(left_out)} (the CSV and markdown have them)"] if left_out else []


# the mark of each kind of untimed case where its bar would stand: (marker, scatter style)
_UNTIMED_MARKS = {
    "failed parity": ("X", {"color": "tab:red"}),
    "skipped": ("o", {"facecolors": "none", "edgecolors": "grey"}),
    "failed": ("v", {"color": "black"}),
}


def _legend_style(style: dict) -> dict:
    """The scatter style as a Line2D's (the legend's proxy)."""
    if "color" in style:
        return {"color": style["color"]}
    return {"markerfacecolor": "none", "markeredgecolor": style["edgecolors"]}


def _short(text: str, limit: int = MAX_LABEL) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _superseded(raw: pd.DataFrame, key: list[str]) -> list[str]:
    """A line for each result that a later file's result of the same machine, device and case replaces
    (reported, never silent: two machines that share a node name need their files reported apart)."""
    if raw.empty:
        return []
    later = raw.drop_duplicates(subset=key, keep="last").set_index(key)["source"]
    dropped = raw[raw.duplicated(subset=key, keep="last")]
    return [
        f"{row.source}: result {' '.join(str(getattr(row, k)) for k in key)} superseded by the one in "
        f"{later.loc[tuple(getattr(row, k) for k in key)]} (same machine, device and case)"
        for row in dropped.itertuples()
    ]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (=, +, -, @ first: a device name is whatever the
    machine reports) get a leading apostrophe; numbers stay numbers."""
    df = df.copy()
    for column in [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]:
        df[column] = [f"'{v}" if isinstance(v, str) and v.startswith(_FORMULA_START) else v for v in df[column]]
    return df


_PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def _check_outputs(outputs: dict, inputs=()) -> None:
    """Before anything is written: each output a file that can be written, in an existing folder, none named
    twice and none an input (the same file, through links too); `-` (standard output) for the CSV only; the
    plot's format from its name (.png, .svg, .pdf)."""
    named = {label: Path(path) for label, path in outputs.items() if path is not None and str(path) != "-"}
    for label, path in outputs.items():
        if path is not None and str(path) == "-" and label != "csv":
            raise ReportError(f"--{label} -: only --csv writes to standard output; give a file name")
    for label, path in named.items():
        if path.is_dir():
            raise ReportError(f"--{label} {path}: is a folder; expected a file name")
        if not path.parent.is_dir():
            raise ReportError(f"--{label} {path}: folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise ReportError(f"--{label} {path}: cannot be written (no permission)")
        read = next((Path(i) for i in inputs if path.exists() and Path(i).exists() and os.path.samefile(path, i)), None)
        if read is not None:
            raise ReportError(f"--{label} {path}: is the results file {read} that the report reads; give another name")
        twins = [other for other, p in named.items() if other != label and p.resolve() == path.resolve()]
        if twins:
            raise ReportError(f"--{label} {path}: --{twins[0]} writes the same file; give each output its own name")
    plot = named.get("plot")
    if plot is not None and plot.suffix.lower() not in _PLOT_FORMATS:
        raise ReportError(f"--plot {plot}: expected a name ending in {', '.join(_PLOT_FORMATS)} (the format written)")


def _write(label: str, path: Path, content: str | bytes) -> None:
    """Whole or not at all (`fastcyclegan.atomic`: a temporary created exclusively beside the target, then
    renamed over it)."""
    path = Path(path)
    try:
        with atomic_file(path, prefix=f".{path.name[:200]}.") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
    except OSError as err:
        raise ReportError(f"--{label} {path}: cannot write ({err.strerror or err})") from None


def report(paths, csv_path=None, markdown_path=None, plot_path=None, written=None) -> tuple[str, list[str]]:
    """Write what was asked for; return (markdown, problems). `csv_path` "-" means standard output; `written`,
    a list, gets a (what, path) for each file written. Raises ReportError if nothing could be read or an output
    cannot be written (checked before any is)."""
    wrote = [] if written is None else written
    _check_outputs({"csv": csv_path, "markdown": markdown_path, "plot": plot_path}, paths)
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ReportError("--plot needs matplotlib: pip install 'fastcyclegan[bench]'") from None
    gen_raw, kernel_raw, problems = read_results(paths)
    if gen_raw.empty and kernel_raw.empty and problems:
        raise ReportError("no fastcyclegan results could be read:\n  " + "\n  ".join(problems))
    problems += _superseded(gen_raw, KEY + ["backend"]) + _superseded(kernel_raw, KERNEL_KEY)
    gen, kernel = generator_table(gen_raw), kernel_table(kernel_raw)
    problems += [  # a case that failed in the run: its result is missing, say so (a peer's failed parity is a result)
        f"{r.source}: {r.backend} {r.size}x{r.size} batch {r.batch} {r.dtype} ({r.mode}) failed in the run: {r.reason}"
        for r in gen[gen.status == "failed"].itertuples()
    ]
    text = to_markdown(gen, kernel)
    if csv_path:
        tables = [_csv_safe(gen).to_csv(index=False)]
        if not kernel.empty:
            tables.append(_csv_safe(kernel).to_csv(index=False))
        if str(csv_path) == "-":
            sys.stdout.write("\n".join(tables))
        else:
            _write("csv", csv_path, tables[0])
            wrote.append(("CSV", csv_path))
            if len(tables) > 1:
                _write("csv", Path(csv_path).with_suffix(".kernels.csv"), tables[1])
                wrote.append(("CSV of the kernel bench", Path(csv_path).with_suffix(".kernels.csv")))
    if markdown_path:
        _write("markdown", markdown_path, text)
        wrote.append(("markdown", markdown_path))
    if plot_path:
        if gen.empty:
            problems.append(f"{plot_path}: not written, no timed generator results")
        else:
            buffer = io.BytesIO()
            notes = plot(gen, buffer, _PLOT_FORMATS[Path(plot_path).suffix.lower()])
            if buffer.getvalue():
                _write("plot", plot_path, buffer.getvalue())
                wrote.append(("plot", plot_path))
            problems += notes
    return text, problems
