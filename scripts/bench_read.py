"""Benchmark: reading a full-size DeepLab-ResNet-101 caffemodel, ours vs the naive path.

The naive path is what the seed port did: parse with protobuf, then
``torch.tensor(list(blob.data))`` for every blob. Ours is ``converter.read_caffemodel``
(wire-level walk, ``np.frombuffer`` on the packed field). Each path runs in a fresh
subprocess so that its peak memory (VmHWM) above the baseline after imports (VmRSS) is its own.

    python scripts/bench_read.py [--caffemodel PATH] [--repeat 3]

Without --caffemodel a synthetic DeepLab-ResNet-101 MSC file (official topology, 21 classes,
177 MB, the size of the release files) is written to a temporary folder first.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _fresh_process import run_fresh, synthetic_resnet101_msc

REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import numpy as np, torch
from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter import read_caffemodel
path, mode = sys.argv[1], sys.argv[2]
base = status('VmRSS')
start = time.perf_counter()
if mode == 'ours':
    blobs = read_caffemodel(path)
    n = sum(b.size for layer in blobs.values() for b in layer)
else:
    net = caffe_pb2.NetParameter()
    with open(path, 'rb') as f:
        net.ParseFromString(f.read())
    blobs = {{l.name: [torch.tensor(list(b.data)) for b in l.blobs] for l in net.layer if l.blobs}}
    n = sum(b.numel() for layer in blobs.values() for b in layer)
seconds = time.perf_counter() - start
print(json.dumps({{'seconds': seconds, 'peak_above_baseline': status('VmHWM') - base, 'values': int(n)}}))
"""


def measure(path: Path, mode: str) -> dict:
    return run_fresh(_CHILD.format(repo=str(REPO)), str(path), mode, what=f"the {mode} read")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caffemodel", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.caffemodel or synthetic_resnet101_msc(Path(tmp))
        size = path.stat().st_size
        print(f"file: {path} ({size / 1e6:.1f} MB)")
        results = {}
        for mode in ("naive", "ours"):
            runs = [measure(path, mode) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            results[mode] = best
            print(f"{mode:>5}: {best['seconds']:.3f} s (best of {args.repeat}), "
                  f"peak memory above baseline {best['peak_above_baseline'] / 1e6:.1f} MB "
                  f"= {best['peak_above_baseline'] / size:.2f}x the file, {best['values']:,} values")
        assert results["naive"]["values"] == results["ours"]["values"], "the two paths read different value counts"
        print(f"speed-up: {results['naive']['seconds'] / results['ours']['seconds']:.1f}x "
              f"(target >= 10x, aim 30x); memory ours {results['ours']['peak_above_baseline'] / size:.2f}x file "
              f"(target < 2.5x, aim ~1x)")


if __name__ == "__main__":
    main()
