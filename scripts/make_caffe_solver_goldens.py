#!/usr/bin/env python3
"""Golden files of real Caffe's solver: the official DeepLab v2 train net (MSC loss included),
reduced, trained a few steps by ``caffe.SGDSolver`` with the official solver settings.

Runs under the reference Caffe's python (pycaffe with DeepLab's ``Interp``), never under this
project's venv, and imports nothing of this project: only ``caffe``, numpy, protobuf,
scikit-image and the standalone siblings ``make_caffe_goldens.py`` / ``dump_caffe_blobs.py``.

    OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=2 ~/.cache/reference-caffe/venv/bin/python \\
        scripts/make_caffe_solver_goldens.py [--official ../shared/data/official] [--out tests/data/caffe_solver]

1. The train net: ``cocostuff_deeplabv2_resnet101_train.prototxt`` filled for VOC (``EXP=voc12``,
   ``NUM_LABELS=21``), reduced in depth and width exactly as ``make_caffe_goldens.py`` reduces it.
   Its ``ImageSegData`` layer becomes a ``MemoryData`` layer of 4-channel blobs (BGR minus the
   mean, then the label) split by a ``Slice`` into ``data`` and ``label`` (a python-free feed: each
   forward pass takes the next image, cycling); the fork's ``SegAccuracy`` layers (absent from this
   Caffe, no effect on the loss) are dropped; the four ``SoftmaxWithLoss`` layers get tops named
   after themselves (``loss``, ``loss_res1``, ``loss_res075``, ``loss_res05``) so that they can be
   read. The label Interps, losses and every ``param { lr_mult decay_mult }`` stay official.
2. The solver: ``cocostuff_deeplabv2_resnet101_solver.prototxt`` (SGD, ``lr_policy: "poly"``,
   ``power``, ``momentum``, ``weight_decay``, ``iter_size: 10``, ``base_lr``) with ``max_iter``
   set to ``MAX_ITER`` so that a few steps cross the poly schedule, and the ``net`` replaced.
3. Weights: seeded, BatchNorm calibrated, as ``make_caffe_goldens.py`` does, in the ``Input``
   form of the same net (``weights.prototxt``: data layer cut, labels and losses dropped), saved
   as ``step_0.caffemodel``; the solver's net copies them; after each ``solver.step(1)`` the
   weights are saved again (``step_<k>.caffemodel``) through the ``Input`` form, which shares them.
4. Losses: for each step, each of its ``iter_size`` passes through a second TRAIN net that shares
   the solver's weights (before the step): the four loss tops (``losses`` in ``batches.npz``,
   ``steps x iter_size x 4``, order ``LOSS_TOPS``). The solver's own loss tops after a step (its
   last pass) are checked against them, which also checks the cycling order of the feed.

Output (``--out``): ``solver_net.prototxt`` (what the solver ran), ``weights.prototxt``,
``solver.prototxt``, ``step_<k>.caffemodel`` (k = 0 .. STEPS), ``batches.npz`` (``data``: ``N x 3 x
H x W`` float32, ``label``: ``N x H x W`` uint8, ``pass_image``: which image each pass reads,
``losses``) and ``meta.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# before caffe loads OpenBLAS: repeatable bit for bit on one CPU kernel (across CPUs the floats
# drift by a few 1e-6; the tests bound that: docs/ci.md, "Golden files on another CPU")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_caffe_goldens as goldens  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "caffe_solver"
SOLVER_PROTOTXT = "cocostuff_deeplabv2_resnet101_solver.prototxt"
VALUES = {"NET_ID": "deeplabv2_resnet101", "EXP": "voc12", "NUM_LABELS": "21"}
#: H x W of every image: 32k + 1 on both axes, so the label Interps sample exactly and the MSC
#: score maps agree in size (as at the official 321); not square, so that axes cannot swap
SIZE = (97, 65)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
STEPS = 3
#: poly reaches 0 here: lr is 1, 0.77, 0.54 x base_lr over the three steps
MAX_ITER = 4
LOSS_TOPS = ("loss", "loss_res1", "loss_res075", "loss_res05")
SEED = 20261127


def make_labels(rng: np.random.Generator, n: int, size: tuple[int, int], n_classes: int) -> np.ndarray:
    """``n x H x W`` uint8 labels: blocks of random classes (cells of 7 x 5 pixels, so that the
    shrunk labels vary) and one rectangle of 255 (ignored) per image."""
    height, width = size
    cells = rng.integers(0, n_classes, (n, -(-height // 7), -(-width // 5)))
    labels = cells.repeat(7, axis=1).repeat(5, axis=2)[:, :height, :width].astype(np.uint8)
    for label in labels:
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        label[top:top + height // 4, left:left + width // 3] = 255
    return labels


def solver_net(official: Path, batch: int, size: tuple[int, int]) -> Any:
    """The official train net, reduced, fed by MemoryData + Slice, with named loss tops."""
    from caffe.proto import caffe_pb2

    net, _ = goldens.load_official(official / goldens.TRAIN_PROTOTXT, VALUES)
    layers = []
    for layer in net.layer:
        if layer.type == "ImageSegData":
            feed = caffe_pb2.LayerParameter(name="feed", type="MemoryData", top=["data_label", "feed_unused"])
            p = feed.memory_data_param
            p.batch_size, p.channels, p.height, p.width = batch, 4, size[0], size[1]
            split = caffe_pb2.LayerParameter(name="feed_slice", type="Slice", bottom=["data_label"],
                                             top=["data", "label"])
            split.slice_param.axis = 1
            split.slice_param.slice_point.append(3)
            silence = caffe_pb2.LayerParameter(name="feed_silence", type="Silence", bottom=["feed_unused"])
            layers += [feed, split, silence]
        elif layer.type == "SegAccuracy":
            continue
        else:
            if layer.type == "SoftmaxWithLoss":
                del layer.top[:]
                layer.top.append(layer.name)
            layers.append(layer)
    del net.layer[:]
    net.layer.extend(layers)
    if sorted(layer.name for layer in net.layer if layer.type == "SoftmaxWithLoss") != sorted(LOSS_TOPS):
        raise SystemExit(f"error: the official train net's losses are not {LOSS_TOPS}")
    goldens.reduce_depth(net, goldens.KEEP_BLOCKS)
    goldens.reduce_width(net, goldens.DIVISORS)
    return net


def weights_net(official: Path) -> Any:
    """The same reduced net in ``Input`` form (``make_caffe_goldens``'s ``voc12_msc_train``)."""
    variant = next(v for v in goldens.VARIANTS if v.name == "voc12_msc_train")
    net, _ = goldens.build_graph(variant, official, reduced=True)
    return net


def solver_param(official: Path, net_file: str) -> Any:
    """The official solver with ``net`` = ``net_file`` and ``max_iter`` = ``MAX_ITER``."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    solver = caffe_pb2.SolverParameter()
    text_format.Merge(goldens.substitute((official / SOLVER_PROTOTXT).read_text(), {}), solver)
    solver.ClearField("train_net")
    solver.ClearField("snapshot")
    solver.ClearField("snapshot_prefix")
    solver.net = net_file
    solver.max_iter = MAX_ITER
    solver.display = 0
    solver.random_seed = SEED
    solver.type = "SGD"
    return solver


def feed(data: np.ndarray, labels: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MemoryData arrays for images ``order``: ``(n x 4 x H x W, n x 1 x 1 x 1)`` float32."""
    blobs = np.concatenate([data[order], labels[order][:, None].astype(np.float32)], axis=1)
    return np.ascontiguousarray(blobs, dtype=np.float32), np.zeros((len(order), 1, 1, 1), np.float32)


def write_text(path: Path, message: Any) -> Path:
    from google.protobuf import text_format

    path.write_text(text_format.MessageToString(message))
    return path


def initial_weights(official: Path, out: Path, rng: np.random.Generator, mean: tuple[float, float, float]) -> Any:
    """The ``Input``-form net with seeded, calibrated weights, saved as ``step_0.caffemodel``."""
    import caffe

    param = weights_net(official)
    net = caffe.Net(str(write_text(out / "weights.prototxt", param)), caffe.TRAIN)
    goldens.set_random_weights(net, param, rng)
    goldens.calibrate_batchnorm(net, param, goldens.photo_input(PHOTOS[0], SIZE, mean)[1], rng)
    goldens.check_sharing(net, param)
    net.save(str(out / "step_0.caffemodel"))
    return net


def run(official: Path, out: Path) -> dict[str, Any]:
    """Write every golden file into ``out``; returns the meta.json record."""
    import caffe

    caffe.set_mode_cpu()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    net_param = solver_net(official, 1, SIZE)
    mean = goldens.graph_mean(goldens.load_official(official / goldens.TRAIN_PROTOTXT, VALUES)[0])
    write_text(out / "solver_net.prototxt", net_param)
    solver_text = solver_param(official, "solver_net.prototxt")
    write_text(out / "solver.prototxt", solver_text)
    data = np.concatenate([goldens.photo_input(photo, SIZE, mean)[1] for photo in PHOTOS]).astype(np.float32)
    labels = make_labels(rng, len(PHOTOS), SIZE, int(VALUES["NUM_LABELS"]))
    iter_size = int(solver_text.iter_size)
    pass_image = (np.arange(STEPS * iter_size) % len(PHOTOS)).reshape(STEPS, iter_size)

    weights = initial_weights(official, out, rng, mean)
    cwd = Path.cwd()
    os.chdir(out)  # the solver file names its net relative to its folder
    try:
        solver = caffe.SGDSolver("solver.prototxt")
        recorder = caffe.Net("solver_net.prototxt", caffe.TRAIN)
    finally:
        os.chdir(cwd)
    solver.net.copy_from(str(out / "step_0.caffemodel"))
    recorder.share_with(solver.net)
    weights.share_with(solver.net)
    arrays = feed(data, labels, np.arange(len(PHOTOS)))
    solver.net.set_input_arrays(*arrays)
    losses = np.zeros((STEPS, iter_size, len(LOSS_TOPS)), np.float32)
    for step in range(STEPS):
        step_arrays = feed(data, labels, pass_image[step])
        recorder.set_input_arrays(*step_arrays)
        for j in range(iter_size):
            recorder.forward()
            losses[step, j] = [float(recorder.blobs[top].data) for top in LOSS_TOPS]
        solver.step(1)
        last = [float(solver.net.blobs[top].data) for top in LOSS_TOPS]
        if not np.array_equal(np.float32(last), losses[step, -1]):
            raise SystemExit(f"error: step {step}: the solver's last pass {last} is not the recorded {losses[step, -1]}")
        weights.save(str(out / f"step_{step + 1}.caffemodel"))
    np.savez_compressed(out / "batches.npz", data=data, label=labels, pass_image=pass_image, losses=losses)
    record = {
        "official_prototxt": goldens.TRAIN_PROTOTXT, "official_solver": SOLVER_PROTOTXT, "substitutions": VALUES,
        "keep_blocks": {f"res{k}": list(v) for k, v in goldens.KEEP_BLOCKS.items()},
        "width_divisors": goldens.DIVISORS, "size": list(SIZE), "photos": list(PHOTOS), "mean_bgr": list(mean),
        "steps": STEPS, "iter_size": iter_size, "batch_size": 1, "max_iter": MAX_ITER,
        "base_lr": solver_text.base_lr, "lr_policy": solver_text.lr_policy, "power": solver_text.power,
        "momentum": solver_text.momentum, "weight_decay": solver_text.weight_decay, "loss_tops": list(LOSS_TOPS),
        "seed": SEED, "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "command": goldens.command_line(),
    } | goldens.caffe_version()
    (out / "meta.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, default=goldens.DEFAULT_OFFICIAL, help="folder of the official files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default tests/data/caffe_solver)")
    args = parser.parse_args(argv)
    record = run(args.official, args.out)
    print(f"wrote {args.out}: {record['steps']} steps of iter_size {record['iter_size']}, losses and weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
