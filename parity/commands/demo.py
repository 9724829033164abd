"""``deeplab-demo``: segment a photo, a folder of photos or a webcam stream with a checkpoint
and write, per input, a colour overlay with a class legend and a class-index mask (PNG).

Outputs are named after the input's whole file name, so ``a.jpg`` and ``a.png`` never share one:
``a.jpg_overlay.png`` (uint8 BGR, the photo blended with the class colours, legend on the right)
and ``a.jpg_mask.png`` (one channel, pixel = class index; uint8, or uint16 beyond 256 classes), as
detectron2 / mmsegmentation write masks. Webcam frames: ``frame_000000_overlay.png`` / ``_mask.png``.
Existing outputs are refused unless ``--force``; files are written through a temporary file and
renamed, so an interrupted run leaves no half-written PNG.

Colours: the standard PASCAL VOC colour map (bit-shuffled class ids, any number of classes).
Class names come from the checkpoint metadata (``class_names``) when present. Images are read
with OpenCV (BGR); the network takes BGR minus the Caffe mean; the longer side is resized down
to ``--max-side`` for inference and the probabilities are resized back (bilinear) so the
overlay has the input's resolution, one class at a time (``upsampled_argmax``), so memory does not
grow with the class count. An image whose header declares more than ``--max-pixels`` is refused
before it is decoded. The model runs in float32 whatever the checkpoint stores; a checkpoint
holding NaN or Inf is refused (it would paint one class everywhere and exit 0). ``--crf`` refines
with ``parity.evaluation.crf.DenseCRF`` (RGB; it needs every class at full size).

Exit status: 0 every input written; 2 bad input (a missing or undecodable ``--image``, empty
folder, camera that does not open, unloadable checkpoint, missing pydensecrf, existing outputs
without ``--force``) or, for ``--folder``, any image that could not be read: each such image is
one ``error: <file>: <problem>`` line, the others are still processed, and a summary line ends
the run; 3 the environment failed (output not writable, disk full); 130 Ctrl-C (the outputs
already listed are complete). Every failure is one line on stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import click
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from deeplab_caffe.models import CheckpointError, load_checkpoint
from deeplab_caffe.models.files import write_bytes_atomic
from deeplab_caffe.parity.commands.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ContractCommand, fail
from deeplab_caffe.parity.data.datasets import DatasetError, read_image
from deeplab_caffe.parity.data.transforms import MEAN_BGR
from deeplab_caffe.parity.devices import resolve_device
from deeplab_caffe.parity.evaluation.crf import DenseCRF
from deeplab_caffe.parity.evaluation.evaluate import predict_probs
from deeplab_caffe.parity.viz import add_legend, overlay, voc_palette

__all__ = [
    "Predictor",
    "BatchResult",
    "class_index_mask",
    "output_paths",
    "process_images",
    "process_stream",
    "write_outputs",
    "IMAGE_SUFFIXES",
    "main",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Largest image the demo decodes (``--max-pixels``): the photo, its overlay, its int64 labels
#: and PNG encoding take about 35 bytes a pixel (33 measured), so 20 megapixels stay within 1 GB whatever the
#: class count (the class probabilities are resized a few classes at a time: upsampled_argmax).
MAX_PIXELS = 20_000_000


class Predictor:
    """A checkpoint ready for inference on BGR images.

    ``predict(image_bgr)`` -> int64 ``H x W`` class ids at the image's resolution;
    ``render(image_bgr)`` -> the overlay with its legend (uint8 BGR).
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", crf: bool = False,
                 max_side: int = 513, alpha: float = 0.5) -> None:
        self.device = resolve_device(device)
        model = load_checkpoint(checkpoint, map_location="cpu")
        bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()), None)
        if bad is not None:  # it would predict one class everywhere and exit 0
            raise CheckpointError(f"{checkpoint}: state_dict[{bad!r}] holds NaN or Inf: the predictions would be "
                                  f"meaningless")
        # the demo computes in float32 whatever the file stores (float16 and float64 checkpoints alike)
        self.model = model.float().to(self.device).eval()
        self.n_classes = int(self.model.config["n_classes"])
        names = list(getattr(self.model, "metadata", {}).get("class_names") or [])
        if len(names) != self.n_classes:
            names = [f"class {i}" for i in range(self.n_classes)]
        self.class_names = [str(n) for n in names]
        self.palette = voc_palette(self.n_classes)
        self.max_side = int(max_side)
        self.alpha = float(alpha)
        self.crf = None
        if crf:
            self.crf = DenseCRF()

    def predict(self, image_bgr: np.ndarray) -> np.ndarray:
        """uint8 ``H x W x 3`` BGR -> int64 ``H x W`` class ids."""

        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 H x W x 3 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
        h, w = image_bgr.shape[:2]
        small = image_bgr
        if self.max_side > 0 and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            small = cv2.resize(image_bgr, (max(round(w * s), 1), max(round(h * s), 1)),
                               interpolation=cv2.INTER_LINEAR)
        x = small.astype(np.float32) - np.asarray(MEAN_BGR, dtype=np.float32)
        x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(self.device)
        with torch.inference_mode():
            probs = predict_probs(self.model, x_t, tuple(x_t.shape[-2:]))[0].float().cpu()
            if self.crf is None:
                return upsampled_argmax(probs, (h, w)).numpy()
            if probs.shape[-2:] != (h, w):  # DenseCRF needs every class at full size
                probs = F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        refined = self.crf(np.ascontiguousarray(image_bgr[..., ::-1]), probs.numpy())
        return refined.argmax(axis=0).astype(np.int64)

    def render(self, image_bgr: np.ndarray) -> np.ndarray:
        """The colour overlay of the prediction plus a legend of the classes present."""
        return self.render_label(image_bgr, self.predict(image_bgr))

    def render_label(self, image_bgr: np.ndarray, label: np.ndarray) -> np.ndarray:
        """The colour overlay of ``label`` (``H x W`` class ids) plus a legend of its classes."""
        present = [int(c) for c in np.unique(label)]
        return add_legend(overlay(image_bgr, label, self.palette, self.alpha), present,
                          self.class_names, self.palette)


