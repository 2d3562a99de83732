"""bench/gpu_check.sh, the one prepared GPU run, in its CPU smoke mode: every phase runs and exits 0, $OUT
holds at most the 8 files the device tool returns, and the comparison table is printed last."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_phase(tmp_path):
    env = {**os.environ, "FCG_SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # as on the GPU machine: the script's processes choose for themselves
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
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
