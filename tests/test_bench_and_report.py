"""bench/gpu_check.sh in its CPU smoke mode (the one run of the bench suites in `make test`), and
fastcyclegan report on the JSON it wrote and on every kind of bad input."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fastcyclegan.cli import main
from fastcyclegan.harness.measure import GENERATOR_SUITE
from fastcyclegan.harness.report import CSV_COLUMNS, ReportError, find_result_files, report

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_phase(tmp_path):
    """bench/gpu_check.sh in its CPU smoke mode, the one run of the bench suites in `make test`, end to end
    into the report: every phase runs and exits 0, $OUT holds at most the 8 files the device tool returns, and
    the comparison table (inference and training rows) is printed last."""
    # as on the GPU machine: the script's processes choose for themselves (no TRITON_INTERPRET), and they are
    # no pytest-xdist workers (pytest-benchmark turns itself off in one: no JSON)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_")}
    env.update(FCG_SMOKE="1", OUT=str(tmp_path), PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    out = done.stdout
    exits = re.findall(r"=== (\w+): exit (\d+) after", out)
    assert [name for name, _ in exits] == [
        "setup",
        "generator_b16",
        "generator_b1",
        "train",
        "kernel",
        "ab_stem_head",
        "profile_fast",
        "cuda_kernels",
        "report",
    ], out[-3000:]
    assert all(code == "0" for _, code in exits), out[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8, files
    assert {"report.md", "log.txt", "train_bf16.json", "ab_stem_head.json", "generator_b16_bf16.json"} <= set(files)
    assert "fast:stem8+head8" in out  # the A/B's table
    assert out.rstrip().endswith(tmp_path.joinpath("report.md").read_text().rstrip()[-200:])
    table = out.split("=== comparison table ===")[-1]
    assert "| eager |" in table and "| infer |" in table and "| train |" in table


@pytest.fixture
def suite_json():
    """What the benchmark suites wrote in a real CPU run (trimmed, committed): the smoke matrix's fp32 generator
    results for eager, eager_cl and fast with plain and affine norms, its kernel results, and bf16 training
    steps of eager and fast. tests/data/README.md says how it was made."""
    return DATA / "bench-cpu-smoke.json"


def test_csv_from_the_suite_has_the_promised_columns(suite_json, tmp_path):
    csv, md, png = tmp_path / "out.csv", tmp_path / "out.md", tmp_path / "out.png"
    text, problems = report([suite_json], csv, md, png)
    assert problems == []
    df = pd.read_csv(csv)
    assert list(df.columns) == CSV_COLUMNS
    df = df[df["mode"] == "infer"]
    assert sorted(zip(df.norm, df.backend)) == [
        (n, b) for n in ("affine", "plain") for b in ("eager", "eager_cl", "fast")
    ]
    assert (df["size"] == 32).all() and (df.batch == 1).all() and (df.dtype == "fp32").all()
    assert (df.img_per_s > 0).all() and (df.ms_per_batch > 0).all()
    eager = df[df.norm == "affine"].set_index("backend").loc["eager"]
    assert eager.speedup_vs_eager == pytest.approx(1.0)
    fast = df[df.norm == "affine"].set_index("backend").loc["fast"]
    assert fast.speedup_vs_eager == pytest.approx(fast.img_per_s / eager.img_per_s)
    assert df.parity_err.notna().all() and df.device.str.startswith("CPU").all()
    assert df.cudnn_benchmark.isna().all()  # recorded per row; no cuDNN on a CPU
    assert md.read_text() == text
    assert "| device | mode | size | batch | dtype | norm | eager | eager_cl | fast |" in text
    assert "IN+ReLU GB/s" in text and (tmp_path / "out.kernels.csv").exists()
    assert "`fused` ran as CPU AMD EPYC bf16: pytorch fallback:" in text  # per device and dtype
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_storage_folder_takes_the_newest_run_per_machine(suite_json, tmp_path):
    machine = tmp_path / "storage" / "Linux-CPython-3.11-64bit"
    machine.mkdir(parents=True)
    old = json.loads(suite_json.read_text())
    for bench in old["benchmarks"]:
        bench["extra_info"]["backend"] = bench["extra_info"].get("backend", "x") + "_old"
    (machine / "0001_old.json").write_text(json.dumps(old))
    shutil.copy(suite_json, machine / "0002_new.json")
    files = find_result_files(tmp_path / "storage")
    assert files == [machine / "0002_new.json"]


def test_cli_writes_csv_and_reports_bad_files_but_keeps_the_good(suite_json, tmp_path, capsys):
    (tmp_path / "corrupt.json").write_text('{"benchmarks": [')
    (tmp_path / "other.json").write_text(json.dumps({"benchmarks": [{"name": "test_x", "extra_info": {}}]}))
    csv = tmp_path / "out.csv"
    code = main(
        ["report", str(suite_json), str(tmp_path / "corrupt.json"), str(tmp_path / "other.json"), "--csv", str(csv)]
    )
    err = capsys.readouterr().err
    assert code == 1 and csv.exists() and len(pd.read_csv(csv)) == 8  # 6 inference and 2 training results
    assert "corrupt.json: cannot be read as JSON" in err
    assert "other.json: holds no fastcyclegan benchmark results" in err


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "no benchmark JSON files"),
    ],
)
def test_empty_or_missing_storage_says_so(tmp_path, setup, message):
    with pytest.raises(ReportError, match=message):
        find_result_files(setup(tmp_path))


def test_only_bad_files_is_an_error_naming_them(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    notours = tmp_path / "list.json"
    notours.write_text("[1, 2]")
    assert main(["report", str(bad), str(notours), "--csv", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.json: cannot be read as JSON" in err and "list.json: not a pytest-benchmark results file" in err
    assert not (tmp_path / "x.csv").exists()


def test_module_entry_point(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fastcyclegan", "report", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "does not exist" in done.stderr


def _with(suite_json, tmp_path, name, edit):
    """A copy of the suite's file, `edit`ed (a function of the parsed JSON)."""
    data = json.loads(suite_json.read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _generator_rows(data):
    return [b for b in data["benchmarks"] if b["extra_info"].get("suite") == GENERATOR_SUITE]


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("backend", None, "no 'backend'"),
        ("img_per_s", "fast", "'img_per_s' is str"),
        ("device", ["CPU", "x"], "'device' is list"),
        ("size", None, "no 'size'"),
        ("batch", True, "'batch' is bool"),
    ],
)
def test_a_bad_result_is_named_and_skipped_and_the_rest_reported(suite_json, tmp_path, capsys, field, value, why):
    def edit(data):
        row = _generator_rows(data)[0]["extra_info"]
        row.pop(field) if value is None else row.__setitem__(field, value)

    bad = _with(suite_json, tmp_path, "bad.json", edit)
    csv = tmp_path / "out.csv"
    assert main(["report", str(bad), "--csv", str(csv)]) == 1
    err = capsys.readouterr().err
    assert "bad.json: result 'test_generator[" in err and why in err and "Traceback" not in err
    assert len(pd.read_csv(csv)) == 7  # the other seven generator results


