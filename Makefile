# make test  : create .venv if missing, install the project with its test extra, run the CPU test suite
#              (the benchmark suites run once inside it, through bench/gpu_check.sh's CPU smoke mode)
# make bench : same set-up, run the benchmarks, write bench/latest.csv and bench/latest.md, print the table
#
# TORCH picks the PyTorch build installed before the project (the CPU wheel by default: the suite needs no
# GPU). Override it, e.g. `make test TORCH=torch`, to take whatever pip resolves.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fastcyclegan-installed

.PHONY: test bench lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

test: $(STAMP)
	$(PY) -m pytest tests -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-autosave -q; status=$$?; \
	$(PY) -m fastcyclegan report --csv bench/latest.csv --markdown bench/latest.md --print; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .benchmarks bench/latest.csv bench/latest.md *.egg-info
