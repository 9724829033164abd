"""``deeplab-export``: a checkpoint to ONNX, TorchScript or a plain state_dict.

    deeplab-export --checkpoint voc12.pth --format onnx --output voc12.onnx
    deeplab-export --checkpoint port.pth --format state_dict --layout deeplab-pytorch --output port_layout.pth

A thin layer over ``models.export`` (formats, atomic writes, the checks) and, for ``--layout``,
``converter.foreign`` (our weights in another port's key layout). ONNX and TorchScript files are
run against the PyTorch model before they are put in place (onnxruntime / ``torch.jit.load``);
a file that disagrees beyond ``--rtol`` is not written.

Exit status: 0 written (and checked), 1 the exported file disagrees with PyTorch or the exporter
failed (nothing written), 2 bad input (one ``error: ...`` line: checkpoint, options, an existing output without
``--force``), 3 environment (onnxruntime missing, disk full, permission denied: one line naming the output).
Every format is written to a hidden ``.<name>.<random>.tmp`` beside the output and renamed; the next
export to the same file removes the temporaries a killed one left.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from torch import nn

from deeplab_caffe import models
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.options import TOLERANCE
from deeplab_caffe.converter.foreign import FORMATS as LAYOUTS
from deeplab_caffe.converter.progress import StepProgress
from deeplab_caffe.models import export
from deeplab_caffe.models.files import remove_stale_temps
from deeplab_caffe.parity.commands.errors import (EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_ENVIRONMENT, EXIT_OK,
                                                  ContractCommand, fail)

__all__ = ["main", "run_export", "parse_sizes", "DEFAULT_CHECK_SIZES"]

#: the sizes an export is checked at unless ``--check-sizes`` says otherwise (and the model accepts them)
DEFAULT_CHECK_SIZES = [(321, 321), (257, 385)]


#: largest side ``--check-sizes`` accepts (a ResNet-101 forward at 2048 x 2048 already takes GBs)
MAX_CHECK_SIDE = 2048


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"321x321,257x385"`` -> ``[(321, 321), (257, 385)]`` (height x width, each >= ``MIN_SIDE``)."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        h, sep, w = part.partition("x")
        if not (sep and h.isdigit() and w.isdigit()):
            raise ValueError(f"--check-sizes takes HxW pairs such as 321x321,257x385, got {part!r}")
        if min(int(h), int(w)) < export.MIN_SIDE:
            raise ValueError(f"--check-sizes: {part} is below the smallest side the exports accept ({export.MIN_SIDE})")
        if max(int(h), int(w)) > MAX_CHECK_SIDE:
            raise ValueError(f"--check-sizes: {part} is above the largest side checked ({MAX_CHECK_SIDE}: the "
                             f"forward's memory grows with it)")
        sizes.append((int(h), int(w)))
    if not sizes:
        raise ValueError("--check-sizes needs at least one HxW size")
    return sizes


def _sizes_for(model: nn.Module, sizes: list[tuple[int, int]] | None
               ) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """``(min_size, check_sizes)``: the smallest input (H, W) the exported file will accept (the
    model's, ``models.smallest_input_size``, and at least ``MIN_SIDE``) and the sizes to check it
    at. ``None``: ``DEFAULT_CHECK_SIZES``, or when the model needs inputs that fit a fixed pooling
    window (Detectron2's 32 x 64: 497 x 1009 and up), that smallest size and the next one the
    window tiles (features twice the window). A given size the model refuses is a ``ValueError``.
    The exported graph itself cannot refuse a size: it computes whatever it is given."""
    config = model.config
    smallest = models.smallest_input_size(config)
    min_size = (max(export.MIN_SIDE, smallest[0]), max(export.MIN_SIDE, smallest[1]))
    if sizes is None:
        sizes = DEFAULT_CHECK_SIZES
        if not all(models.accepts_input_size(config, size) for size in sizes):
            window = models.smallest_input_size({**config, "head": {**config["head"], "pooling_kernel": [
                2 * k for k in config["head"]["pooling_kernel"]]}})
            sizes = [min_size, window]
    for h, w in sizes:
        if h < min_size[0] or w < min_size[1] or not models.accepts_input_size(config, (h, w)):
            raise ValueError(f"--check-sizes: {h}x{w} is not an input this model accepts (from "
                             f"{min_size[0]}x{min_size[1]}: its image-pooling window must tile the features)")
    return min_size, sizes


def _check_paths(checkpoint: Path, output: Path, force: bool) -> None:
    if not checkpoint.is_file():
        raise ValueError(f"{checkpoint}: no such checkpoint file")
    if output.exists() and not force:
        raise ValueError(f"{output}: exists (pass --force to replace it)")
    if output.is_dir():
        raise ValueError(f"{output}: is a folder")
    if not output.parent.is_dir():
        raise ValueError(f"{output}: output folder does not exist")
    remove_stale_temps([output])  # what a killed export of the same file left behind


#: torch's ONNX exporter logs a warning per torchvision operator it cannot register when the
#: optional torchvision is absent; our models use none of them
_TORCHVISION_NOTICES = "torch.onnx._internal.exporter._registration"


@contextmanager
def _quiet_optional_packages() -> Iterator[None]:
    """Silence the exporter's notices about optional packages (torchvision) while it runs."""
    logger = logging.getLogger(_TORCHVISION_NOTICES)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _heartbeat(steps: StepProgress) -> Iterator[None]:
    """While a single long step runs (the exporter is one opaque call of a minute or more on a
    CPU), print ``steps.line()`` every ``steps.interval_s`` on a non-terminal; a terminal's bar
    shows the elapsed time itself."""
    if not steps.enabled or steps.bar is not None or steps.interval_s <= 0:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(steps.interval_s):
            print(steps.line() + " (exporting)", file=steps.stream, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_export(checkpoint: Path, fmt: str, output: Path, *, layout: str = "ours", force: bool = False,
               sizes: list[tuple[int, int]] | None = None, rtol: float = 1e-4, opset: int = export.ONNX_OPSET,
               progress: bool = True) -> int:
    """The command's work, callable from tests; returns the exit status. Bad input raises
    ``ValueError`` (``CheckpointError``, ``ConversionError``). ``progress``: the steps (the
    export, then a check per size) on stderr, a bar on a terminal, plain lines elsewhere."""
    checkpoint, output = Path(checkpoint), Path(output)
    _check_paths(checkpoint, output, force)
    if layout != "ours" and fmt != "state_dict":
        raise ValueError(f"--layout {layout} applies to --format state_dict only")
    if fmt == "onnx":
        export.check_opset(opset)
    model = models.load_checkpoint(checkpoint)
    if fmt == "state_dict":
        state = model.state_dict() if layout == "ours" else LAYOUTS[layout].write_layout(model, checkpoint)
        export.write_atomic(output, lambda tmp: export.save_state_dict(state, tmp))
        click.echo(f"wrote {output}: {len(state)} tensors, {layout} key layout")
        return EXIT_OK
    min_size, sizes = _sizes_for(model, sizes)
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401  (the check needs it; say so before the slow export)
        except ImportError as err:
            fail(f"--format onnx checks the file with onnxruntime, which is missing ({err}): pip install onnxruntime "
                 "onnxscript", EXIT_ENVIRONMENT)
        check, reference = export.check_onnx, "onnxruntime"
    else:
        check, reference = export.check_torchscript, "torch.jit.load"

    def write(tmp: Path) -> None:
        with _quiet_optional_packages(), _heartbeat(steps):
            if fmt == "onnx":
                export.export_onnx(model, tmp, opset=opset, example_size=example, min_size=min_size)
            else:
                export.export_torchscript(model, tmp, example_size=example)
        steps.advance()

    example = (max(65, min_size[0]), max(65, min_size[1]))
    checks: list[export.OutputCheck] = []

    def passes(tmp: Path) -> bool:
        for size in sizes:
            checks.extend(check(tmp, model, [size], rtol))
            steps.advance()
        return all(c.ok for c in checks)

    if progress:
        click.echo(f"export: {fmt} of {checkpoint}, traced at {example[0]}x{example[1]}, then checked with {reference} "
                   f"at {', '.join(f'{h}x{w}' for h, w in sizes)} ({1 + len(sizes)} steps)", err=True)
    with StepProgress("export", 1 + len(sizes), enabled=progress) as steps:
        written = export.write_atomic(output, write, passes)
    for c in checks:
        click.echo(f"{reference} vs PyTorch at {c.size[0]}x{c.size[1]}: logits {'x'.join(map(str, c.shape))}, "
                   f"max rel. error {c.max_rel:.2e} (tolerance {rtol:g}) {'ok' if c.ok else 'FAILED'}")
    if not written:
        click.echo(f"error: {output}: the exported {fmt} disagrees with PyTorch beyond {rtol:g}; not written", err=True)
        return EXIT_CHECK_FAILED
    what = f"onnx, opset {opset}, dynamic batch/height/width" if fmt == "onnx" else "torchscript, traced"
    click.echo(f"wrote {output} ({what})")
    return EXIT_OK


@click.command("deeplab-export", cls=ContractCommand)
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Converted or trained checkpoint (.pth / .safetensors).")
@click.option("--format", "fmt", required=True, type=click.Choice(export.FORMATS),
              help="onnx (dynamic batch/height/width, MSC included, checked with onnxruntime), torchscript (traced, "
                   "checked by loading it back) or state_dict (plain {key: tensor}).")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="File to write (atomically).")
@click.option("--layout", type=click.Choice(["ours", *[n for n, f in LAYOUTS.items() if f.write_layout]]),
              default="ours", show_default=True,
              help="Key layout of --format state_dict: ours, or another port's (deeplab-pytorch: the seed port's "
                   "MSC(DeepLabV2) keys, loadable by it with strict=True).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--check-sizes", "sizes", default=None,
              help="Input sizes (HxW) the exported file is run at against PyTorch. [default: 321x321,257x385; for "
                   "a model whose fixed pooling window must tile the features (Detectron2's) its smallest size and the "
                   "next one the window tiles]")
@click.option("--rtol", type=TOLERANCE, default=1e-4, show_default=True,
              help="Largest max|exported - pytorch| / max|pytorch| of the logits accepted.")
@click.option("--opset", type=click.IntRange(min=18), default=export.ONNX_OPSET, show_default=True,
              help="ONNX opset (Resize with align_corners, Caffe's Interp, exists from 11; the exporter starts at 18).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="The steps on stderr: a bar on a terminal, a plain line every 30 s in a log.")
def main(checkpoint: Path, fmt: str, output: Path, layout: str, force: bool, sizes: str, rtol: float,
         opset: int, progress: bool) -> None:
    """Export a checkpoint to ONNX, TorchScript or a plain state_dict.

    Input of the exported model: float32 N x 3 x H x W, BGR 0-255 minus the mean; output: the logits.
    Exit status: 0 written, 1 the exported file disagrees with PyTorch or the exporter failed
    (nothing written), 2 bad input, 3 environment (disk full: one line naming the output, no
    temporary left). A killed export's temporaries are removed by the next export to that file.
    """
    try:
        code = run_export(checkpoint, fmt, output, layout=layout, force=force, sizes=None if sizes is None else parse_sizes(sizes),
                          rtol=rtol, opset=opset, progress=progress)
    except (ValueError, ConversionError) as err:  # CheckpointError is a ValueError
        fail(str(err), EXIT_BAD_INPUT)
    except export.ExportError as err:
        fail(f"{output}: {err}", EXIT_CHECK_FAILED)
    sys.exit(code)  # a full disk (3) or Ctrl-C (130): the contract's ContractCommand


if __name__ == "__main__":
    main()
