"""fastcyclegan report: on JSON that the benchmark suite itself wrote, and on every kind of bad input."""

import json
import pathlib
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from fastcyclegan.cli import main
from fastcyclegan.report import CSV_COLUMNS, ReportError, find_result_files, report

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite_json(tmp_path_factory):
    """A real benchmark run: smoke matrix, three backends, 2 timed rounds, plus the kernel suite."""
    out = tmp_path_factory.mktemp("bench") / "run.json"
    cmd = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider", "--fcg-smoke",
           "--fcg-backends", "eager,eager_cl,fast", "--fcg-rounds", "2", f"--benchmark-json={out}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


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
