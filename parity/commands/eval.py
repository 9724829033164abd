"""``deeplab-parity eval``: evaluate a converted or trained checkpoint on a dataset.

Registered by ``parity.commands.parity`` as the ``eval`` subcommand; also runnable on its own with
``python -m parity.commands.eval --help``. User errors (missing files, bad options, a checkpoint
that does not load, a model that does not fit the data) print one ``error: ...`` line on
stderr and exit with status 2 (so does an existing ``--output`` without ``--force``, before any
work); the results file is written only when the run completes.
An image or label that cannot be read is one ``error: ...`` line; the evaluation goes on over
the others, the scores and the results file (its ``failed`` list) cover those, and a summary
line ends the run with exit status 2.

Under ``torchrun`` (``torchrun --nproc_per_node 2 -m deeplab_caffe.parity.commands.eval ...``) the
images are split between the processes, each scored exactly once, the confusion matrices summed:
the same scores as one process; rank 0 prints them and writes the results file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from deeplab_caffe import models
from deeplab_caffe.converter.conversion import sha256_file
from deeplab_caffe.parity.commands.errors import EXIT_BAD_INPUT, ContractCommand, fail, refuse_existing
from deeplab_caffe.parity.data.datasets import DatasetError, build_dataset
from deeplab_caffe.parity.data.transforms import MEAN_ARITHMETIC, MEANS_BGR
from deeplab_caffe.parity.devices import resolve_device
from deeplab_caffe.parity.evaluation.crf import CRFUnavailableError, DenseCRF
from deeplab_caffe.parity.suite.manifest import ManifestError, load_manifest
from deeplab_caffe.parity.evaluation.evaluate import (UPSAMPLING, EvaluationError, evaluate, print_results_table,
                                                      save_results_json)
from deeplab_caffe.parity.train import distributed
from deeplab_caffe.parity.train.config import ConfigError, parse_override

#: Evaluation split used when ``--split`` is not given (keys sorted: the order ``--dataset`` lists them).
DEFAULT_EVAL_SPLIT = {
    "cityscapes": "val",
    "cocostuff10k": "test",
    "cocostuff164k": "val2017",
    "shapes": "val",
    "voc12": "val",
}


def parse_dataset_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``("size=[96,96]", "n_images=50")`` -> ``{"size": (96, 96), "n_images": 50}``: keyword
    arguments for the dataset, each value read as a YAML scalar (lists become tuples)."""
    options: dict[str, Any] = {}
    for item in items:
        try:
            key, value = parse_override(item)
        except ConfigError:
            raise ValueError(f"--dataset-option expects KEY=VALUE (e.g. size=[96,96]), got {item!r}") from None
        options[key] = tuple(value) if isinstance(value, list) else value
    return options


#: largest ``--scales`` value (DeepLab's multi-scale tests use 0.5 to 1.75)
MAX_SCALE = 4.0


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.5,0.75,1.0"`` -> ``(0.5, 0.75, 1.0)``; every scale finite, above 0 and at most
    ``MAX_SCALE`` (the input grows with the scale squared)."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--scales must be comma-separated numbers, got {text!r}") from None
    if not scales or any(not 0 < s <= MAX_SCALE for s in scales):  # also refuses nan and inf
        raise ValueError(f"--scales must be positive numbers, finite and at most {MAX_SCALE:g}, got {text!r}")
    return scales


#: the options a manifest row's protocol sets (``--protocol``): eval option -> protocol key
PROTOCOL_OPTIONS = {"scales": "scales", "flip": "flip", "crf": "crf", "pad_to": "pad_to", "upsample": "upsample",
                    "mean_name": "mean", "msc_resize": "msc_resize", "mean_arithmetic": "mean_arithmetic"}


def protocol_options(row_name: str, given: dict[str, object]) -> dict[str, object]:
    """``given`` (the eval options named in ``PROTOCOL_OPTIONS``) replaced by the protocol of the
    manifest's metric row ``row_name``, plus ``msc`` (True, False: evaluate the single-scale base,
    None) and ``dataset_kwargs`` (the row's warp). ``ValueError`` for an unknown row or one
    that is not a metric row."""
    rows = {row.name: row for row in load_manifest().rows}
    row = rows.get(row_name)
    if row is None or row.kind != "metric":
        raise ValueError(f"--protocol: {row_name!r} is not a metric row of the manifest (deeplab-parity list)")
    p = row.protocol() or {}
    options = {name: p[key] for name, key in PROTOCOL_OPTIONS.items()}
    options["scales"] = ",".join(f"{s:g}" for s in p["scales"])
    options["msc"] = p["msc"]
    warp = p.get("warp_size")
    options["dataset_kwargs"] = {"warp_size": warp} if warp else {}
    return {**given, **options}


