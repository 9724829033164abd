"""Benchmark: the memory and time of ``deeplab-convert --verify`` (forward check against OpenCV).

Three paths, each in a fresh process on the same caffemodel, one photo per run:

- ``convert``: conversion only (the baseline every verify path pays);
- ``held``: every layer's output of both sides held at once, then compared (the path
  ``--verify`` used until it streamed: ``pytorch_outputs`` + one OpenCV forward of the whole
  deploy net asking for every layer);
- ``streamed``: what ``--verify`` runs (``converter.verify.verify_with_opencv``): OpenCV runs
  the graph chunk by chunk while the model's hooks compare each layer as it is computed.

Peak memory is the process's VmHWM (everything: torch, the model, the file, both forwards).

    python scripts/bench_verify.py [--caffemodel PATH] [--size 321] [--skip-held]

Without --caffemodel a synthetic DeepLab-ResNet-101 MSC file (official topology, 21 classes,
177 MB) is written first. The default size is ``--verify``'s (321 px).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _fresh_process import run_fresh, synthetic_resnet101_msc

REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from deeplab_caffe.converter.verify import verification_images
from deeplab_caffe.converter.conversion import convert
from deeplab_caffe.converter import verify
path, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
conversion = convert(path)
images = verification_images(("astronaut",), size)
rows, final = 0, float("nan")
if mode == "streamed":
    report = verify.verify_with_opencv(conversion.model, conversion.graph, path, images)
    rows, final = len(report.rows), report.max_rel
elif mode == "held":
    import tempfile
    from google.protobuf import text_format
    graph = conversion.graph
    x = verify.caffe_input(images["astronaut"])
    points = verify.comparison_points(graph)
    ours = verify.pytorch_outputs(conversion.model, x, points)
    from deeplab_caffe.caffe_proto import caffe_pb2
    from deeplab_caffe.converter.read import read_caffemodel
    from deeplab_caffe.converter.write import write_caffemodel
    blobs = read_caffemodel(path)
    weights, slim = caffe_pb2.NetParameter(), {{}}
    for layer in graph.layers:  # every weight layer, MSC copies from their 1x layer
        if layer.type in ("Convolution", "BatchNorm", "Scale"):
            weights.layer.add(name=layer.name, type=layer.type)
            slim[layer.name] = blobs.get(layer.name) or blobs[graph.canonical(layer.name)]
    with tempfile.TemporaryDirectory() as tmp:
        write_caffemodel(Path(tmp) / "w.caffemodel", weights, slim)
        net = verify.deploy_net(graph, tuple(x.shape), tuple(ours[verify.FINAL].shape[-2:]))
        prototxt = Path(tmp) / "deploy.prototxt"
        prototxt.write_text(text_format.MessageToString(net))
        ref = verify.opencv_outputs(prototxt, Path(tmp) / "w.caffemodel", x, [p[0] for p in points] + [graph.output])
    out = [verify.compare_arrays(layer, module, ours[layer], ref[layer], 1e-5) for layer, module, _ in points]
    out.append(verify.compare_arrays(verify.FINAL, "model", ours[verify.FINAL], ref[graph.output], 1e-5))
    rows, final = len(out), out[-1].max_rel
seconds = time.perf_counter() - start
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({{"seconds": seconds, "peak": peak, "rows": rows, "final_max_rel": final}}))
"""


def measure(path: Path, mode: str, size: int) -> dict:
    return run_fresh(_CHILD.format(repo=str(REPO)), str(path), mode, str(size), what=f"the {mode} run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caffemodel", type=Path)
    parser.add_argument("--size", type=int, default=321, help="side of the square photo (px)")
    parser.add_argument("--skip-held", action="store_true", help="leave out the held path (it needs ~10 GB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.caffemodel or synthetic_resnet101_msc(Path(tmp))
        print(f"file: {path} ({path.stat().st_size / 1e6:.1f} MB), photo {args.size}x{args.size}")
        modes = ("convert", "streamed") if args.skip_held else ("convert", "held", "streamed")
        results = {mode: measure(path, mode, args.size) for mode in modes}
        for mode, r in results.items():
            extra = f", {r['rows']} rows, final max rel. error {r['final_max_rel']:.2e}" if r["rows"] else ""
            print(f"{mode:>8}: {r['seconds']:6.1f} s, peak memory {r['peak'] / 2**30:.2f} GiB{extra}")
        streamed = results["streamed"]
        print(f"streamed verify above conversion alone: {(streamed['peak'] - results['convert']['peak']) / 2**30:.2f} GiB "
              f"(target: whole process under 3 GiB: {'yes' if streamed['peak'] < 3 * 2**30 else 'NO'})")
        if "held" in results:
            held = results["held"]
            assert held["rows"] == streamed["rows"], "the two paths compared different layers"
            print(f"held / streamed: peak memory {held['peak'] / streamed['peak']:.1f}x, "
                  f"time {held['seconds'] / streamed['seconds']:.2f}x")


if __name__ == "__main__":
    main()
