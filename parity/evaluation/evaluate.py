"""Evaluation loop: (multi-scale, flipped) inference, optional DenseCRF, confusion matrix.

Per image: BGR mean subtraction (``mean_bgr``; and optional bottom/right padding to ``pad_to``,
Caffe's 513 test crop), for each scale ``s`` the input is resized bilinearly to ``floor(H' * s)
x floor(W' * s)``, run through the model (with ``flip`` its horizontal mirror rides in the same
forward, the batch doubled, and the mirrored scores are flipped back), the stride-8
logits are upsampled (``upsample``, see ``UPSAMPLING``), cropped to the label size and turned
into softmax probabilities; the probabilities of all passes are averaged. The prediction is
their argmax, or the argmax of the DenseCRF marginals computed on them.

``UPSAMPLING`` names the ways a protocol brings the score map to the label size:

- ``caffe_interp``: DeepLab's test net, ``fc1_interp`` = Caffe ``Interp`` with ``zoom_factor: 8``
  (output ``(h - 1) * 8 + 1``, corners aligned; 65 -> 513 for the 513 test crop), then the
  prediction cropped to the image (top-left), as the official evaluation scripts crop it;
- ``align_corners_false``: ``F.interpolate(..., mode="bilinear", align_corners=False)`` to the
  (padded) input size, then cropped: the PyTorch port's evaluation;
- ``align_corners_true``: the same with ``align_corners=True``: DeepLabv3.pytorch, whose model
  ends in ``nn.Upsample(input size, mode="bilinear", align_corners=True)``;
- ``tf1_resize_bilinear``: TensorFlow 1's ``tf.image.resize_bilinear`` (corners not aligned, no
  half-pixel offset: source ``y = out_y * in / out``) to the input size: the TF port's evaluation;
- ``scale_factor_crop``: Detectron2's (``projects/DeepLab`` heads and ``sem_seg_postprocess`` @
  02b5c4e): ``F.interpolate(scale_factor=output stride, align_corners=False)``, i.e. to
  ``h * stride x w * stride`` with source ``(y + 0.5) / stride - 0.5``, then cropped top-left to
  the image. It differs from ``align_corners_false`` unless the input sides are multiples of
  the stride. The stride is the model's (``models.output_stride``: 16 for v3, 4 for v3+).
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from deeplab_caffe.models.files import write_text_atomic
from deeplab_caffe import models
from deeplab_caffe.models.interp import caffe_interp_layer
from deeplab_caffe.converter.progress import StepProgress
from deeplab_caffe.parity.data.datasets import DatasetError
from deeplab_caffe.parity.data.transforms import MEAN_BGR, EvalTransform
from deeplab_caffe.parity.evaluation.crf import DenseCRF, crf_batch, crf_pool, crf_submit
from deeplab_caffe.parity.evaluation.metrics import SCORE_KEYS, ConfusionMatrix, scores_from_confusion


UPSAMPLING = ("caffe_interp", "align_corners_false", "align_corners_true", "tf1_resize_bilinear", "scale_factor_crop")
#: ``fc1_interp``'s ``zoom_factor`` in DeepLab's test nets: the network's output stride
CAFFE_TEST_ZOOM = 8


class EvaluationError(ValueError):
    """The model and the data do not fit together (one-line message)."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)


