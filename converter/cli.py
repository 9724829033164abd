"""``deeplab-convert``: Caffe DeepLab (ResNet or VGG16, new or V1 format) -> PyTorch checkpoint + conversion report.

A thin layer over ``converter.convert``, ``converter.verify`` and ``models.save_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from deeplab_caffe import models
from deeplab_caffe.converter.conversion import CONVERTER_VERSION, Conversion, convert
from deeplab_caffe.converter.errors import ContractCommand, ConversionError
from deeplab_caffe.converter.options import TOLERANCE
from deeplab_caffe.models.files import remove_stale_temps, temporary_folder
from deeplab_caffe.converter.foreign import FORMATS, import_checkpoint
from deeplab_caffe.converter.foreign.rules import ImportResult
from deeplab_caffe.converter.report import conversion_report, import_report, report_paths, write_report
from deeplab_caffe.converter.topology import evaluation_protocol
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab
from deeplab_caffe.converter.verify import (VERIFICATION_IMAGES, ForwardReport, opencv_available, verification_images,
                             verify_with_opencv)

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

# The release files of DeepLab v2's project page (prototxt_and_model.zip), see README.
RELEASES = {
    "coco_init": {"caffemodel": "init.caffemodel", "n_classes": 91, "class_names": None,
                  "description": "ResNet-101 pretrained on MS-COCO (DeepLab v2 initialisation)"},
    "voc12": {"caffemodel": "train2_iter_20000.caffemodel", "n_classes": 21, "class_names": VOC_CLASSES,
              "description": "DeepLab v2 ResNet-101 MSC, PASCAL VOC 2012 (train_aug, then trainval_aug)"},
}

console = Console(stderr=True)


def _summary(conversion: Conversion, verification: ForwardReport | None, output: Path | None) -> Table:
    acc = conversion_report(conversion, None)["accounting"]
    table = Table(title="deeplab-convert", show_header=False)
    table.add_row("caffemodel", str(conversion.caffemodel))
    table.add_row("sha256", conversion.caffemodel_sha256[:16] + "...")
    table.add_row("classes / MSC", f"{conversion.config['n_classes']} / {'yes' if conversion.config.get('msc') else 'no'}")
    table.add_row("blobs", f"{acc['blobs']} ({acc['mapped']} mapped, {acc['shared_msc_copies']} shared MSC copies, 0 unaccounted)")
    table.add_row("PyTorch tensors", f"{acc['pytorch_tensors']} filled, {acc['pytorch_parameters']:,} parameters")
    kinds = ", ".join(f"{n} {kind}" for kind, n in acc["checks_by_kind"].items() if n)
    table.add_row("structural checks", f"{acc['structural_checks']} passed ({kinds})")
    table.add_row("after the output", evaluation_protocol(conversion.graph))
    if verification is None:
        table.add_row("forward check", "not run")
    else:
        verdict = "[green]PASS[/]" if verification.passed else f"[red]FAIL[/] at {verification.first_divergent}"
        table.add_row("forward check", f"{verdict}: {len(verification.rows)} layer outputs vs {verification.reference}, "
                      f"final max rel. error {verification.max_rel:.2e} (tol {verification.rtol:g}; "
                      f"layers {verification.layer_rtol or verification.rtol:g})")
    table.add_row("checkpoint", str(output) if output else "not written")
    return table


class _DatasetChoice(click.Choice):
    """``--dataset``'s choices; the seed port's name ``coco`` gets a hint to ``coco_init``."""

    def convert(self, value, param, ctx):  # type: ignore[override]
        if value == "coco":
            self.fail("'coco' is not a release name: the seed port's COCO weights are the release's init.caffemodel, "
                      "--dataset coco_init", param, ctx)
        return super().convert(value, param, ctx)


@click.command(cls=ContractCommand)
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--from", "foreign", type=click.Choice(list(FORMATS)),
              help="Convert SOURCE, another port's checkpoint in this layout, instead of a Caffe file "
                   "(deeplab-pytorch: the seed port's DeepLab v2 MSC .pth, evaluated as the port does; detectron2: "
                   "Detectron2's DeepLab v3/v3+ .pkl, Cityscapes R103 configs; deeplabv3-pytorch: chenxi116's "
                   "DeepLabv3 ResNet-101 .pth, GroupNorm + Weight Standardization or BN).")
@click.option("--dataset", type=_DatasetChoice(["coco_init", "voc12", "synthetic"]),
              help="Release file to convert (coco_init: init.caffemodel, voc12: train2_iter_20000.caffemodel, "
                   "both from --weights-dir), or 'synthetic': write and convert a DeepLab-ResNet-101 MSC with the "
                   "official topology and seeded random weights (no downloads; its 177 MB caffemodel goes to a "
                   "hidden folder beside the output, removed after the conversion; the report gives its sha256).")
@click.option("--caffemodel", type=click.Path(path_type=Path), help="A .caffemodel or .caffemodel.h5 (instead of --dataset).")
@click.option("--prototxt", type=click.Path(path_type=Path),
              help="Layer graph (.prototxt). Optional for a binary .caffemodel, which stores its own graph.")
@click.option("--weights-dir", type=click.Path(path_type=Path), default=Path("data/models/caffe"), show_default=True,
              help="Folder holding the unzipped release files (prototxt_and_model.zip).")
@click.option("--n-classes", type=int, help="Expected class count (defaults: coco_init 91, voc12 21).")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Checkpoint to write, .pth or .safetensors [default: out/<name>.pth]; its reports keep the "
                   "whole name (model.v2.pth -> model.v2.report.json, model.v2.report.md).")
@click.option("--verify/--no-verify", default=False, show_default=True,
              help="Check the converted model against OpenCV's Caffe forward, layer by layer, on scikit-image photos.")
@click.option("--verify-size", type=click.IntRange(1, 2048), default=321, show_default=True,
              help="Side of the square verification images (px, 1 to 2048: the forward's memory grows with it).")
@click.option("--rtol", type=TOLERANCE, default=1e-5, show_default=True,
              help="Relative tolerance (max|d| / max|ref|) of the final output in the forward check.")
@click.option("--layer-rtol", type=TOLERANCE, default=1e-4, show_default=True,
              help="Relative tolerance of intermediate layers. OpenCV's own float32 round-off reaches 1.4e-5 on "
                   "some layers of a full ResNet-101 (measured against a float64 run); a wrong port is off by >1e-3.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic weights (--dataset synthetic).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Convert blobs holding NaN or Inf instead of refusing them (they are still reported).")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint and its reports (refused without it).")
def main(source, foreign, dataset, caffemodel, prototxt, weights_dir, n_classes, output, verify, verify_size, rtol,
         layer_rtol, seed, allow_nonfinite, force) -> int:
    """Convert a DeepLab Caffe model (DeepLab v2 ResNet-101, v1 LargeFOV or v2 VGG16 ASPP-L; new or
    old V1 format), or with --from another port's SOURCE checkpoint, to a PyTorch checkpoint plus a
    JSON/Markdown report.

    Exit status 1: the forward check (--verify) failed, and no checkpoint was written.
    """
    if foreign is not None or source is not None:
        if foreign is None or source is None or dataset or caffemodel or prototxt or verify:
            raise ConversionError(None, "--from NAME takes one SOURCE file and no --dataset, --caffemodel, "
                                        "--prototxt or --verify (see --help)")
        return run_foreign(foreign, source, output, n_classes, allow_nonfinite, force=force)
    return run(dataset, caffemodel, prototxt, weights_dir, n_classes, output, verify, verify_size, rtol, seed,
               allow_nonfinite, layer_rtol, force=force)


def output_paths(output: Path) -> list[Path]:
    """The files a conversion to ``output`` writes: the checkpoint, then its JSON and Markdown reports."""
    return [output, *report_paths(output)]


def prepare_outputs(output: Path, *, default: bool, force: bool) -> None:
    """Refuse a bad or existing ``output`` (unless ``force``) before any work; clean a killed run's temporaries.

    The default folder ``out/`` is created; a folder given with ``-o`` must exist.
    """
    if output.suffix not in models.checkpoint.SUFFIXES:
        raise ConversionError(output, "output must end in .pth or .safetensors")
    if default:
        output.parent.mkdir(parents=True, exist_ok=True)
    elif not output.parent.is_dir():
        raise ConversionError(output, "output folder does not exist")
    paths = output_paths(output)
    remove_stale_temps(paths)
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        others = f" (and {len(existing) - 1} of its reports)" if len(existing) > 1 else ""
        raise ConversionError(existing[0], f"already exists{others}; pass --force to replace it")


def run_foreign(name: str, source: Path, output: Path | None, n_classes: int | None, allow_nonfinite: bool,
                force: bool = False) -> int:
    """``--from NAME SOURCE``: import another port's checkpoint (``converter.foreign``), write our
    checkpoint and the import report; returns the exit status."""
    default_output = output is None
    output = output or Path("out") / f"{Path(source).name.split('.')[0]}.pth"
    prepare_outputs(output, default=default_output, force=force)
    with console.status(f"reading and mapping {source} ({name} layout)"):
        result = import_checkpoint(source, FORMATS[name], allow_nonfinite=allow_nonfinite)
    if n_classes is not None and result.config["n_classes"] != n_classes:
        raise ConversionError(source, f"classifier has {result.config['n_classes']} classes, expected {n_classes}")
    metadata = {
        "source_file": result.source.name, "source_sha256": result.source_sha256, "source_format": name,
        "architecture": result.config["arch"], "n_classes": result.config["n_classes"],
        "class_names": VOC_CLASSES if result.config["n_classes"] == 21 else None,
        "converter_version": CONVERTER_VERSION, "conventions": result.notes,
        "input": f"BGR 0-255 minus mean {FORMATS[name].mean_bgr}, NCHW float32", "mean_bgr": list(FORMATS[name].mean_bgr),
    }
    models.save_checkpoint(output, result.state_dict, result.config, metadata)
    report = import_report(result)
    json_path, markdown_path = report_paths(output)
    write_report(report, json_path, markdown_path)
    Console().print(_import_summary(result, report, output))
    console.print(f"report: {markdown_path} and {json_path.name}")
    return 0


def _import_summary(result: ImportResult, report: dict, output: Path) -> Table:
    acc = report["accounting"]
    table = Table(title=f"deeplab-convert --from {result.format}", show_header=False)
    table.add_row("source", str(result.source))
    table.add_row("sha256", result.source_sha256[:16] + "...")
    table.add_row("classes / MSC", f"{result.config['n_classes']} / "
                  f"{'yes (' + result.config['msc'].get('resize', 'caffe') + ' resize)' if result.config.get('msc') else 'no'}")
    table.add_row("keys", f"{acc['keys']} ({acc['mapped']} mapped, {acc['outside_the_model']} outside the model, "
                  "0 unaccounted)")
    table.add_row("PyTorch tensors", f"{acc['pytorch_tensors']} filled ({acc['absent_optional']} optional, absent), "
                  f"{acc['pytorch_parameters']:,} parameters")
    table.add_row("checkpoint", str(output))
    return table


def run(dataset, caffemodel, prototxt, weights_dir, n_classes, output, verify, verify_size, rtol, seed,
        allow_nonfinite=False, layer_rtol=None, force=False) -> int:
    """The command's work, callable from tests; returns the exit status."""
    if (dataset is None) == (caffemodel is None):
        raise ConversionError(None, "give exactly one of --dataset or --caffemodel (see --help)")
    class_names = None
    name = dataset or Path(caffemodel).name.split(".")[0]
    if dataset == "synthetic":
        class_names = VOC_CLASSES if (n_classes or 21) == 21 else None
        name = "deeplabv2_resnet101_synthetic"
    elif dataset is not None:
        release = RELEASES[dataset]
        caffemodel = weights_dir / release["caffemodel"]
        n_classes = n_classes or release["n_classes"]
        class_names = release["class_names"]
        name = f"deeplabv2_resnet101_{dataset}"
        if not caffemodel.exists():  # the input first: a missing release file is the news, not the output folder
            raise ConversionError(caffemodel, f"no such file (unzip the release's prototxt_and_model.zip into "
                                              f"--weights-dir, now {weights_dir})")
    default_output = output is None
    output = output or Path("out") / f"{name}.pth"
    prepare_outputs(output, default=default_output, force=force)
    options = dict(n_classes=n_classes, verify=verify, verify_size=verify_size, rtol=rtol, layer_rtol=layer_rtol,
                   allow_nonfinite=allow_nonfinite, class_names=class_names)
    if dataset != "synthetic":
        return convert_and_write(caffemodel, prototxt, output, **options)
    # the synthetic caffemodel (177 MB at full size) is an intermediate file: written into a hidden folder
    # beside the output, removed at the end (a killed run's folder goes with the next run's clean-up)
    with temporary_folder(output) as folder:
        with console.status("writing a synthetic DeepLab-ResNet-101 (official topology, seeded random weights)"):
            synthetic = make_synthetic_deeplab(folder, models.default_config(n_classes or 21, msc=True), seed=seed,
                                               msc_copies=False, name="deeplab_resnet101_msc")
        note = (f"synthetic (deeplab-convert --dataset synthetic --seed {seed}): written to a temporary folder and "
                f"removed after the conversion; the same seed writes the same bytes (sha256 above)")
        return convert_and_write(synthetic.caffemodel_path, synthetic.prototxt_path, output, source_note=note,
                                 **options)


