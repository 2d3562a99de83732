"""Options and shared fixtures of the benchmark suites (`pytest bench --benchmark-autosave`).

Defaults depend on the device: on CUDA the full matrix that the project reports (256x256, batches 1 and 16,
bf16 and fp32, every available backend); on a CPU a small matrix that finishes in minutes on 2 cores (batch
1; bf16 only where the CPU runs it natively). The run says at its start what it chose and why, prints a line
as each case finishes, and keeps what finished if it is stopped (bench/fcg_progress.py).
A peer (eager_cl, compiled, tensorrt, onnxruntime, openvino) that fails the parity gate is a result: its line
says so, the saved JSON keeps it (`fastcyclegan_untimed`, with skipped and failed cases) and the report shows
it; only this project's own backends failing parity fail the run.
`--fcg-smoke` shrinks everything so CI can run the files and keep them working.
"""

from __future__ import annotations

import signal
import threading

import pytest
import torch

from bench.fcg_matrix import bench_device, default_dtypes, matrix
from bench.fcg_progress import ProgressSaver, case_line
from bench.fcg_results import UNTIMED, record_untimed, untimed
from fastcyclegan.harness.backends import DEFAULT_BACKENDS
from fastcyclegan.harness.measure import ceilings, device_facts
from fastcyclegan.parity import tf32_off


def pytest_addoption(parser):
    group = parser.getgroup("fastcyclegan", "fastcyclegan benchmark matrix")
    group.addoption("--fcg-device", default=None, help="cuda or cpu (default: cuda when available)")
    group.addoption(
        "--fcg-backends",
        default=None,
        help=f"comma list out of {', '.join(DEFAULT_BACKENDS)}, "
        "compiled_max_autotune (default: all available but compiled_max_autotune)",
    )
    group.addoption("--fcg-sizes", default=None, help="comma list of square image sizes (CUDA: 256; CPU: 128,256)")
    group.addoption("--fcg-batches", default=None, help="comma list of batch sizes (CUDA: 1,16; CPU: 1)")
    group.addoption(
        "--fcg-dtypes",
        default=None,
        help="comma list out of fp32, fp16, bf16 (CUDA: bf16,fp32; CPU: fp32, and bf16 where the CPU runs it natively)",
    )
    group.addoption(
        "--fcg-kernel-shapes",
        default=None,
        help="kernel bench shapes 'N,C,H,W;N,C,H,W' (CUDA: N in 1,8,32 x (256,64,64), (64,256,256))",
    )
    group.addoption("--fcg-rounds", type=int, default=None, help="timed rounds per case (CUDA: 30; CPU: 5)")
    group.addoption(
        "--fcg-norms",
        default="plain",
        help="comma list out of plain (the paper's norm) and affine (learned scale and shift)",
    )
    group.addoption(
        "--fcg-mode",
        default="infer",
        help="comma list out of infer (forward, img/s), train (one generator step: forward, backward, Adam) "
        "and cycle (one whole CycleGAN iteration: two generators, two discriminators, image pools, two Adams); "
        "train and cycle take batches 1,4 on CUDA, 1 on a CPU unless --fcg-batches",
    )
    group.addoption(
        "--fcg-cudnn-benchmark",
        default="on",
        choices=["on", "off"],
        help="torch.backends.cudnn.benchmark for every backend alike on CUDA (default on; recorded in each result)",
    )
    group.addoption("--fcg-ngf", type=int, default=64, help="generator width (64 in the paper)")
    group.addoption("--fcg-smoke", action="store_true", help="tiny matrix (32x32, ngf 8, batch 1, fp32) for CI")
    group.addoption(
        "--fcg-wide-table",
        action="store_true",
        help="also print pytest-benchmark's own table (every timing statistic in microseconds); by default the "
        "case lines and `fastcyclegan report` summarise the run",
    )


def pytest_configure(config):
    matrix(config)  # a bad option is a usage error (one line, exit 4) before anything is collected or run
    config._fcg_progress = ProgressSaver(config)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (GNU timeout, docker stop, a scheduler) ends the run like Ctrl-C: pytest-benchmark saves
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def pytest_sessionstart(session):
    """pytest-benchmark's wide table off unless --fcg-wide-table (its saving is untouched: `finish` does that)."""
    bench_session = getattr(session.config, "_benchmarksession", None)
    if bench_session is not None and not session.config.getoption("--fcg-wide-table"):
        bench_session.display = lambda terminal: None