def _with_protocol(row_name: str | None, given: dict[str, object]) -> dict[str, object]:
    """``protocol_options`` for ``--protocol``, refusing the options it sets when they were typed."""
    if row_name is None:
        return given
    source = click.get_current_context().get_parameter_source
    clash = [f"--{name.replace('_name', '').replace('_', '-')}" for name in PROTOCOL_OPTIONS
             if source(name) is click.core.ParameterSource.COMMANDLINE]
    if clash:
        raise ValueError(f"--protocol {row_name} sets {', '.join(clash)}: leave it out")
    return protocol_options(row_name, given)


def _resolve_protocol(row_name: str | None, given: dict[str, object],
                      dataset_options: tuple[str, ...]) -> tuple[dict[str, object], dict[str, Any]]:
    """The eval options with ``--protocol``'s applied (``_with_protocol``), and the dataset's
    keyword arguments: the row's (its warp) plus ``--dataset-option``; one that both set is refused."""
    given = _with_protocol(row_name, given)
    typed = parse_dataset_options(dataset_options)
    clash = sorted(set(typed) & set(given["dataset_kwargs"]))  # type: ignore[arg-type]
    if clash:
        raise ValueError(f"--protocol {row_name} sets the dataset option(s) {', '.join(clash)}: leave them out")
    return given, {**given["dataset_kwargs"], **typed}  # type: ignore[dict-item]


def _load_model(checkpoint_path: Path, msc_resize: str | None, fuse: bool, msc: bool | None = None):
    """The checkpoint's model (MSC resize overridden; with ``msc`` False its single-scale base,
    True: it must be MSC; BN folded with ``fuse``) and its MSC resize. A bad checkpoint raises
    ``CheckpointError``: one line, exit status 2."""
    model = models.load_checkpoint(checkpoint_path, map_location="cpu")
    if msc is False and isinstance(model, models.MSC):
        model = model.base
    if msc and not isinstance(model, models.MSC):
        fail(f"{checkpoint_path}: the protocol evaluates an MSC model, the checkpoint holds a single-scale one")
    if msc_resize is not None and msc is not False:
        if not isinstance(model, models.MSC):
            fail(f"{checkpoint_path}: --msc-resize needs an MSC model, the checkpoint holds a single-scale one")
        model.resize = msc_resize
    resize = model.resize if isinstance(model, models.MSC) else None
    if fuse:
        model = models.optimize_for_inference(model, inplace=True)  # the unfused model is not used again
    return model, resize


@click.command("eval", cls=ContractCommand)
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Converted or trained checkpoint (.pth / .safetensors).")
@click.option("--dataset", "dataset_name", required=True,
              type=click.Choice(list(DEFAULT_EVAL_SPLIT)), help="Dataset name.")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Dataset root folder (not needed for 'shapes').")
@click.option("--split", default=None,
              help="Split (default: " + ", ".join(f"{split} for {name}" for name, split in DEFAULT_EVAL_SPLIT.items())
                   + "). A voc12 root needs only the stock VOC 2012 files for val; train_aug needs SBD's.")
@click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument for the dataset, repeatable, value read as YAML: e.g. for shapes the "
                   "recipe's size=[96,96] (a training config's eval.kwargs); for cocostuff10k warp_size=513.")
@click.option("--scales", default="1.0", show_default=True,
              help="Comma-separated test scales; softmax probabilities are averaged.")
@click.option("--flip", is_flag=True, help="Also average the horizontally flipped input (it runs in the same forward as the image: the batch doubles).")
@click.option("--crf", is_flag=True, help="DenseCRF post-processing (needs pydensecrf2).")
@click.option("--crf-processes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker processes for the CRF (0 = inline).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--pad-to", type=click.IntRange(min=1), default=None,
              help="Pad inputs bottom/right to this size like Caffe's test crop (e.g. 513).")
@click.option("--upsample", type=click.Choice(UPSAMPLING), default="align_corners_false", show_default=True,
              help="Score map to label size: caffe_interp = DeepLab's test net (Interp zoom 8; with --pad-to 513), "
                   "align_corners_false = the PyTorch port, align_corners_true = DeepLabv3.pytorch, tf1_resize_bilinear = the TF port, "
                   "scale_factor_crop = Detectron2 (scale_factor = output stride, then cropped to the image).")
@click.option("--mean", "mean_name", type=click.Choice(sorted(MEANS_BGR)), default=None,
              help="BGR mean: voc (104.008, 116.669, 122.675), coco (104.0, 114.1, 120.1: the COCO-Stuff "
                   "prototxts), voc_tfport. Default: the mean the checkpoint records (another port's import), "
                   "else voc.")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N images.")
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write the results JSON here (atomically, at the end); an existing file is refused before "
                   "the evaluation starts unless --force.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@click.option("--fuse", is_flag=True,
              help="Run models.optimize_for_inference: BatchNorm folded, in-place activations, channels_last "
                   "(the same scores within float round-off, faster on CPU).")