def test_deeply_nested_json_is_a_bad_file_not_a_crash(suite_json, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["report", str(suite_json), str(deep), "--csv", str(tmp_path / "out.csv")]) == 1
    assert "deep.json: cannot be read as JSON (nested too deeply)" in capsys.readouterr().err


def test_two_machines_with_one_device_name_keep_both_sets_of_rows(suite_json, tmp_path):
    def on(node):
        return lambda data: data["machine_info"].__setitem__("node", node)

    a, b = _with(suite_json, tmp_path, "a.json", on("node-a")), _with(suite_json, tmp_path, "b.json", on("node-b"))
    csv = tmp_path / "out.csv"
    text, problems = report([a, b], csv)
    df = pd.read_csv(csv)
    assert problems == [] and len(df) == 16 and sorted(df.machine.unique()) == ["node-a", "node-b"]
    assert "(node-a)" in text and "(node-b)" in text  # several machines: each row names its machine
    again = _with(suite_json, tmp_path, "a2.json", on("node-a"))  # one node name, two files: said, not silent
    _, problems = report([a, again], csv)
    assert len(problems) == 8 + 4 and all("superseded by the one in" in p and "a2.json" in p for p in problems)


def test_device_names_cannot_inject_formulas_or_break_the_table(suite_json, tmp_path):
    def edit(data):
        for bench in data["benchmarks"]:
            bench["extra_info"]["device"] = "=HYPERLINK(1)|evil\nrow"

    path = _with(suite_json, tmp_path, "evil.json", edit)
    csv = tmp_path / "out.csv"
    text, _ = report([path], csv)
    assert set(pd.read_csv(csv).device) == {"'=HYPERLINK(1)|evil\nrow"}  # quoted text, never a formula
    cells, header = [], None  # every table row has its header's number of unescaped cell separators
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        count = line.count("|") - line.count("\\|")
        header = header or count
        cells.append(count == header)
    assert len(cells) > 4 and all(cells) and "HYPERLINK" in text
    assert pd.read_csv(csv).parity_err.dtype.kind == "f"  # numbers stay numbers


