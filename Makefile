# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The dev/CI install pins torch (a CPU wheel here); the package itself accepts any torch >= 2.1.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-slow test-engines bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/talkbench demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

# The Ray and SLURM engines' tests: install the optional extras (ray[data], submitit) into the venv first.
test-engines: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,ray,slurm]"
	$(PY) -m pytest -q -m engines tests/test_engines.py

bench: $(VENV)/.installed
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist
