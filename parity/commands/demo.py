"""``deeplab-demo``: segment a photo, a folder of photos or a webcam stream with a checkpoint
and write colour overlays (PNG) with a class legend.

Colours: the standard PASCAL VOC colour map (bit-shuffled class ids, any number of classes).
Class names come from the checkpoint metadata (``class_names``) when present. Images are read
with OpenCV (BGR); the network takes BGR minus the Caffe mean; the longer side is resized down
to ``--max-side`` for inference and the probabilities are resized back (bilinear) so the
overlay has the input's resolution. ``--crf`` refines with ``parity.evaluation.crf.DenseCRF`` (RGB).

Bad input (missing/unreadable image, empty folder, camera that does not open, unloadable
checkpoint, missing pydensecrf) prints one ``error: ...`` line on stderr and exits with 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import click
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from deeplab_caffe.models import CheckpointError, load_checkpoint
from deeplab_caffe.parity.commands.errors import OneLineErrorCommand, fail
from deeplab_caffe.parity.data.transforms import MEAN_BGR
from deeplab_caffe.parity.devices import resolve_device
from deeplab_caffe.parity.evaluation.crf import DenseCRF
from deeplab_caffe.parity.evaluation.evaluate import predict_probs
from deeplab_caffe.parity.viz import add_legend, overlay, voc_palette

__all__ = [
    "Predictor",
    "process_stream",
    "IMAGE_SUFFIXES",
    "main",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class Predictor:
    """A checkpoint ready for inference on BGR images.

    ``predict(image_bgr)`` -> int64 ``H x W`` class ids at the image's resolution;
    ``render(image_bgr)`` -> the overlay with its legend (uint8 BGR).
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", crf: bool = False,
                 max_side: int = 513, alpha: float = 0.5) -> None:
        self.device = resolve_device(device)
        self.model = load_checkpoint(checkpoint, map_location="cpu").to(self.device).eval()
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
            probs = predict_probs(self.model, x_t, tuple(x_t.shape[-2:]))
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            probs = probs[0].float().cpu()
        if self.crf is not None:
            refined = self.crf(np.ascontiguousarray(image_bgr[..., ::-1]), probs.numpy())
            return refined.argmax(axis=0).astype(np.int64)
        return probs.argmax(dim=0).numpy().astype(np.int64)

    def render(self, image_bgr: np.ndarray) -> np.ndarray:
        """The colour overlay of the prediction plus a legend of the classes present."""
        label = self.predict(image_bgr)
        present = [int(c) for c in np.unique(label)]
        return add_legend(overlay(image_bgr, label, self.palette, self.alpha), present,
                          self.class_names, self.palette)


class _Capture(Protocol):
    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)
    def read(self) -> tuple[bool, Any]: ...
    def release(self) -> None: ...


def process_stream(capture: _Capture, predictor: Predictor, output: Path,
                   max_frames: int | None = None, display: bool = False) -> int:
    """Render frames from an OpenCV-like ``capture`` until it ends, ``max_frames`` frames are
    done, or (with ``display``) q / ESC is pressed. Each frame is written to
    ``output/frame_{i:06d}.png``. Returns the number of frames processed."""
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            rendered = predictor.render(frame)
            cv2.imwrite(str(output / f"frame_{n:06d}.png"), rendered)
            n += 1
            if display:
                cv2.imshow("deeplab-demo", rendered)
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




def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        fail(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        fail(f"cannot decode image: {path}")
    return image


@click.command("deeplab-demo", cls=OneLineErrorCommand)
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Trained or converted checkpoint (.pth / .safetensors).")
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="One image.")
@click.option("--folder", type=click.Path(file_okay=False), default=None,
              help="Every image in a folder (not recursive).")
@click.option("--webcam", type=int, default=None, help="Camera index for cv2.VideoCapture.")
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="Folder for the overlay PNGs (created).")
@click.option("--crf", is_flag=True, help="Refine with DenseCRF (needs pydensecrf2).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--max-side", type=click.IntRange(min=0), default=513, show_default=True,
              help="Resize the longer side down to this for inference (0 = never).")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Opacity of the class colours.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Webcam: stop after this many frames.")
def main(checkpoint: str, image: str | None, folder: str | None, webcam: int | None, output: str,
         crf: bool, device: str, max_side: int, alpha: float, max_frames: int | None) -> None:
    """Write colour overlays (PNG, with a class legend) of a checkpoint's predictions."""
    if sum(x is not None for x in (image, folder, webcam)) != 1:
        fail("give exactly one of --image, --folder, --webcam")
    inputs: list[Path] = []
    if image is not None:
        inputs = [Path(image)]
        _read_image(inputs[0])  # fail before loading the model
    elif folder is not None:
        folder_path = Path(folder)
        if not folder_path.is_dir():
            fail(f"folder not found: {folder_path}")
        inputs = sorted(p for p in folder_path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not inputs:
            fail(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder_path}")
    try:
        predictor = Predictor(checkpoint, device=device, crf=crf, max_side=max_side, alpha=alpha)
    except (CheckpointError, ValueError, ImportError) as err:
        fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    out_dir = Path(output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"cannot create output folder {out_dir}: {err.strerror or err}")

    if webcam is not None:
        capture = cv2.VideoCapture(webcam)
        if not capture.isOpened():
            fail(f"cannot open camera {webcam}")
        display = _gui_available()
        n = process_stream(capture, predictor, out_dir, max_frames=max_frames, display=display)
        click.echo(f"{n} frames written to {out_dir}")
        return
    for path in inputs:
        rendered = predictor.render(_read_image(path))
        target = out_dir / f"{path.stem}_overlay.png"
        if not cv2.imwrite(str(target), rendered):
            fail(f"cannot write {target}")
        click.echo(str(target))


if __name__ == "__main__":
    main()
