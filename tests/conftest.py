"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

#: where ``make reference-caffe`` (``../shared/tools/caffe/build.sh``) puts the reference Caffe's python
DEFAULT_REFERENCE_CAFFE_PYTHON = "~/.cache/reference-caffe/venv/bin/python"


@pytest.fixture(scope="session")
def reference_caffe_python() -> Path:
    """The python of the reference Caffe (real pycaffe with DeepLab's ``Interp``):
    ``$REFERENCE_CAFFE_PYTHON``, default ``~/.cache/reference-caffe/venv/bin/python``.

    Tests that need it FAIL (never skip) when it is missing or cannot ``import caffe`` with
    ``Interp``, with a one-line message saying how to build it.
    """
    path = Path(os.environ.get("REFERENCE_CAFFE_PYTHON", DEFAULT_REFERENCE_CAFFE_PYTHON)).expanduser()
    how = "build it with `make reference-caffe` (runs bash ../shared/tools/caffe/build.sh) or set REFERENCE_CAFFE_PYTHON"
    if not path.is_file():
        pytest.fail(f"reference Caffe python not found at {path}: {how}", pytrace=False)
    check = "import sys, caffe; sys.exit(0 if 'Interp' in caffe.layer_type_list() else 3)"
    result = subprocess.run([str(path), "-c", check], capture_output=True, text=True,
                            env=dict(os.environ, GLOG_minloglevel="2"))
    if result.returncode != 0:
        why = "has no Interp layer" if result.returncode == 3 else "cannot import caffe"
        pytest.fail(f"reference Caffe at {path} {why}: {how}", pytrace=False)
    return path
