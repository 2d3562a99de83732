"""The README's example runs as a user would run it (copied into a file): on a CPU, in under a minute, and
what it prints is within the parity rule. The code is read from README.md itself, not kept as a copy."""

import os
import pathlib
import re
import subprocess
import sys
import time

from helpers import generator_parity

from fastcyclegan.parity import PARITY_FLOOR, PARITY_MEDIAN

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- example:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no example block after its <!-- example --> marker"
    return match.group(1)


def test_the_readme_example_runs_in_under_a_minute_within_the_parity_rule(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user runs it
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert seconds < 60, f"the example took {seconds:.0f} s"
    errors = dict(re.findall(r"^(reference|fast)\s+[\d.]+ ms\s+RMS error against float64 (\S+)$", done.stdout, re.M))
    assert set(errors) == {"reference", "fast"}, done.stdout
    assert float(errors["fast"]) <= PARITY_MEDIAN * float(errors["reference"]) + PARITY_FLOOR, done.stdout
    assert re.search(r"^max \|fast - reference\| = \S+$", done.stdout, re.M), done.stdout


def test_the_readme_models_pass_the_parity_rule_over_seeds(torch_fallback):
    """The example's two models, taken from running it here, under the several-seed rule."""
    names = {}
    exec(compile(readme_example(), "README.md", "exec"), names)
    check = generator_parity(names["reference"], names["fast"], names["image"].dtype, tuple(names["image"].shape))
    assert check.passed, check