def pytest_collection_modifyitems(config, items):
    """A suite whose mode the run does not ask for has no cases: deselected, not a `[NOTSET]` skip line."""
    empty = [
        i
        for i in items
        if any("got empty parameter set" in str(m.kwargs.get("reason", "")) for m in i.iter_markers("skip"))
    ]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [i for i in items if i not in empty]


def pytest_collection_finish(session):
    """What the run covers and why, before the first case (shown with -q too)."""
    config = session.config
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None or config.getoption("collectonly"):
        return
    m = matrix(config)
    terminal.ensure_newline()
    terminal.write_line(
        f"fastcyclegan bench: {len(session.items)} cases on {m['device']}; backends {','.join(m['backends'])}; "
        f"sizes {m['sizes']}; batches {m['batches']}; dtypes {','.join(m['dtypes'])}; norms {','.join(m['norms'])}; "
        f"modes {','.join(m['modes'])}; {m['rounds']} rounds a case"
    )
    if config.getoption("--fcg-dtypes") is None and not config.getoption("--fcg-smoke"):
        terminal.write_line(f"fastcyclegan bench: dtypes by default: {default_dtypes(m['device'])[1]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A line as each case ends (its figures, or why it was skipped or failed), then the results so far saved."""
    outcome = yield
    report = outcome.get_result()
    if not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return
    terminal = item.config.pluginmanager.get_plugin("terminalreporter")
    bench = getattr(item, "funcargs", {}).get("benchmark")
    status = "passed" if report.passed else "skipped" if report.skipped else "FAILED"
    reason = (
        report.longrepr[2].removeprefix("Skipped: ") if report.skipped and isinstance(report.longrepr, tuple) else ""
    )
    if report.failed:
        reason = _failure_reason(report)
    case, mode = _case_of(item)
    if case is not None and not report.passed:  # kept with the results: the report names it
        record_untimed(item.config, mode, case, status.lower(), reason)
    line = case_line(item.name, status, dict(bench.extra_info) if bench is not None else None, reason)
    problem = item.config._fcg_progress.save()
    if terminal is not None:
        terminal.ensure_newline()
        terminal.write_line(line)
        if problem:
            terminal.write_line(f"fastcyclegan bench: {problem}")


def _failure_reason(report) -> str:
    """The line that says why a case failed: pytest.fail's message, else the exception's last line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[0].removeprefix("Failed: ") if lines else "failed")[:300]


def _case_of(item) -> tuple[tuple | None, str]:
    """(the generator case a bench item runs, its mode), or (None, "") for other items (the kernel bench)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    case = next((v for k, v in params.items() if k.endswith("case") and isinstance(v, tuple) and len(v) == 5), None)
    return case, getattr(item.module, "FCG_MODE", "infer")


def pytest_report_teststatus(report, config):
    """No progress letters: each case's own line says how it ended (a dot or an `s` would glue onto it)."""
    if report.when == "call" or (report.when == "setup" and report.skipped):
        if report.passed:
            return "passed", "", ""
        if report.skipped:
            return "skipped", "", ""
    return None


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """The run's untimed cases (peers that failed parity, skipped and failed cases) go into the saved JSON."""
    output_json[UNTIMED] = list(untimed(config))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    """Around pytest-benchmark's save (its own wrapper, inside this one): the partial file set aside before,
    removed after (or put back when nothing was saved)."""
    session.config._fcg_progress.set_aside()
    yield
    session.config._fcg_progress.finish()


@pytest.fixture(scope="session")
def fcg(request):
    return matrix(request.config)


@pytest.fixture(scope="session")
def device_info(fcg):
    """Device facts and ceilings, measured once per session and stored in every result's extra_info."""
    device = fcg["device"]
    facts = dict(device_facts(device))
    facts.update(ceilings(device))
    facts["cudnn_benchmark"] = fcg["cudnn_benchmark"] if device.type == "cuda" else None  # no cuDNN on a CPU
    return facts


@pytest.fixture(scope="session", autouse=True)
def _honest_fp32():
    """fp32 means fp32: TF32 off for the whole run (the parity rule's fp32 reference needs it too)."""
    with tf32_off():
        yield


@pytest.fixture(scope="session", autouse=True)
def _cudnn_benchmark(fcg):
    """cuDNN's autotuner as --fcg-cudnn-benchmark says, the same for every backend, restored after the run
    (the benchmark sets it; FastGenerator itself never flips global flags)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = fcg["cudnn_benchmark"]
    yield
    torch.backends.cudnn.benchmark = before


def pytest_benchmark_update_machine_info(config, machine_info):
    device = bench_device(config)
    machine_info["fastcyclegan_device"] = device_facts(device)
