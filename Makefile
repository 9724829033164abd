# Set-up and the two jobs the README names. `make demo` runs the main job on the embedded
# default (no downloads); `make test` runs the test suite (what .ci/run calls) and lists the
# 15 slowest tests, so a test that grew slow shows in the CI log.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# The reference Caffe (real pycaffe with DeepLab's Interp) the golden-file tests run under; built
# from source by ../shared/tools/caffe/build.sh (as root, 4-10 minutes on 2 cores) when missing.
REFERENCE_CAFFE ?= $(HOME)/.cache/reference-caffe
REFERENCE_CAFFE_PYTHON ?= $(REFERENCE_CAFFE)/venv/bin/python

.PHONY: setup demo test bench clean reference-caffe

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

test: setup reference-caffe
	REFERENCE_CAFFE_PYTHON=$(REFERENCE_CAFFE_PYTHON) $(BIN)/python -m pytest -q --durations=15

reference-caffe:
	@GLOG_minloglevel=2 $(REFERENCE_CAFFE_PYTHON) -c "import sys, caffe; sys.exit('Interp' not in caffe.layer_type_list())" \
		2>/dev/null || PREFIX=$(REFERENCE_CAFFE) bash ../shared/tools/caffe/build.sh

bench: setup
	$(BIN)/python scripts/bench_read.py

clean:
	rm -rf out .pytest_cache
