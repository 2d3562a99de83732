"""bench/gpu_check.sh in its CPU smoke mode (the one run of the bench suites in `make test`), and
fastcyclegan report on the JSON it wrote and on every kind of bad input."""

import fcntl
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from fastcyclegan.cli import main
from fastcyclegan.report import CSV_COLUMNS, ReportError, find_result_files, report

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gpu_check_smoke(tmp_path_factory, worker_id):
    """(its $OUT folder, the finished process) of `bench/gpu_check.sh` in its CPU smoke mode, run once per
    test run: the one run of the bench suites in `make test`. Under pytest-xdist the first worker that needs
    it runs it while holding a lock, and the others read what it left."""
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    out, record = shared / "gpu_check", shared / "gpu_check.json"
    with open(shared / "gpu_check.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            out.mkdir(exist_ok=True)
            # as on the GPU machine: the script's processes choose for themselves (no TRITON_INTERPRET), and
            # they are no pytest-xdist workers (pytest-benchmark turns itself off in one: no JSON)
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_")}
            env.update(FCG_SMOKE="1", OUT=str(out), PYTHON=sys.executable)
            done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=600)  # fmt: skip
            record.write_text(json.dumps({"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}))
    result = json.loads(record.read_text())
    return out, subprocess.CompletedProcess(["bash", "bench/gpu_check.sh"], **result)


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_phase(gpu_check_smoke):
    """Every phase runs and exits 0, $OUT holds at most the 8 files the device tool returns, and the
    comparison table is printed last."""
    tmp_path, done = gpu_check_smoke
    out = done.stdout
    exits = re.findall(r"=== (\w+): exit (\d+) after", out)
    assert [name for name, _ in exits] == [
        "cuda_tests", "generator_b16", "generator_fp32", "kernel", "generator_b1", "profile_fast", "profile_eager_cl",
    ], out[-3000:]  # fmt: skip
    assert all(code == "0" for _, code in exits), out[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8, files
    assert {"report.md", "report.csv", "log.txt"} <= set(files)
    assert out.rstrip().endswith(tmp_path.joinpath("report.md").read_text().rstrip()[-200:])
    assert "| eager |" in out.split("=== comparison table ===")[-1]


@pytest.fixture(scope="module")
def suite_json(gpu_check_smoke, tmp_path_factory):
    """What the benchmark suites themselves wrote (gpu_check.sh's smoke run): the fp32 generator phase (three
    backends) and the kernel phase, merged into one pytest-benchmark file."""
    out_dir, done = gpu_check_smoke
    generator = json.loads((out_dir / "generator_b16_fp32.json").read_text())
    kernel = json.loads((out_dir / "kernel_bf16.json").read_text())
    generator["benchmarks"] += kernel["benchmarks"]
    merged = tmp_path_factory.mktemp("bench") / "run.json"
    merged.write_text(json.dumps(generator))
    return merged


def test_csv_from_the_suite_has_the_promised_columns(suite_json, tmp_path):
    csv, md, png = tmp_path / "out.csv", tmp_path / "out.md", tmp_path / "out.png"
    text, problems = report([suite_json], csv, md, png)
    assert problems == []
    df = pd.read_csv(csv)
    assert list(df.columns) == CSV_COLUMNS
    assert sorted(df.backend) == ["eager", "eager_cl", "fast"]
    assert (df["size"] == 32).all() and (df.batch == 1).all() and (df.dtype == "fp32").all()
    assert (df.img_per_s > 0).all() and (df.ms_per_batch > 0).all()
    eager = df.set_index("backend").loc["eager"]
    assert eager.speedup_vs_eager == pytest.approx(1.0)
    fast = df.set_index("backend").loc["fast"]
    assert fast.speedup_vs_eager == pytest.approx(fast.img_per_s / eager.img_per_s)
    assert df.parity_err.notna().all() and df.device.str.startswith("CPU").all()
    assert "| device | size | batch | dtype | eager | eager_cl | fast |" in text and md.read_text() == text
    assert "IN+ReLU GB/s" in text and (tmp_path / "out.kernels.csv").exists()
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
    code = main(["report", str(suite_json), str(tmp_path / "corrupt.json"), str(tmp_path / "other.json"),
                 "--csv", str(csv)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and csv.exists() and len(pd.read_csv(csv)) == 3
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
    done = subprocess.run([sys.executable, "-m", "fastcyclegan", "report", str(tmp_path / "none")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "does not exist" in done.stderr