def _tf1_axis(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (low, high) and weights of TF 1 ``resize_bilinear`` along one axis
    (float32 scale ``n_in / n_out``, source ``out * scale``, clamped at the last pixel)."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    pos = torch.arange(n_out, dtype=torch.float32) * scale
    low = pos.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    return low.to(device), high.to(device), (pos - low.float()).to(device)


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1's ``tf.image.resize_bilinear(x, size)`` (``align_corners=False``, no
    half-pixel centres) of an ``N x C x H x W`` float tensor; separable, vectorised."""
    low, high, w = _tf1_axis(x.shape[-2], int(size[0]), x.device)
    x = x[:, :, low] * (1 - w)[:, None] + x[:, :, high] * w[:, None]
    low, high, w = _tf1_axis(x.shape[-1], int(size[1]), x.device)
    return x[..., low] * (1 - w) + x[..., high] * w


def upsample_scores(logits: torch.Tensor, input_size: tuple[int, int], out_size: tuple[int, int],
                    mode: str = "align_corners_false", stride: int | None = None) -> torch.Tensor:
    """Logits ``N x C x h x w`` of an ``input_size`` (padded) input, brought to the label size
    ``out_size = (H, W)`` by one of ``UPSAMPLING`` (module docstring) and cropped there
    (top-left); ``stride`` (the model's output stride) for ``scale_factor_crop``.
    ``EvaluationError`` for an unknown mode, a missing stride, or an upsampled map that falls
    short of the label (the official test nets pad every image to 513 first: use ``pad_to``)."""
    logits = logits.float()
    if mode == "caffe_interp":
        up = caffe_interp_layer(logits, zoom=CAFFE_TEST_ZOOM)
        if up.shape[-2] < out_size[0] or up.shape[-1] < out_size[1]:
            raise EvaluationError(
                f"caffe_interp: zoom_factor {CAFFE_TEST_ZOOM} turns the {logits.shape[-2]}x{logits.shape[-1]} score "
                f"map into {up.shape[-2]}x{up.shape[-1]}, smaller than the {out_size[0]}x{out_size[1]} label; pad "
                f"inputs to a multiple of 8 plus 1 (pad_to 513, the official test crop)")
    elif mode in ("align_corners_false", "align_corners_true"):
        up = F.interpolate(logits, size=input_size, mode="bilinear", align_corners=mode == "align_corners_true")
    elif mode == "tf1_resize_bilinear":
        up = tf1_resize_bilinear(logits, input_size)
    elif mode == "scale_factor_crop":
        if stride is None:
            raise EvaluationError("scale_factor_crop needs the model's output stride (a model with a config)")
        up = F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)
        if up.shape[-2] < out_size[0] or up.shape[-1] < out_size[1]:
            raise EvaluationError(f"scale_factor_crop: the {logits.shape[-2]}x{logits.shape[-1]} score map times "
                                  f"{stride} is smaller than the {out_size[0]}x{out_size[1]} label")
    else:
        raise EvaluationError(f"unknown upsampling {mode!r} (known: {', '.join(UPSAMPLING)})")
    return up[:, :, : out_size[0], : out_size[1]]


@dataclass
class EvalResult:
    """What ``evaluate`` measured. Scores are fractions 0-1.

    - ``scores``: the ``parity.evaluation.metrics`` dict ("Pixel Accuracy", "Mean Accuracy", "Mean IoU",
      "Frequency Weighted IoU", "Class IoU" {index: IoU or NaN});
    - ``class_iou``: per-class IoU list, None for classes absent from GT and prediction;
    - ``confusion``: int64 ``n x n`` counts (rows GT, columns prediction);
    - ``n_images``, ``n_pixels`` (labelled pixels counted), ``class_pixels`` (GT pixels per class);
    - ``timings``: seconds (``total_s``, ``data_s``, ``model_s``, ``crf_s``) and ``images_per_s``;
    - ``settings``: the options used (scales, flip, crf parameters, pad_to, device, ...);
    - ``failed``: one line per sample whose image or label could not be read (skipped; the
      scores cover the others). Empty unless ``evaluate`` got ``on_bad_file``.
    """

    scores: dict
    class_iou: list[float | None]
    confusion: np.ndarray
    n_images: int
    n_pixels: int
    class_pixels: list[int]
    timings: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN -> None, class IoU keys as strings)."""
        return {
            "scores": {k: _finite_or_none(self.scores[k]) for k in SCORE_KEYS},
            "class_iou": list(self.class_iou),
            "n_images": self.n_images,
            "n_pixels": self.n_pixels,
            "class_pixels": list(self.class_pixels),
            "timings": dict(self.timings),
            "settings": _jsonable(self.settings),
            "confusion_matrix": self.confusion.tolist(),
            "failed": list(self.failed),
        }


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(obj)
    if isinstance(obj, (Path, torch.device)):
        return str(obj)
    return obj


def _model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, Mapping):  # MSC forward_msc-style or torchvision-style outputs
        for key in ("fused", "out"):
            if key in out:
                return out[key]
        raise EvaluationError(f"model returned a dict without 'fused'/'out' (keys {list(out)})")
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise EvaluationError("model must return N x C x h x w logits")
    return out


