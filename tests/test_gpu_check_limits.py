"""bench/gpu_check.sh fits its own limits: each phase's limit is at least 1.5x the slowest time a committed GPU
log measured for it (compile and a cold cache included), a phase no log has measured is declared an estimate,
and the limits add up to at most 420 s (a rerun must fit a 15-minute GPU slot)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARGIN = 1.5
TOTAL_S = 420

_PHASE = re.compile(r"^phase (\w+) (\d+) ", re.M)
_MEASURED = re.compile(r"^=== (\w+): exit \d+ after (\d+)s ===$", re.M)
_ESTIMATED = re.compile(r"^# estimated, not yet measured on a GPU: (.*)$", re.M)


def measured_seconds(logs) -> dict[str, int]:
    """The slowest time of each phase over the logs' `=== NAME: exit CODE after Ns ===` lines (a phase cut
    off by its limit counts with the time it had: at least that)."""
    slowest: dict[str, int] = {}
    for text in logs:
        for name, seconds in _MEASURED.findall(text):
            slowest[name] = max(slowest.get(name, 0), int(seconds))
    return slowest


def limit_problems(script: str, logs) -> list[str]:
    limits = [(name, int(limit)) for name, limit in _PHASE.findall(script)]
    estimated = set(_ESTIMATED.search(script).group(1).split()) if _ESTIMATED.search(script) else set()
    measured = measured_seconds(logs)
    problems = []
    for name, limit in limits:
        if name in measured and limit < MARGIN * measured[name]:
            problems.append(f"{name}: limit {limit}s < {MARGIN} x the measured {measured[name]}s")
        elif name not in measured and name not in estimated:
            problems.append(f"{name}: no GPU log measured it and the script does not declare its limit an estimate")
    total = sum(limit for _, limit in limits)
    if total > TOTAL_S:
        problems.append(f"the limits add up to {total}s > {TOTAL_S}s")
    return problems


def _logs():
    return [p.read_text() for p in sorted((ROOT / "bench" / "results").glob("*/log.txt"))]


def test_gpu_check_fits_its_limits():
    logs = _logs()
    assert measured_seconds(logs), "no committed GPU log with phase times under bench/results/"
    assert limit_problems((ROOT / "bench" / "gpu_check.sh").read_text(), logs) == []


# the phase limits of gpu_check.sh before they were set from the logs (commit e36cb02)
_OLD_LIMITS = """
phase cuda_tests 50 x
phase generator_b16 80 x
phase generator_b1 60 x
phase train 80 x
phase ab_stem_head 40 x
phase kernel 40 x
phase generator_fp32 45 x
phase profile_fast 12 x
phase profile_eager_cl 12 x
"""


def test_the_rule_catches_limits_below_the_measured_times():
    problems = limit_problems(_OLD_LIMITS, _logs())
    assert any(p.startswith("cuda_tests: limit 50s < 1.5 x the measured 73s") for p in problems), problems
    assert any(p.startswith("profile_fast: limit 12s") for p in problems), problems
    assert any(p.startswith("train: no GPU log measured it") for p in problems), problems
    assert limit_problems("phase a 300 x\nphase b 200 x\n# estimated, not yet measured on a GPU: a b\n", []) == [
        "the limits add up to 500s > 420s"
    ]