def upsampled_argmax(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """int64 ``H x W`` argmax over classes of ``probs`` (``C x h x w``) resized to ``size = (H, W)``
    bilinearly (``align_corners=False``), without ever holding all ``C x H x W`` values: one class
    at a time is resized and compared with the running maximum (about 17 bytes a pixel whatever
    ``C``). Equals ``F.interpolate(probs[None], size)[0].argmax(0)``, the first class winning ties."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs.argmax(dim=0)
    best = F.interpolate(probs[None, :1], size=size, mode="bilinear", align_corners=False)[0, 0]
    label = torch.zeros(size, dtype=torch.int64)
    for c in range(1, probs.shape[0]):
        value = F.interpolate(probs[None, c:c + 1], size=size, mode="bilinear", align_corners=False)[0, 0]
        label.masked_fill_(value > best, c)  # strictly greater: an earlier class keeps a tie
        torch.maximum(best, value, out=best)
    return label


class _Capture(Protocol):
    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)
    def read(self) -> tuple[bool, Any]: ...
    def release(self) -> None: ...


def output_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    """``(overlay, mask)`` PNG paths for an input called ``name`` (the whole file name, suffix
    included, so two inputs of one folder never share an output)."""
    return out_dir / f"{name}_overlay.png", out_dir / f"{name}_mask.png"


def class_index_mask(label: np.ndarray) -> np.ndarray:
    """``H x W`` class ids -> the mask written to PNG: uint8 (pixel = class index), or uint16
    when an id exceeds 255."""
    dtype = np.uint8 if label.size == 0 or int(label.max()) <= 255 else np.uint16
    return label.astype(dtype)


def _write_png(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` as PNG and write it atomically (temporary file, rename); ``OSError``
    when the folder is not writable or the disk is full."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"OpenCV cannot encode a {image.dtype} {image.shape} image as PNG")
    write_bytes_atomic(path, encoded.tobytes())  # an OSError names ``path``


def write_outputs(predictor: Predictor, image_bgr: np.ndarray, out_dir: Path,
                  name: str) -> tuple[Path, Path]:
    """Predict ``image_bgr`` and write its overlay and class-index mask; returns their paths."""
    label = predictor.predict(image_bgr)
    overlay_path, mask_path = output_paths(out_dir, name)
    _write_png(overlay_path, predictor.render_label(image_bgr, label))
    _write_png(mask_path, class_index_mask(label))
    return overlay_path, mask_path


def process_stream(capture: _Capture, predictor: Predictor, output: Path,
                   max_frames: int | None = None, display: bool = False) -> int:
    """Render frames from an OpenCV-like ``capture`` until it ends, ``max_frames`` frames are
    done, or (with ``display``) q / ESC is pressed. Frame ``i`` is written as
    ``output/frame_{i:06d}_overlay.png`` and ``_mask.png``. Returns the number of frames processed."""
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            overlay_path, _ = write_outputs(predictor, frame, output, f"frame_{n:06d}")
            n += 1
            if display:
                cv2.imshow("deeplab-demo", cv2.imread(str(overlay_path)))
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    finally:
        capture.release()
        if display:
            cv2.destroyAllWindows()
    return n


def _gui_available() -> bool:
    try:
        cv2.namedWindow("deeplab-demo")
        cv2.destroyWindow("deeplab-demo")
        return True
    except cv2.error:
        return False


@dataclass
class BatchResult:
    """What ``process_images`` did: the outputs written per input, and the inputs that failed
    with their one-line problem."""

    written: list[tuple[Path, Path]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def process_images(paths: list[Path], predictor: Predictor, out_dir: Path,
                   report: Callable[[str, bool], None] = lambda line, ok: None,
                   max_pixels: int | None = MAX_PIXELS) -> BatchResult:
    """Write the overlay and mask of every image in ``paths``; an image that cannot be read, or
    whose header declares more than ``max_pixels`` pixels, is recorded in ``failed`` and the
    others still run. ``report(line, ok)`` is called once per input as it finishes. ``OSError``
    (disk full, not writable) stops the batch."""
    result = BatchResult()
    for path in paths:
        try:
            image = read_image(path, max_pixels)
        except DatasetError as err:
            result.failed.append(str(err))
            report(str(err), False)
            continue
        outputs = write_outputs(predictor, image, out_dir, path.name)
        result.written.append(outputs)
        report(f"{outputs[0]}\n{outputs[1]}", True)
    return result


def _inputs(image: str | None, folder: str | None, out_dir: Path, max_pixels: int | None) -> list[Path]:
    """The images to segment; in a folder that is also the output folder, the demo's own
    ``*_overlay.png`` / ``*_mask.png`` are not inputs."""
    if image is not None:
        read_image(Path(image), max_pixels)  # fail before loading the model
        return [Path(image)]
    folder_path = Path(folder or "")
    if not folder_path.is_dir():
        fail(f"{folder_path}: folder not found")
    ours = ("_overlay.png", "_mask.png") if out_dir.resolve() == folder_path.resolve() else ()
    found = sorted(p for p in folder_path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.is_dir() and not (ours and p.name.endswith(ours)))
    if not found:
        fail(f"{folder_path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _refuse_existing(out_dir: Path, names: list[str], force: bool) -> None:
    """One line naming the first existing output, unless ``force``."""
    if force:
        return
    existing = [p for name in names for p in output_paths(out_dir, name) if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        fail(f"{existing[0]}: output exists{more}; pass --force to overwrite", EXIT_BAD_INPUT)


def _echo_result(line: str, ok: bool) -> None:
    click.echo(line if ok else f"error: {line}", err=not ok)


@click.command("deeplab-demo", cls=ContractCommand)
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Trained or converted checkpoint (.pth / .safetensors).")
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="One image.")
@click.option("--folder", type=click.Path(file_okay=False), default=None,
              help="Every image in a folder (not recursive); unreadable ones are reported and skipped.")
@click.option("--webcam", type=int, default=None, help="Camera index for cv2.VideoCapture.")
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="Folder for <input name>_overlay.png and <input name>_mask.png (created).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--crf", is_flag=True, help="Refine with DenseCRF (needs pydensecrf2).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--max-side", type=click.IntRange(min=0), default=513, show_default=True,
              help="Resize the longer side down to this for inference (0 = never).")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Opacity of the class colours.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Webcam: stop after this many frames.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS, show_default=True,
              help="Refuse an image whose header declares more pixels, before decoding it "
                   "(about 35 bytes of memory a pixel).")
def main(checkpoint: str, image: str | None, folder: str | None, webcam: int | None, output: str,
         force: bool, crf: bool, device: str, max_side: int, alpha: float,
         max_frames: int | None, max_pixels: int) -> None:
    """Write colour overlays (with a class legend) and class-index masks (PNG) of a
    checkpoint's predictions: <input file name>_overlay.png and _mask.png (pixel = class index).

    Exit status: 0 every input written; 2 bad input or existing outputs without --force, and
    for --folder any unreadable image (one line each; the others are still written); 3 disk
    full or not writable; 130 Ctrl-C (the outputs already listed are complete)."""
    if sum(x is not None for x in (image, folder, webcam)) != 1:
        fail("give exactly one of --image, --folder, --webcam")
    out_dir = Path(output)
    try:
        inputs = [] if webcam is not None else _inputs(image, folder, out_dir, max_pixels)
    except DatasetError as err:
        fail(str(err))
    _refuse_existing(out_dir, [p.name for p in inputs] if inputs else ["frame_000000"], force)
    try:
        predictor = Predictor(checkpoint, device=device, crf=crf, max_side=max_side, alpha=alpha)
    except (CheckpointError, ValueError, ImportError) as err:
        fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    try:  # an OSError (disk full: 3, naming the file) goes to the contract's wrapper
        out_dir.mkdir(parents=True, exist_ok=True)
        if webcam is not None:
            _run_webcam(webcam, predictor, out_dir, max_frames)
            return
        result = process_images(inputs, predictor, out_dir, report=_echo_result, max_pixels=max_pixels)
    except KeyboardInterrupt:  # every output already written is complete (written atomically)
        fail(f"{out_dir}: interrupted; the outputs listed above are complete", EXIT_INTERRUPTED)
    if result.failed:
        fail(f"{len(result.failed)} of {len(inputs)} images could not be read (listed above); "
             f"{len(result.written)} written to {out_dir}", EXIT_BAD_INPUT)


def _run_webcam(index: int, predictor: Predictor, out_dir: Path, max_frames: int | None) -> None:
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        fail(f"cannot open camera {index}")
    n = process_stream(capture, predictor, out_dir, max_frames=max_frames, display=_gui_available())
    click.echo(f"{n} frames written to {out_dir}")


if __name__ == "__main__":
    main()
