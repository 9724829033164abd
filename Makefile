# Set-up and the two jobs the README names. `make demo` runs the main job on the embedded
# default (no downloads); `make test` runs the test suite (what .ci/run calls).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch is installed first and pinned: 2.13.0 is the CPU build on this machine's disk; a bare
# `torch` requirement could pull a multi-GB CUDA build. The project's own range admits it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/deeplab-parity run --outdir out/parity

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python scripts/bench_read.py

clean:
	rm -rf out .pytest_cache
