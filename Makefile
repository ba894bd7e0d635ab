# The README's two commands: `make demo` and `make test`. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export CUDA_HOME ?= /usr/local/cuda

.PHONY: setup build demo test lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# torch only when none is importable: a CUDA build from this machine's disk by default,
# an existing CPU build (e.g. torch==2.13.0) is kept.
setup: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch
	$(PIP) install -q ninja
	$(PIP) install -q --no-build-isolation -e ".[dev]"

# Rebuild the C++ library in place after editing csrc/ (ninja makes it incremental).
build: $(PY)
	$(PY) setup.py -q build_ext --inplace

demo: setup
	$(VENV)/bin/fastcg check

test: setup
	$(VENV)/bin/ruff check fastcg tests bench tools
	$(PY) tools/gen_sh.py --check
	$(PY) -m pytest -q -n 2 tests

lint: $(PY)
	$(VENV)/bin/ruff check fastcg tests bench tools
	$(VENV)/bin/ruff format --check fastcg tests bench tools

bench: setup
	$(PY) bench/ops.py

clean:
	rm -rf build fastcg/*.so *.egg-info
