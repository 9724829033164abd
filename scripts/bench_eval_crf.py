"""Benchmark: evaluation with DenseCRF, the sequential loop against CRF overlapped in workers.

``crf_processes=0`` runs network then CRF image after image in one process (the baseline);
``crf_processes=N`` hands each batch's CRF to N worker processes and goes on with the network
(``parity.evaluation.evaluate``). Both evaluate the same DeepLab (ResNet-101 unless ``--blocks``,
random weights) on the procedural shapes set; the confusion matrices must be equal. Each run
is a fresh process; the two alternate for ``--rounds`` rounds.

    python scripts/bench_eval_crf.py [--images 12] [--size 161] [--processes 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _fresh_process import run_fresh

REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
import numpy as np, torch
from deeplab_caffe import models
from deeplab_caffe.parity.data.datasets import ProceduralShapes
from deeplab_caffe.parity.evaluation.crf import DenseCRF
from deeplab_caffe.parity.evaluation.evaluate import evaluate
images, size, processes, blocks = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
torch.manual_seed(0)
model = models.build_model(models.default_config(4, n_blocks=tuple(blocks)))
dataset = ProceduralShapes(images, size=(size, size), split="val")
start = time.perf_counter()
result = evaluate(model, dataset, device="cpu", crf=DenseCRF(), crf_processes=processes, batch_size=1, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - start, "confusion": result.confusion.tolist(),
                  "model_s": result.timings["model_s"], "crf_s": result.timings["crf_s"]}}))
"""


def measure(images: int, size: int, processes: int, blocks: list[int]) -> dict:
    return run_fresh(_CHILD.format(repo=str(REPO)), str(images), str(size), str(processes), json.dumps(blocks),
                     what=f"crf_processes={processes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=161)
    parser.add_argument("--processes", type=int, default=2, help="CRF worker processes of the overlapped run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--blocks", type=int, nargs=4, default=[3, 4, 23, 3], help="blocks per stage (ResNet-101)")
    args = parser.parse_args()
    runs: dict[int, list[dict]] = {0: [], args.processes: []}
    for _ in range(args.rounds):
        for processes in runs:
            runs[processes].append(measure(args.images, args.size, processes, args.blocks))
    confusions = {json.dumps(run["confusion"]) for group in runs.values() for run in group}
    assert len(confusions) == 1, "sequential and overlapped runs disagree"
    print(f"{args.images} shapes images {args.size}x{args.size}, ResNet blocks {args.blocks}, DenseCRF 10 iterations")
    seconds = {p: statistics.median(run["seconds"] for run in group) for p, group in runs.items()}
    for processes, group in runs.items():
        label = "sequential loop" if processes == 0 else f"overlapped, {processes} CRF workers"
        print(f"{label:>30}: {seconds[processes]:.2f} s (median of {len(group)}; network "
              f"{statistics.median(r['model_s'] for r in group):.2f} s, CRF or waiting for it "
              f"{statistics.median(r['crf_s'] for r in group):.2f} s)")
    print(f"speed-up: {seconds[0] / seconds[args.processes]:.2f}x; confusion matrices equal")


if __name__ == "__main__":
    main()
