"""For the benchmarks: run measuring code in a fresh Python process and read its JSON result,
and write the synthetic full-size caffemodel they measure on.

A fresh process per measurement keeps each one's peak memory and start-up its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_fresh(code: str, *args: str, what: str) -> dict:
    """Run ``python -c code args...``; return the JSON object its last stdout line holds, or exit
    naming ``what`` with the end of its stderr."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{what} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def synthetic_resnet101_msc(folder: Path) -> Path:
    """A DeepLab-ResNet-101 MSC caffemodel (official graph, 21 classes, seed 0, 177 MB, the
    size of the release files) written to ``folder``; returns its path."""
    from deeplab_caffe import models
    from deeplab_caffe.converter.synthetic import make_synthetic_deeplab

    print("writing a synthetic DeepLab-ResNet-101 MSC caffemodel ...", flush=True)
    return make_synthetic_deeplab(folder, models.default_config(21, msc=True), seed=0, msc_copies=False).caffemodel_path
