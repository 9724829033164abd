"""Benchmark: reading a full-size DeepLab-ResNet-101 caffemodel into arrays, three ways.

What it compares, each path in a fresh subprocess (so that its peak memory, VmHWM above the
baseline VmRSS after imports, is its own):

- ``protobuf+numpy`` (the fair baseline): ``NetParameter.ParseFromString`` of the whole file,
  then ``np.array(blob.data, np.float32)`` for every blob;
- ``per-float`` (the seed port's path): the same parse, then ``torch.tensor(list(blob.data))``,
  one Python float per value;
- ``ours``: ``converter.read_caffemodel`` (a wire-level walk, ``np.frombuffer`` on each packed
  field);
- ``limit`` (the floor any reader pays): the file read from the page cache into memory plus one
  copy of its bytes.

Every path hashes all its arrays in file order (sha256 over layer name, value count and the
float32 values of each blob); the script fails unless the three readers' hashes are equal, so
every value is checked, not only the count. It prints each path's best time, its peak memory,
and its time as a multiple of the ``limit`` measured in the same run.

    python scripts/bench_read.py [--caffemodel PATH] [--repeat 3]

Without --caffemodel a synthetic DeepLab-ResNet-101 MSC file (official topology, 21 classes,
177 MB, the size of the release files) is written to a temporary folder first. Timings depend on
the machine and its load: quote them only from a quiet machine, with the machine named.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _fresh_process import run_fresh, synthetic_resnet101_msc

MODES = ("protobuf+numpy", "per-float", "ours")

_CHILD = r"""
import hashlib, json, sys, time
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import numpy as np, torch
from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter import read_caffemodel
path, mode = sys.argv[1], sys.argv[2]

def protobuf_layers(convert):
    net = caffe_pb2.NetParameter()
    with open(path, 'rb') as f:
        net.ParseFromString(f.read())
    return {l.name: [convert(b.data if len(b.data) else b.double_data) for b in l.blobs]
            for l in (net.layer or net.layers) if l.blobs}

def digest(layers):
    h = hashlib.sha256()
    for name, blobs in layers.items():
        h.update(name.encode())
        for blob in blobs:
            values = np.ascontiguousarray(np.asarray(blob), dtype='<f4').ravel()
            h.update(str(values.size).encode())
            h.update(values.tobytes())
    return h.hexdigest(), sum(np.asarray(b).size for blobs in layers.values() for b in blobs)

base = status('VmRSS')
start = time.perf_counter()
if mode == 'limit':
    with open(path, 'rb') as f:
        data = f.read()
    copy = np.frombuffer(data, np.uint8).copy()
    layers = None
elif mode == 'ours':
    layers = read_caffemodel(path)
elif mode == 'protobuf+numpy':
    layers = protobuf_layers(lambda values: np.array(values, np.float32))
else:
    layers = protobuf_layers(lambda values: torch.tensor(list(values)))
seconds = time.perf_counter() - start
peak = status('VmHWM') - base
sha, n = digest({k: [b.numpy() if hasattr(b, 'numpy') else b for b in v] for k, v in layers.items()}) if layers else (None, 0)
print(json.dumps({'seconds': seconds, 'peak_above_baseline': peak, 'values': int(n), 'sha256': sha}))
"""


def best_of(path: Path, mode: str, repeat: int) -> dict:
    """The fastest of ``repeat`` fresh-process runs of one path."""
    runs = [run_fresh(_CHILD, str(path), mode, what=f"the {mode} read") for _ in range(repeat)]
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caffemodel", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.caffemodel or synthetic_resnet101_msc(Path(tmp))
        size = path.stat().st_size
        print(f"file: {path} ({size / 1e6:.1f} MB)")
        limit = best_of(path, "limit", args.repeat)
        print(f"{'limit':>15}: {limit['seconds']:.3f} s (page-cache read + one copy, best of {args.repeat})")
        results = {mode: best_of(path, mode, args.repeat) for mode in MODES}
        for mode, best in results.items():
            print(f"{mode:>15}: {best['seconds']:.3f} s = {best['seconds'] / limit['seconds']:.1f}x the limit, "
                  f"peak memory above baseline {best['peak_above_baseline'] / 1e6:.1f} MB "
                  f"= {best['peak_above_baseline'] / size:.2f}x the file, {best['values']:,} values, "
                  f"sha256 {best['sha256'][:16]}")
        if len({best["sha256"] for best in results.values()}) != 1:
            sys.exit("error: the readers disagree: their hashes over all values differ")
        print(f"all {len(MODES)} paths read equal values (sha256 {results['ours']['sha256']}); ours is "
              f"{results['protobuf+numpy']['seconds'] / results['ours']['seconds']:.1f}x faster than protobuf+numpy, "
              f"{results['per-float']['seconds'] / results['ours']['seconds']:.1f}x than per-float")


if __name__ == "__main__":
    main()
