"""The benchmark suites and tools (`pytest bench`, `python -m bench.ab`, ...): the harness's side of the
repository, importable as a package from the repository root; nothing in `fastcyclegan` imports it."""