def predict_probs(
    model: nn.Module,
    x: torch.Tensor,
    out_size: tuple[int, int],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    upsample: str = "align_corners_false",
) -> torch.Tensor:
    """Averaged softmax probabilities ``N x C x h x w`` for a mean-subtracted BGR batch.

    ``x``: ``N x 3 x H' x W'`` (possibly padded); ``out_size = (h, w)`` the unpadded size the
    result is cropped to; ``upsample`` one of ``UPSAMPLING``. See the module docstring. An input
    the model refuses (``models.InputSizeError``) is an ``EvaluationError``.
    """
    config = getattr(model, "config", None)
    stride = models.output_stride(config) if upsample == "scale_factor_crop" and config else None
    _, _, hp, wp = x.shape
    total: torch.Tensor | None = None
    n_passes = 0
    for s in scales:
        if s == 1.0:
            xs = x
        else:
            size = (max(int(hp * s), 1), max(int(wp * s), 1))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        try:
            if flip:  # one forward for the image and its mirror
                direct, mirrored = _model_logits(model, torch.cat([xs, xs.flip(3)])).chunk(2)
                passes = (direct, mirrored.flip(3))
            else:
                passes = (_model_logits(model, xs),)
        except models.InputSizeError as err:
            raise EvaluationError(f"a {xs.shape[-2]}x{xs.shape[-1]} input (scale {s:g}): {err}") from err
        for logits in passes:
            prob = F.softmax(upsample_scores(logits, (hp, wp), out_size, upsample, stride), dim=1)
            total = prob if total is None else total + prob
            n_passes += 1
    assert total is not None
    return total / n_passes


@dataclass(frozen=True)
class _Unreadable:
    """Stands in for a sample whose files could not be read: the one-line reason."""

    message: str


class _SkipUnreadable(torch.utils.data.Dataset):
    """``dataset[i]``, or ``_Unreadable`` when reading it raised ``DatasetError``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DatasetError as err:
            return _Unreadable(str(err))


def _rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised ``torch.distributed`` group, else ``(0, 1)``.
    Under ``torchrun`` rank ``r`` of ``W`` scores images ``r, r + W, r + 2W, ...``: every image
    exactly once whatever ``W`` (no sampler padding), the confusion matrices are summed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather_counts(n_done: int, failed: list[str]) -> tuple[int, list[str]]:
    """The images scored and the unreadable ones over all ranks (identity in one process)."""
    if _rank_world()[1] == 1:
        return n_done, failed
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, (n_done, failed))
    return sum(n for n, _ in gathered), [m for _, f in gathered for m in f]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check(dataset: Any, scales: Sequence[float], batch_size: int) -> tuple[int, int]:
    """``(n_classes, ignore_label)`` of the dataset; ``EvaluationError`` for bad arguments."""
    if not scales or any(float(s) <= 0 for s in scales):
        raise EvaluationError(f"scales must be positive numbers, got {scales!r}")
    if batch_size <= 0:
        raise EvaluationError(f"batch_size must be positive, got {batch_size}")
    n_classes = int(getattr(dataset, "n_classes", 0))
    if n_classes <= 0:
        raise EvaluationError("dataset has no n_classes")
    return n_classes, int(getattr(dataset, "ignore_label", 255))


@dataclass
class _Pass:
    """What one evaluation pass holds fixed: the model and its recipe, the CRF, the timers."""

    model: nn.Module
    device: torch.device
    n_classes: int
    scales: tuple[float, ...]
    flip: bool
    crf: DenseCRF | None
    crf_processes: int
    pool: Any
    timings: dict[str, float]
    upsample: str = "align_corners_false"

    pending: deque = field(default_factory=deque)  # (AsyncResult, labels): CRF batches in flight

    def probabilities(self, x: torch.Tensor, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Softmax probabilities per image of a batch ``x`` of equal-size inputs (padding
        cropped away), averaged over the scales and flips."""
        t0 = time.perf_counter()
        probs = predict_probs(self.model, x, tuple(x.shape[-2:]), self.scales, self.flip, self.upsample)
        if probs.shape[1] != self.n_classes:
            raise EvaluationError(
                f"model outputs {probs.shape[1]} classes but the dataset has {self.n_classes}"
            )
        _sync(self.device)
        self.timings["model_s"] += time.perf_counter() - t0
        return [p[:, : im.shape[0], : im.shape[1]] for p, im in zip(probs, images)]

    def batch(self, batch: list[Any], transform: EvalTransform, matrix: ConfusionMatrix) -> None:
        """Add a loaded batch to the confusion matrix. Only images whose (padded) input size is
        equal run together: nothing is padded for batching, so results do not depend on
        ``batch_size``. With a CRF pool the CRF runs in the workers while the network goes on
        with the next batch (``collect`` folds finished results in; the sum is order-free)."""
        inputs = [transform(image, label)[0] for image, label, _ in batch]
        groups: dict[tuple[int, ...], list[int]] = {}
        for j, x_j in enumerate(inputs):
            groups.setdefault(tuple(x_j.shape), []).append(j)
        for members in groups.values():
            x = torch.stack([inputs[j] for j in members]).to(self.device)
            images = [batch[j][0] for j in members]
            labels = [torch.as_tensor(batch[j][1]) for j in members]
            probs = self.probabilities(x, images)
            if self.crf is None:
                for p, label in zip(probs, labels):
                    matrix.update(p.argmax(dim=0), label)
                continue
            images_rgb = [np.ascontiguousarray(im[..., ::-1]) for im in images]  # BGR -> RGB
            probs_np = [p.float().cpu().numpy() for p in probs]
            if self.pool is None:
                t1 = time.perf_counter()
                refined = crf_batch(images_rgb, probs_np, 0, self.crf)
                self.timings["crf_s"] += time.perf_counter() - t1
                for q, label in zip(refined, labels):
                    matrix.update(torch.from_numpy(q.argmax(axis=0)), label)
            else:
                self.pending.append((crf_submit(images_rgb, probs_np, self.crf, self.pool), labels))
                self.collect(matrix, keep=2 * self.crf_processes)

    def collect(self, matrix: ConfusionMatrix, keep: int = 0) -> None:
        """Fold finished CRF batches into ``matrix``, waiting while more than ``keep`` are in
        flight (``keep=0``: all of them). ``crf_s`` counts the time spent waiting."""
        while self.pending and (len(self.pending) > keep or self.pending[0][0].ready()):
            result, labels = self.pending.popleft()
            t1 = time.perf_counter()
            refined = result.get()
            self.timings["crf_s"] += time.perf_counter() - t1
            for q, label in zip(refined, labels):
                matrix.update(torch.from_numpy(q.argmax(axis=0)), label)


