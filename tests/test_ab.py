"""The interleaved A/B (python -m bench.ab): every timed call starts after an untimed idle pause, so the
previous backend's spinning worker threads do not take the CPU from the next one's pool."""

import json

from bench import ab


def test_every_timed_call_follows_an_idle_pause(monkeypatch, tmp_path):
    events = []
    monkeypatch.setattr(ab, "_idle", lambda: events.append(("pause",)))
    forward_calls = ab._forward_calls

    def recorded(*args):
        calls = forward_calls(*args)
        return {
            name: lambda call=call, name=name: events.append(("call", name)) or call() for name, call in calls.items()
        }

    monkeypatch.setattr(ab, "_forward_calls", recorded)
    out = tmp_path / "ab.json"
    args = ["--device", "cpu", "--backends", "eager,fast", "--size", "16", "--ngf", "4", "--rounds", "3"]
    assert ab.main([*args, "--json", str(out)]) == 0
    assert {name: len(s) for name, s in json.loads(out.read_text())["seconds"].items()} == {"eager": 3, "fast": 3}
    warm_up, timed = events[:2], events[2:]
    assert warm_up == [("call", "eager"), ("call", "fast")]
    pause = ("pause",)
    assert timed == [pause, ("call", "eager"), pause, ("call", "fast")] * 3


def test_the_busy_processes_keep_the_default_openmp_settings(monkeypatch):
    """The load beside a measurement is the same whatever OpenMP settings the measuring process has."""
    from pathlib import Path

    from bench.fcg_busy import busy_processes

    monkeypatch.setenv("GOMP_SPINCOUNT", "2000")
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    with busy_processes(1) as procs:
        environ = Path(f"/proc/{procs[0].pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0] for entry in environ}
    assert b"PATH" in names  # the rest of the environment is passed on
    assert not names & {b"GOMP_SPINCOUNT", b"OMP_WAIT_POLICY"}
