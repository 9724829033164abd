"""Write a synthetic DeepLab-ResNet Caffe model (official graph and names, seeded random weights).

    python scripts/make_fixture_caffemodel.py --out out/fixture                 # ResNet-101 ASPP, VOC
    python scripts/make_fixture_caffemodel.py --blocks 1,1,1,1 --stem-channels 8 --classes 5 --msc --out /tmp/tiny
    python scripts/make_fixture_caffemodel.py --no-aspp --classes 91 --out out/coco_init   # init.caffemodel-like

Writes ``<name>.prototxt`` (the official graph: deploy net, or with ``--msc`` the train net's
model layers), ``<name>_opencv.prototxt`` (explicit sizes for the Interps with a shrink_factor,
for ``cv2.dnn.readNetFromCaffe``), ``<name>.caffemodel`` (what DeepLab's Caffe saves after
running that prototxt in ``--phase``: Split layers, renamed bottoms, every layer's parameters
and blobs) and with ``--h5`` also ``<name>.caffemodel.h5`` (Caffe's HDF5 snapshot layout).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--blocks", type=_ints, default=(3, 4, 23, 3), help="blocks per stage res2..res5 (default 3,4,23,3)")
    parser.add_argument("--stem-channels", type=int, default=64, help="conv1 width; stage i has mid = stem * 2**i (default 64)")
    parser.add_argument("--classes", type=int, default=21, help="classifier outputs (default 21)")
    parser.add_argument("--aspp", action=argparse.BooleanOptionalAction, default=True,
                        help="ASPP classifier fc1_<set>_c0..c3 (default) or, with --no-aspp, the single 1x1 fc1_<set>")
    parser.add_argument("--aspp-rates", type=_ints, default=(6, 12, 18, 24), help="ASPP dilations (default 6,12,18,24)")
    parser.add_argument("--msc", action="store_true", help="multi-scale net (data_res05/_res075 copies, fc_fusion)")
    parser.add_argument("--no-msc-copies", action="store_true", help="leave the MSC copies' blobs out of the caffemodel")
    parser.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN",
                        help="phase the caffemodel was saved in (default TRAIN, as solver snapshots)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=_ints, default=(513, 513), help="H,W of the prototxt input (default 513,513)")
    parser.add_argument("--classifier-set", default=None, help="fc1_<set> name (default voc12, coco with --no-aspp)")
    parser.add_argument("--name", default="deeplab_resnet", help="file stem (default deeplab_resnet)")
    parser.add_argument("--h5", action="store_true", help="also write <name>.caffemodel.h5")
    args = parser.parse_args(argv)
    if len(args.blocks) != 4:
        parser.error("--blocks needs four numbers (res2..res5)")
    if len(args.input_size) == 1:
        args.input_size = args.input_size * 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from deeplab_caffe import models
    from deeplab_caffe.converter.synthetic import make_synthetic_deeplab, write_caffemodel_h5

    config = models.default_config(args.classes, n_blocks=args.blocks, aspp_rates=args.aspp_rates if args.aspp else None,
                                   msc=args.msc, stem_channels=args.stem_channels)
    classifier_set = args.classifier_set or ("voc12" if args.aspp else "coco")
    start = time.perf_counter()
    model = make_synthetic_deeplab(args.out, config, seed=args.seed, input_size=tuple(args.input_size),
                                   classifier_set=classifier_set, name=args.name, msc_copies=not args.no_msc_copies,
                                   phase=args.phase)
    paths = [model.prototxt_path, model.opencv_prototxt_path, model.caffemodel_path]
    if args.h5:
        paths.append(write_caffemodel_h5(args.out / f"{args.name}.caffemodel.h5", model.blobs))
    n_values = sum(a.size for arrays in model.blobs.values() for a in arrays)
    print(f"wrote {len(model.blobs)} layers with blobs, {n_values:,} values, in {time.perf_counter() - start:.1f} s:")
    for path in paths:
        print(f"  {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