def _settings(dataset: Any, scales: tuple[float, ...], flip: bool, crf: DenseCRF | None,
              transform: EvalTransform, mean_bgr: Sequence[float], device: torch.device,
              batch_size: int, max_images: int | None, upsample: str) -> dict[str, Any]:
    """The record of how the numbers were made (``EvalResult.settings``)."""
    return {
        "dataset": getattr(dataset, "name", type(dataset).__name__),
        "split": getattr(dataset, "split", None),
        "scales": list(scales),
        "flip": bool(flip),
        "crf": crf.as_dict() if crf is not None else None,
        "pad_to": None if transform.pad_to is None else list(transform.pad_to),
        "mean_bgr": [float(m) for m in mean_bgr],
        "upsample": upsample,
        "mean_arithmetic": transform.mean_arithmetic,
        "device": str(device),
        "batch_size": batch_size,
        "max_images": max_images,
        "torch": torch.__version__,
    }


def _result(matrix: ConfusionMatrix, n_classes: int, n_done: int, timings: dict[str, float],
            seconds: float, settings: dict[str, Any]) -> EvalResult:
    matrix.all_reduce()
    confusion = matrix.numpy()
    timings["total_s"] = seconds
    timings["images_per_s"] = n_done / seconds if seconds > 0 else 0.0
    scores = scores_from_confusion(confusion)
    return EvalResult(
        scores=scores,
        class_iou=[_finite_or_none(scores["Class IoU"][i]) for i in range(n_classes)],
        confusion=confusion,
        n_images=n_done,
        n_pixels=int(confusion.sum()),
        class_pixels=[int(v) for v in confusion.sum(axis=1)],
        timings=timings,
        settings=settings,
    )