@click.option("--msc-resize", type=click.Choice(list(models.MSC_RESIZES)), default=None,
              help="How an MSC model resizes its pyramid: Caffe's Interp (aligned corners) or the seed port's "
                   "F.interpolate(scale_factor, align_corners=False) as torch >= 1.6 computes it (deeplab-pytorch) "
                   "or as older torch did, the scale recomputed from the output size (deeplab-pytorch-pre1.6, "
                   "the port's published rows) [default: the checkpoint's own; a checkpoint converted "
                   "--from deeplab-pytorch uses deeplab-pytorch].")
@click.option("--mean-arithmetic", type=click.Choice(list(MEAN_ARITHMETIC)), default="float32", show_default=True,
              help="Subtract the mean in float32, or in float64 then cast to float32 (the seed port's "
                   "image -= mean_bgr on a float32 image with a float64 mean).")
@click.option("--protocol", "protocol_row", default=None, metavar="ROW",
              help="Evaluate as the parity manifest's metric row ROW does (deeplab-parity list): its scales, flip, "
                   "CRF, pad, upsampling, mean and mean arithmetic, MSC or single-scale base and MSC pyramid, "
                   "whatever the checkpoint says. The options it sets cannot be given with it.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_command(
    checkpoint: str, dataset_name: str, root: str | None, split: str | None, dataset_options: tuple[str, ...],
    scales: str, flip: bool, crf: bool, crf_processes: int, device: str, batch_size: int, pad_to: int | None,
    upsample: str, mean_name: str, max_images: int | None, num_workers: int, output: str | None, force: bool,
    fuse: bool, msc_resize: str | None, mean_arithmetic: str, protocol_row: str | None, progress: bool,
) -> None:
    """Evaluate a checkpoint: pixel accuracy, mean accuracy, mean IoU, FWIoU (+ DenseCRF).

    Unreadable images or labels are reported one line each and skipped; the run then ends
    with exit status 2 after writing the scores of the rest."""
    given = {"scales": scales, "flip": flip, "crf": crf, "pad_to": pad_to, "upsample": upsample,
             "mean_name": mean_name, "msc_resize": msc_resize, "mean_arithmetic": mean_arithmetic,
             "msc": None, "dataset_kwargs": {}}
    try:
        given, dataset_kwargs = _resolve_protocol(protocol_row, given, dataset_options)
        scales, flip, crf, pad_to, upsample, mean_name, msc_resize, mean_arithmetic = (
            given[name] for name in PROTOCOL_OPTIONS)
        scale_values = parse_scales(scales)
        torch_device = resolve_device(device)
    except (ValueError, ManifestError) as exc:
        fail(str(exc))

    checkpoint_path = Path(checkpoint)
    if not checkpoint_path.is_file():
        fail(f"checkpoint not found: {checkpoint_path}")
    refuse_existing(output, force)
    split = split or DEFAULT_EVAL_SPLIT[dataset_name]

    try:
        dataset = build_dataset(dataset_name, root, split, **dataset_kwargs)
        post = DenseCRF() if crf else None
    except (DatasetError, CRFUnavailableError) as exc:
        fail(str(exc))

    model, resize = _load_model(checkpoint_path, msc_resize, fuse, given["msc"])
    ctx = distributed.setup(torch_device.type)  # a process group under torchrun, else nothing
    if ctx.is_distributed and torch_device.type == "cuda":
        torch_device = resolve_device(f"cuda:{ctx.local_rank}")
    try:
        result = evaluate(
            model, dataset, device=torch_device, batch_size=batch_size, scales=scale_values,
            flip=flip, crf=post, crf_processes=crf_processes, pad_to=pad_to,
            max_images=max_images, progress=progress, num_workers=num_workers,
            upsample=upsample, mean_bgr=MEANS_BGR[mean_name] if mean_name else None, mean_arithmetic=mean_arithmetic,
            on_bad_file=lambda message: click.echo(f"error: {message}", err=True),
        )
    except (DatasetError, EvaluationError) as exc:
        fail(str(exc))
    finally:
        distributed.teardown(ctx)
    if not ctx.is_main:  # rank 0 reports; the others end with its status, silently
        raise SystemExit(EXIT_BAD_INPUT if result.failed else 0)
    print_results_table(result, getattr(dataset, "class_names", None))
    if output is not None:
        save_results_json(result, output, extra={
            "checkpoint": {"path": str(checkpoint_path), "sha256": sha256_file(checkpoint_path)},
            "dataset_root": root, "dataset_options": {k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in dataset_kwargs.items()},
            "msc_resize": resize, "protocol": protocol_row})
        click.echo(f"results written to {output}")
    if result.failed:
        n = len(result.failed) + result.n_images
        fail(f"{len(result.failed)} of {n} images could not be read (listed above); "
             f"the scores cover the other {result.n_images}")


main = eval_command

if __name__ == "__main__":
    main()
