"""What a benchmark run shows and keeps while it runs: a line per finished case (its figures and parity), and
the results so far in pytest-benchmark's storage after every case, so a run that is stopped keeps them.

pytest-benchmark writes its results once, at the end of the session; a run killed before (a timeout, the OOM
killer, a closed terminal) would leave nothing. After each case the results so far are written, whole, to
`NNNN_partial.json` in the same storage folder, numbered as the run's own file will be: `fastcyclegan report`
then takes it as the machine's newest run. When pytest-benchmark saves the run itself, the partial file goes.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastcyclegan.atomic import atomic_file

PARTIAL = "partial"


def case_line(name: str, outcome: str, info: dict | None, reason: str = "") -> str:
    """`name: figures` of a finished case, from what it recorded in extra_info."""
    if outcome == "passed" and info and "untimed" in info:  # a peer that failed the parity gate: a result
        return f"{name}: {info['untimed']}"
    if outcome != "passed" or not info:
        return f"{name}: {outcome}" + (f" ({reason})" if reason else "")
    if "img_per_s" in info:
        parity = f"parity {info['parity_err']:.2g} vs eager {info['parity_ref_err']:.2g}"
        compile_s = f", compile {info['compile_s']:.1f} s" if info.get("compile_s") else ""
        return f"{name}: {info['img_per_s']:.2f} img/s, {info['ms_per_batch']:.1f} ms a batch, {parity}{compile_s}"
    if "gb_s" in info:
        return f"{name}: {info['gb_s']:.3g} GB/s ({info['copy_fraction']:.0%} of copy), {info['us']:.1f} us"
    return f"{name}: passed (not timed)"


class ProgressSaver:
    """Writes the results so far after each case; removes that file once the run's own file is saved."""

    def __init__(self, config):
        self.config = config
        self.failed = False  # saving failed once: the run goes on, saved at its end only
        self.path: Path | None = None
        self.machine_info = None

    @property
    def session(self):
        """pytest-benchmark's session (it configures after this project's conftest)."""
        return None if self.failed else getattr(self.config, "_benchmarksession", None)

    @property
    def active(self) -> bool:
        s = self.session
        return s is not None and bool(s.autosave or s.save) and not s.disabled and s.storage is not None

    def save(self) -> str | None:
        """Writes the partial file (atomically); returns a one-line problem instead of raising."""
        s = self.session
        if not self.active or not s.benchmarks:
            return None
        try:
            if self.path is None:
                self.path = Path(s.storage.get(f"{s.storage._next_num}_{PARTIAL}.json"))
                self.machine_info = s.get_machine_info()
            data = self.config.hook.pytest_benchmark_generate_json(
                config=self.config,
                benchmarks=s.benchmarks,
                include_data=False,
                machine_info=self.machine_info,
                commit_info={},
            )
            self.config.hook.pytest_benchmark_update_json(config=self.config, benchmarks=s.benchmarks, output_json=data)
            with atomic_file(self.path, prefix=f".{self.path.name}.") as f:  # a reader never sees half a file
                f.write(_dumps(data).encode())
        except Exception as err:  # pytest-benchmark changed its internals: say so, the run goes on
            self.failed = True
            return f"results will be saved only at the end of the run ({type(err).__name__}: {err})"
        return None

    def set_aside(self) -> None:
        """Just before pytest-benchmark saves the run: the partial file out of the numbered sequence, so the run's
        own file takes its number (into an empty storage: 0001, not 0002)."""
        if self.path is not None and self.path.exists():
            os.replace(self.path, self._aside())

    def finish(self) -> None:
        """After pytest-benchmark saved the run (a file of the partial's number or later): the partial file goes;
        if nothing was saved, it is put back."""
        if self.path is None or not self._aside().exists():
            return
        number = self.path.name.split("_")[0]
        saved = [p for p in self.path.parent.glob("[0-9][0-9][0-9][0-9]_*.json") if p.name.split("_")[0] >= number]
        if saved:
            self._aside().unlink()
        else:
            os.replace(self._aside(), self.path)

    def _aside(self) -> Path:
        return self.path.with_name(f".{self.path.name}.aside")


def _dumps(data) -> str:
    from pytest_benchmark.utils import safe_dumps

    return safe_dumps(data, ensure_ascii=True, indent=1)