def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    device: torch.device | str,
    batch_size: int = 1,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: DenseCRF | None = None,
    crf_processes: int = 0,
    pad_to: int | Sequence[int] | None = None,
    max_images: int | None = None,
    progress: bool = True,
    mean_bgr: Sequence[float] | None = None,
    num_workers: int = 0,
    upsample: str = "align_corners_false",
    on_bad_file: Callable[[str], None] | None = None,
    mean_arithmetic: str = "float32",
) -> EvalResult:
    """Evaluate ``model`` on ``dataset``; returns an ``EvalResult`` (scores as fractions 0-1).

    ``dataset`` yields ``(image uint8 HxWx3 BGR, label int64 HxW, id)`` and has ``n_classes``
    (and ``ignore_label``, default 255). The model is moved to ``device`` and put in eval mode;
    it takes ``N x 3 x H x W`` BGR minus ``mean_bgr`` and returns stride-8 logits (``mean_bgr``
    ``None``: the model's checkpoint ``metadata["mean_bgr"]`` when it has one, as another port's
    import records, else the VOC mean), brought to the label size by ``upsample`` (one of
    ``UPSAMPLING``, module docstring); ``mean_arithmetic`` (``"float32"`` or ``"float64"``: the
    seed port's, see ``EvalTransform``) says how the mean is subtracted. Images of
    one loaded batch are run together only when their (padded) input sizes are equal, so
    results do not depend on ``batch_size`` (use ``pad_to`` to batch images of mixed sizes).
    ``crf`` post-processes on the CPU (``crf_processes`` worker processes, 0 = inline) with
    the image converted BGR -> RGB. A sample whose image or label cannot be read raises
    ``DatasetError``; with ``on_bad_file`` it is reported there (one line), skipped, and listed
    in ``EvalResult.failed`` while the evaluation goes on.
    """
    n_classes, ignore_label = _check(dataset, scales, batch_size)
    if upsample not in UPSAMPLING:
        raise EvaluationError(f"unknown upsampling {upsample!r} (known: {', '.join(UPSAMPLING)})")
    if mean_bgr is None:
        mean_bgr = (getattr(model, "metadata", None) or {}).get("mean_bgr", MEAN_BGR)
    device = torch.device(device)
    model = model.to(device).eval()
    scales = tuple(float(s) for s in scales)
    n_total = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    rank, world = _rank_world()
    subset = torch.utils.data.Subset(dataset, range(rank, n_total, world))  # each image once
    loader = torch.utils.data.DataLoader(
        subset if on_bad_file is None else _SkipUnreadable(subset), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=list,
    )
    try:
        transform = EvalTransform(mean_bgr=mean_bgr, pad_to=pad_to, ignore_label=ignore_label,
                                  mean_arithmetic=mean_arithmetic)
    except ValueError as err:
        raise EvaluationError(str(err)) from err
    matrix = ConfusionMatrix(n_classes, ignore_label=ignore_label, device=device)
    timings = {"data_s": 0.0, "model_s": 0.0, "crf_s": 0.0}
    bar = StepProgress("eval", len(subset), enabled=progress and rank == 0)  # on stderr (stdout stays for results); plain lines in logs
    start = time.perf_counter()
    n_done, failed = 0, []
    with torch.inference_mode(), crf_pool(crf_processes if crf is not None else 0) as pool, bar:
        run = _Pass(model, device, n_classes, scales, flip, crf, crf_processes, pool, timings, upsample)
        t_data = time.perf_counter()
        for batch in loader:
            timings["data_s"] += time.perf_counter() - t_data
            for bad in (item for item in batch if isinstance(item, _Unreadable)):
                failed.append(bad.message)
                on_bad_file(bad.message)  # type: ignore[misc]  (only wrapped when given)
            good = [item for item in batch if not isinstance(item, _Unreadable)]
            if good:
                run.batch(good, transform, matrix)
            n_done += len(good)
            bar.advance(len(batch))
            t_data = time.perf_counter()
        run.collect(matrix)  # the CRF batches still in the workers
    settings = _settings(dataset, scales, flip, crf, transform, mean_bgr, device, batch_size, max_images, upsample)
    n_done, failed = _gather_counts(n_done, failed)
    result = _result(matrix, n_classes, n_done, timings, time.perf_counter() - start, settings)
    result.failed = failed
    return result


def save_results_json(
    result: EvalResult, path: str | Path, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``result.to_dict()`` (plus ``extra`` keys) to ``path`` whole or not at all
    (``models.files``). Strict JSON: NaN is written as null."""
    path = Path(path)
    data = result.to_dict()
    if extra:
        data.update(_jsonable(dict(extra)))
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def print_results_table(
    result: EvalResult, class_names: Sequence[str] | None = None, console: Any = None
) -> None:
    """Print the four scores and the per-class IoU (percent) as rich tables."""
    console = console if console is not None else Console()

    def pct(value: float | None) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"

    summary = Table(title=f"Scores ({result.n_images} images, %)")
    for key in SCORE_KEYS:
        summary.add_column(key, justify="right")
    summary.add_row(*(pct(result.scores[k]) for k in SCORE_KEYS))
    console.print(summary)

    per_class = Table(title="Class IoU (%)")
    per_class.add_column("id", justify="right")
    per_class.add_column("class")
    per_class.add_column("IoU", justify="right")
    per_class.add_column("GT pixels", justify="right")
    for i, iou in enumerate(result.class_iou):
        name = class_names[i] if class_names is not None and i < len(class_names) else str(i)
        per_class.add_row(str(i), name, pct(iou), str(result.class_pixels[i]))
    console.print(per_class)
