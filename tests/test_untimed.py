"""A peer's parity failure is a result (make bench ends well): the bench's gate records it, the saved JSON
carries it with skipped and failed cases, and the report shows it in the CSV, the markdown and the plot,
distinct from a skip; a failed case of the run is named and makes `report` exit 1."""

import json
import pathlib

import pytest

from bench.fcg_results import parity_gate, untimed
from fastcyclegan.harness.measure import GENERATOR_SUITE, UNTIMED_KEY
from fastcyclegan.harness.report import report
from fastcyclegan.parity import Parity

DATA = pathlib.Path(__file__).resolve().parent / "data"
FAILED = Parity(errors=(3.5e-6, 3.4e-6, 3.6e-6, 3.5e-6), reference_errors=(1e-6,) * 4)
PASSED = Parity(errors=(1e-6,) * 4, reference_errors=(1e-6,) * 4)


class _Benchmark:
    def __init__(self):
        self.extra_info = {}


class _Config:
    def getoption(self, name):
        return "cpu" if name == "--fcg-device" else None


def test_a_peer_that_fails_parity_is_recorded_not_timed_and_does_not_fail_the_run():
    config, bench = _Config(), _Benchmark()
    assert parity_gate(bench, config, PASSED, mode="infer", case=("openvino", 32, 1, "fp32", "plain"), what="x")
    assert not untimed(config)
    case = ("openvino", 32, 1, "fp32", "plain")
    assert not parity_gate(bench, config, FAILED, mode="infer", case=case, what="inference")
    (row,) = untimed(config)
    assert row["status"] == "failed parity" and row["backend"] == "openvino" and row["suite"] == GENERATOR_SUITE
    assert row["reason"].startswith("3.5x eager's error") and row["parity_err"] == FAILED.error
    assert bench.extra_info["untimed"] == "failed the parity gate: 3.5x eager's error against float64, not timed"


@pytest.mark.parametrize("backend", ["fast", "fast_compiled", "fast:aten-norms"])
def test_this_projects_own_backends_failing_parity_fail_the_case(backend):
    with pytest.raises(pytest.fail.Exception, match=f"{backend} inference in fp32 failed parity"):
        parity_gate(
            _Benchmark(), _Config(), FAILED, mode="infer", case=(backend, 32, 1, "fp32", "plain"), what="inference"
        )


def _run_with_untimed(tmp_path, *cases):
    data = json.loads((DATA / "bench-cpu-smoke.json").read_text())
    base = {"suite": GENERATOR_SUITE, "mode": "infer", "size": 32, "batch": 1, "dtype": "fp32", "norm": "plain"}
    device = next(
        b["extra_info"]["device"] for b in data["benchmarks"] if b["extra_info"].get("suite") == GENERATOR_SUITE
    )
    data[UNTIMED_KEY] = [base | {"device": device} | case for case in cases]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    return path


PARITY_ROW = {
    "backend": "openvino",
    "status": "failed parity",
    "reason": "3.5x eager's error against float64 (...)",
    "parity_err": 3.5e-6,
    "parity_ref_err": 1e-6,
}
SKIP_ROW = {"backend": "onnxruntime", "status": "skipped", "reason": "onnxruntime not installed"}


def test_the_report_shows_a_parity_failure_and_a_skip_apart_in_csv_markdown_and_plot(tmp_path):
    run = _run_with_untimed(tmp_path, PARITY_ROW, SKIP_ROW)
    text, problems = report([run], tmp_path / "r.csv", tmp_path / "r.md", tmp_path / "r.png")
    assert problems == []  # a peer's parity failure is a result, not a problem: exit 0
    assert "failed parity (3.5x error)" in text and "| skipped |" in text.replace(" skipped |", "| skipped |")
    assert "- openvino, 32x32 batch 1 fp32 (infer): failed parity: 3.5x eager's error" in text
    assert "- onnxruntime, 32x32 batch 1 fp32 (infer): skipped: onnxruntime not installed" in text
    csv = (tmp_path / "r.csv").read_text().splitlines()
    header = csv[0].split(",")
    status = {line.split(",")[header.index("backend")]: line.split(",")[header.index("status")] for line in csv[1:]}
    assert status["openvino"] == "failed parity" and status["onnxruntime"] == "skipped" and status["fast"] == "timed"
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")


def test_the_plot_marks_and_names_both_kinds(tmp_path, monkeypatch):
    """The plot's scatter marks: a red X for a parity failure and a hollow circle for a skip, each in the legend."""
    import matplotlib.axes

    marks, legends = [], []
    real_scatter, real_legend = matplotlib.axes.Axes.scatter, matplotlib.axes.Axes.legend
    monkeypatch.setattr(
        matplotlib.axes.Axes, "scatter", lambda self, *a, **k: marks.append(k["marker"]) or real_scatter(self, *a, **k)
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes, "legend", lambda self, h, n, **k: legends.append(list(n)) or real_legend(self, h, n, **k)
    )
    report([_run_with_untimed(tmp_path, PARITY_ROW, SKIP_ROW)], plot_path=tmp_path / "r.png")
    assert sorted(marks) == ["X", "o"]
    assert {"failed parity", "skipped"} <= set(legends[0])


def test_a_failed_case_is_named_and_is_a_problem(tmp_path):
    failed = {"backend": "fast_compiled", "status": "failed", "reason": "RuntimeError: out of memory"}
    text, problems = report([_run_with_untimed(tmp_path, failed)])
    assert (
        len(problems) == 1 and "fast_compiled 32x32 batch 1 fp32 (infer) failed in the run: RuntimeError" in problems[0]
    )
    assert "- fast_compiled, 32x32 batch 1 fp32 (infer): failed: RuntimeError: out of memory" in text


def test_an_untimed_case_of_an_unknown_status_is_named_and_skipped(tmp_path):
    _text, problems = report([_run_with_untimed(tmp_path, SKIP_ROW | {"status": "lost"})])
    assert len(problems) == 1 and "'status' is 'lost'" in problems[0]