def convert_and_write(caffemodel: Path, prototxt: Path | None, output: Path, *, n_classes: int | None, verify: bool,
                      verify_size: int, rtol: float, layer_rtol: float | None, allow_nonfinite: bool,
                      class_names: list[str] | None, source_note: str | None = None) -> int:
    """Convert, check (``verify``: against OpenCV), write the checkpoint (only if the check passed) and
    its reports; returns the exit status. ``source_note``: the source files were temporary (the
    report then names them without their folder and says so)."""
    with console.status(f"reading and mapping {caffemodel}"):
        conversion = convert(caffemodel, prototxt, n_classes=n_classes, allow_nonfinite=allow_nonfinite)
    verification = None
    if verify:
        if opencv_available() is None:
            raise ConversionError(None, "--verify needs opencv-python-headless 4.x: pip install 'opencv-python-headless<5'")
        console.print(f"forward check against OpenCV on {', '.join(VERIFICATION_IMAGES)} ({verify_size}x{verify_size})",
                      highlight=False)
        verification = verify_with_opencv(conversion.model, conversion.graph, conversion.caffemodel,
                                          verification_images(VERIFICATION_IMAGES, verify_size), rtol=rtol,
                                          layer_rtol=layer_rtol, progress=True)

    report = conversion_report(conversion, verification, source_note=source_note)
    written = None
    if verification is None or verification.passed:
        metadata = {
            "source_file": conversion.caffemodel.name, "source_sha256": conversion.caffemodel_sha256,
            "architecture": conversion.config["arch"], "n_classes": conversion.config["n_classes"],
            "class_names": class_names, "converter_version": CONVERTER_VERSION,
            "input": f"BGR 0-255 minus mean {models.VOC_MEAN_BGR}, NCHW float32",
            "verified": None if verification is None else verification.to_dict() | {"rows": None},
        }
        models.save_checkpoint(output, conversion.state_dict, conversion.config, metadata)
        written = output
    json_path, markdown_path = report_paths(output)
    write_report(report, json_path, markdown_path)
    Console().print(_summary(conversion, verification, written))
    console.print(f"report: {markdown_path} and {json_path.name}")
    if verification is not None and not verification.passed:
        console.print(f"[red]forward check failed[/]: first divergent layer {verification.first_divergent}; no checkpoint written")
        return 1
    return 0


if __name__ == "__main__":
    main()