@pytest.mark.parametrize("option", ["--csv", "--markdown", "--plot"])
def test_an_output_that_is_a_folder_is_one_line_and_nothing_is_written(suite_json, tmp_path, capsys, option):
    folder = tmp_path / "folder"
    folder.mkdir()
    other = tmp_path / "other.md"
    args = ["report", str(suite_json), option, str(folder)] + (
        ["--markdown", str(other)] if option != "--markdown" else []
    )
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a folder" in err and not other.exists()


def test_plot_without_matplotlib_writes_nothing(suite_json, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    csv = tmp_path / "out.csv"
    assert main(["report", str(suite_json), "--csv", str(csv), "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err and not csv.exists()


def test_csv_dash_is_standard_output(suite_json, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(suite_json), "--csv", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(",".join(CSV_COLUMNS)) and not (tmp_path / "-").exists()


def _bench_matrix(**options):
    """bench/fcg_matrix.matrix() on a stand-in for pytest's config with these options (defaults otherwise)."""
    from bench import fcg_matrix as module

    values = {
        "--fcg-device": "cpu",
        "--fcg-backends": None,
        "--fcg-sizes": None,
        "--fcg-batches": None,
        "--fcg-dtypes": None,
        "--fcg-kernel-shapes": None,
        "--fcg-rounds": None,
        "--fcg-ngf": 64,
        "--fcg-smoke": False,
        "--fcg-norms": "plain",
        "--fcg-cudnn-benchmark": "on",
        "--fcg-mode": "infer",
        **options,
    }

    class Config:
        def getoption(self, name):
            return values[name]

    return module.matrix(Config())


@pytest.mark.parametrize(
    "option, message",
    [
        ({"--fcg-batches": "0"}, "--fcg-batches: expected a comma list of positive integers, got '0'"),
        ({"--fcg-sizes": "big"}, "--fcg-sizes: expected a comma list of positive integers, got 'big'"),
        ({"--fcg-sizes": "1,4,32"}, "--fcg-sizes: the generator's reflection pads need images of at least 5 pixels"),
        ({"--fcg-dtypes": ""}, "--fcg-dtypes: expected a comma list out of fp32, fp16, bf16; got nothing in ''"),
        ({"--fcg-norms": "batch"}, "--fcg-norms: expected a comma list out of plain, affine; got unknown ['batch']"),
        ({"--fcg-backends": "fastest"}, "--fcg-backends: expected a comma list out of eager,"),
        ({"--fcg-kernel-shapes": "1,2,3"}, "--fcg-kernel-shapes: expected 'N,C,H,W;N,C,H,W', got '1,2,3'"),
        ({"--fcg-rounds": 0}, "--fcg-rounds: expected a positive integer, got 0"),
        ({"--fcg-device": "tpu"}, "--fcg-device: expected cuda, cuda:N or cpu, got 'tpu'"),
    ],
)
def test_bench_options_say_what_was_expected(option, message):
    with pytest.raises(pytest.UsageError) as info:
        _bench_matrix(**option)
    assert message in str(info.value)


def test_bench_options_are_usage_errors_before_anything_runs():
    """One line and pytest's usage exit status (4), before collection; and CUDA asked for on a CPU machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    device = [] if torch.cuda.is_available() else ["--fcg-device", "cuda"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--fcg-batches",
            "1,0",
            *device,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    message = "--fcg-device cuda: this machine has no CUDA device" if device else "--fcg-batches: expected"
    assert done.returncode == 4 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout


def test_training_steps_are_reported_with_their_mode(suite_json, tmp_path):
    """Training steps (eager and fast: a generator step with gradient parity) beside inference rows: speedups
    compare like with like, and the markdown names the mode."""
    csv = tmp_path / "out.csv"
    text, problems = report([suite_json], csv)
    df = pd.read_csv(csv)
    train = df[df["mode"] == "train"].set_index("backend")
    assert problems == [] and sorted(train.index) == ["eager", "fast"]
    assert (train.ms_per_batch > 0).all() and train.parity_err.notna().all() and (train.dtype == "bf16").all()
    assert train.loc["fast"].speedup_vs_eager == pytest.approx(
        train.loc["fast"].img_per_s / train.loc["eager"].img_per_s
    )
    assert set(df["mode"]) == {"infer", "train"} and "| device | mode | size |" in text


def test_a_killed_bench_run_keeps_its_finished_cases_for_the_report(tmp_path):
    """`pytest bench --benchmark-autosave` prints a line per finished case and saves after each, so a run
    killed (SIGKILL: nothing of pytest's runs after it) before its end leaves those cases to the report."""
    storage = tmp_path / "storage"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_")}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "bench/test_generator_bench.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-autosave",
        f"--benchmark-storage=file://{storage}",
        "--fcg-backends",
        "eager,fast",
        "--fcg-sizes",
        "32,512",
        "--fcg-ngf",
        "8",
        "--fcg-rounds",
        "1",
        "--fcg-dtypes",
        "fp32",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in process.stdout:  # the 512x512 cases take long enough to be killed in
            if "-32px-" in line and "img/s" in line:
                seen.append(line)
            if len(seen) == 2:
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert len(seen) == 2 and "parity" in seen[0], seen
    files = find_result_files(storage)
    assert [p.name for p in files] == ["0001_partial.json"]
    csv = tmp_path / "out.csv"
    _, problems = report(files, csv)
    df = pd.read_csv(csv)
    assert problems == [] and sorted(df.backend) == ["eager", "fast"] and (df["size"] == 32).all()


def test_a_fifo_and_a_link_to_dev_zero_named_json_are_skipped_not_read(suite_json, tmp_path, capsys):
    fifo, zero = tmp_path / "fifo.json", tmp_path / "zero.json"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    csv = tmp_path / "out.csv"
    assert main(["report", str(suite_json), str(fifo), str(zero), "--csv", str(csv)]) == 1  # returns: no hang
    err = capsys.readouterr().err
    assert "fifo.json: not a regular file" in err and "zero.json: not a regular file" in err and csv.exists()


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("img_per_s", float("inf"), "'img_per_s' is inf, expected a finite number > 0"),
        ("img_per_s", 0.0, "'img_per_s' is 0.0, expected a finite number > 0"),
        ("img_per_s", float("nan"), "'img_per_s' is nan"),
        ("size", 10**400, "'size' is 1000000000"),
        ("tflop_s", float("inf"), "'tflop_s' is inf, expected a finite number"),
    ],
    ids=["infinite-rate", "zero-rate", "nan-rate", "huge-int", "infinite-other"],
)
def test_a_value_no_run_can_have_is_named_and_skipped(suite_json, tmp_path, capsys, field, value, why):
    def edit(data):
        _generator_rows(data)[0]["extra_info"][field] = value

    bad = _with(suite_json, tmp_path, "bad.json", edit)  # json writes Infinity, NaN and the integer as they are
    csv = tmp_path / "out.csv"
    assert main(["report", str(bad), "--csv", str(csv), "--plot", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err and len(pd.read_csv(csv)) == 7


def test_no_eager_result_to_compare_with_is_said_not_a_traceback(suite_json, tmp_path, capsys):
    def edit(data):
        data["benchmarks"] = [b for b in data["benchmarks"] if b["extra_info"].get("backend") != "eager"]

    path = _with(suite_json, tmp_path, "no_eager.json", edit)
    plot_path = tmp_path / "p.png"
    assert main(["report", str(path), "--csv", str(tmp_path / "out.csv"), "--plot", str(plot_path)]) == 1
    assert "plot not written, no result has an eager result" in capsys.readouterr().err and not plot_path.exists()


@pytest.mark.parametrize(
    "outputs, message",
    [
        (["--markdown", "-"], "--markdown -: only --csv writes to standard output"),
        (["--csv", "{d}/same", "--markdown", "{d}/same"], "writes the same file"),
        (["--plot", "{d}/p.jpg"], "--plot {d}/p.jpg: expected a name ending in .png, .svg, .pdf"),
        (["--csv", "{d}/out.csv", "--markdown", "{d}/locked/out.md"], "cannot be written (no permission)"),
    ],
    ids=["markdown-dash", "same-file", "plot-format", "unwritable-after-writable"],
)
def test_outputs_are_checked_before_anything_is_written(suite_json, tmp_path, capsys, monkeypatch, outputs, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "locked" else real_access(p, mode))
    args = [o.format(d=tmp_path) for o in outputs]
    assert main(["report", str(suite_json), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(d=tmp_path) in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked"]  # nothing written, no file named "-"


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_the_plot_format_follows_its_name(suite_json, tmp_path, suffix, magic):
    plot_path = tmp_path / f"p{suffix}"
    report([suite_json], plot_path=plot_path)
    assert plot_path.read_bytes().startswith(magic)


def test_the_plot_of_40000_results_on_1000_machines_is_bounded(suite_json, tmp_path):
    """One figure of at most 6 devices and 12 cases each, made in seconds, what was left out said."""
    data = json.loads(suite_json.read_text())
    template = _generator_rows(data)[:3]  # eager, eager_cl, fast at one case
    rows = []
    for machine in range(1000):
        for size in range(1, 14):
            for bench in template:
                info = {**bench["extra_info"], "device": f"CPU {machine}", "size": size * 8}
                rows.append({**bench, "extra_info": info})
    data["benchmarks"] = rows  # 39,000 results
    big = tmp_path / "big.json"
    big.write_text(json.dumps(data))
    argv = ["report", str(big), "--plot", str(tmp_path / "p.png"), "--csv", str(tmp_path / "o.csv")]
    # the peak resident size of the report's own process: /proc's VmHWM (this address space's), not ru_maxrss,
    # which Linux carries over from the forked parent, so it read pytest's own size once earlier tests grew it
    code = (
        "import pathlib, re, resource, sys, time\n"
        "from fastcyclegan.cli import main\n"
        "start = time.perf_counter()\n"
        f"code = main({argv!r})\n"
        "status = pathlib.Path('/proc/self/status')\n"
        "peak = re.search(r'VmHWM:\\s+(\\d+) kB', status.read_text()).group(1) if status.exists() else "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(code, time.perf_counter() - start, peak)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    status, seconds, max_rss_kb = done.stdout.split()
    assert status == "1" and float(seconds) < 30 and int(max_rss_kb) < 1 << 20, done.stdout
    assert "the plot leaves out 994 of 1000 devices" in done.stderr
    from PIL import Image

    width, height = Image.open(tmp_path / "p.png").size
    assert width < 4000 and height < 4000


def test_the_cycle_iteration_bench_runs_both_eager_backends_through_its_gradient_gate(tmp_path):
    """`pytest bench --fcg-mode cycle` at the smoke shape, eager and fast (the compiled backends compile four
    networks twice: minutes on 2 cores, run by hand; bench/results/cpu-epyc-2core-20261130/cycle_smoke.txt)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_")}
    out = tmp_path / "cycle.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "bench/test_cycle_bench.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--fcg-mode",
        "cycle",
        "--fcg-smoke",
        "--fcg-backends",
        "eager,fast",
        "--fcg-rounds",
        "1",
        f"--benchmark-json={out}",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    csv = tmp_path / "cycle.csv"
    _, problems = report([out], csv)
    df = pd.read_csv(csv)
    assert problems == [] and sorted(df.backend) == ["eager", "fast"] and set(df["mode"]) == {"cycle"}
    assert df.parity_err.notna().all()


@pytest.mark.parametrize("option", ["--csv", "--markdown"])
def test_an_output_that_is_the_results_file_read_is_refused_and_the_file_kept(suite_json, tmp_path, option):
    run = tmp_path / "run.json"
    run.write_bytes(suite_json.read_bytes())
    (tmp_path / "link.json").symlink_to(run)
    for output in (run, tmp_path / "link.json"):
        done = subprocess.run(
            [sys.executable, "-m", "fastcyclegan", "report", str(run), option, str(output)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and "is the results file" in done.stderr, done.stderr
    assert run.read_bytes() == suite_json.read_bytes()


def test_a_finished_run_into_an_empty_storage_is_0001_and_its_lines_stand_alone(tmp_path):
    """The partial file is set aside while pytest-benchmark saves, so the run's own file takes number 0001; each
    case line starts a line of its own (no progress letters), no `[NOTSET]` line, no wide microsecond table."""
    storage = tmp_path / "storage"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_")}
    options = ["--fcg-smoke", "--fcg-backends", "eager,tensorrt", "--fcg-kernel-shapes", "1,8,8,8"]
    command = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider", "--benchmark-autosave"]
    command += [f"--benchmark-storage=file://{storage}", *options]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    files = sorted(p.name for p in storage.rglob("*") if p.is_file())
    assert len(files) == 1 and files[0].startswith("0001_"), files
    lines = done.stdout.splitlines()
    cases = [line for line in lines if "test_generator[" in line]
    assert cases and all(line.startswith("test_generator[") for line in cases), cases
    assert any("tensorrt" in line and "skipped (tensorrt requires CUDA)" in line for line in cases), cases
    assert "NOTSET" not in done.stdout and "Max (us)" not in done.stdout and "Mean (us)" not in done.stdout


def test_the_training_modes_name_why_they_leave_a_backend_out(tmp_path):
    """`--fcg-mode train` used to drop onnxruntime and openvino (and eager_cl) without a word."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_")}
    command = [sys.executable, "-m", "pytest", "bench/test_train_bench.py", "-q", "-p", "no:cacheprovider"]
    command += ["--fcg-smoke", "--fcg-mode", "train", "--fcg-backends", "eager_cl,openvino", "--benchmark-disable"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (
        "train-openvino-32px-b1-fp32-plain]: skipped (openvino is an inference runtime: no training step)"
        in done.stdout
    )
    assert "train-eager_cl-32px-b1-fp32-plain]: skipped (the training step runs eager, compiled" in done.stdout


def test_the_cli_names_the_files_it_wrote_and_only_those(suite_json, tmp_path):
    stale = tmp_path / "out.kernels.csv"
    generator_only = _with(suite_json, tmp_path, "gen.json", lambda d: d.update(benchmarks=_generator_rows(d)))
    stale.write_text("an older run's\n")
    command = [sys.executable, "-m", "fastcyclegan", "report", "--csv", str(tmp_path / "out.csv")]
    done = subprocess.run([*command, str(generator_only)], capture_output=True, text=True)
    assert done.returncode == 0 and "wrote CSV:" in done.stderr and "kernel bench" not in done.stderr, done.stderr
    done = subprocess.run(
        [*command, str(suite_json), "--markdown", str(tmp_path / "out.md")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"wrote CSV of the kernel bench: {stale}" in done.stderr
        and f"wrote markdown: {tmp_path / 'out.md'}" in done.stderr
    )
