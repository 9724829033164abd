"""DenseCRF post-processing (Krähenbühl & Koltun), through ``pydensecrf``.

``pydensecrf`` comes from the ``pydensecrf2`` distribution (``pip install pydensecrf2`` or the
``crf`` extra) and is imported only when a CRF is built, so the rest of the package works
without it.

Conventions: ``image`` is uint8 ``H x W x 3`` **RGB** (DeepLab's CRF was tuned on RGB; the
datasets give BGR, so callers pass ``image_bgr[..., ::-1]``), ``prob`` float32 ``C x H x W``
softmax probabilities. The output is ``C x H x W`` float32 marginals.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


class CRFUnavailableError(ImportError):
    """pydensecrf is not installed."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)


def _import_pydensecrf() -> tuple[Any, Any]:
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as dcrf_utils
    except ImportError as exc:
        raise CRFUnavailableError(
            "DenseCRF needs the 'pydensecrf2' package (module pydensecrf): "
            "pip install pydensecrf2, or install this project with the [crf] extra"
        ) from exc
    return dcrf, dcrf_utils


@dataclass(frozen=True)
class DenseCRF:
    """Fully connected CRF with DeepLab v2's defaults (10 iterations, pos_w 3, pos_xy_std 1,
    bi_w 4, bi_xy_std 67, bi_rgb_std 3).

    ``crf(image_rgb, prob) -> prob``: unary ``-log(clip(prob, 1e-5, 1))``, a Gaussian
    (smoothness) kernel and a bilateral (appearance) kernel on the RGB image, mean-field
    inference for ``iter_max`` steps. Picklable (it holds only numbers).
    """

    iter_max: int = 10
    pos_w: float = 3
    pos_xy_std: float = 1
    bi_w: float = 4
    bi_xy_std: float = 67
    bi_rgb_std: float = 3

    def __post_init__(self) -> None:
        _import_pydensecrf()  # fail early, before a long evaluation

    def as_dict(self) -> dict:
        """The parameters, for reports."""
        return asdict(self)

    def __call__(self, image_rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """``image_rgb`` uint8 ``H x W x 3`` RGB, ``prob`` ``C x H x W`` -> float32 ``C x H x W``."""
        dcrf, dcrf_utils = _import_pydensecrf()
        if prob.ndim != 3:
            raise ValueError(f"prob must be C x H x W, got shape {prob.shape}")
        c, h, w = prob.shape
        if image_rgb.shape != (h, w, 3):
            raise ValueError(f"image shape {image_rgb.shape} does not match prob {prob.shape}")
        if image_rgb.dtype != np.uint8:
            raise ValueError(f"image must be uint8 RGB, got {image_rgb.dtype}")
        unary = np.ascontiguousarray(dcrf_utils.unary_from_softmax(prob.astype(np.float32)))
        image_rgb = np.ascontiguousarray(image_rgb)  # pydensecrf reads raw C-ordered bytes
        d = dcrf.DenseCRF2D(w, h, c)
        d.setUnaryEnergy(unary)
        d.addPairwiseGaussian(sxy=self.pos_xy_std, compat=self.pos_w)
        d.addPairwiseBilateral(
            sxy=self.bi_xy_std, srgb=self.bi_rgb_std, rgbim=image_rgb, compat=self.bi_w
        )
        q = d.inference(self.iter_max)
        return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _run_one(args: tuple[DenseCRF, np.ndarray, np.ndarray]) -> np.ndarray:
    crf, image, prob = args
    return crf(image, prob)


@contextmanager
def crf_pool(processes: int) -> Iterator[Any]:
    """A ``multiprocessing`` Pool of ``processes`` workers (spawned), or None when 0."""
    if processes < 0:
        raise ValueError(f"processes must be >= 0, got {processes}")
    if processes == 0:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ctx.Pool(processes) as pool:
        yield pool


def crf_batch(
    images: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    processes: int = 0,
    crf: DenseCRF | None = None,
    pool: Any = None,
) -> list[np.ndarray]:
    """Apply ``crf`` (default ``DenseCRF()``) to each ``(image_rgb, prob)`` pair.

    ``processes=0`` runs inline; ``N > 0`` uses a pool of N worker processes (or the ``pool``
    given, e.g. from ``crf_pool``, to reuse workers across calls). Results are in input order
    and identical to the inline ones.
    """
    if len(images) != len(probs):
        raise ValueError(f"{len(images)} images but {len(probs)} probability maps")
    crf = crf if crf is not None else DenseCRF()
    jobs = [(crf, image, prob) for image, prob in zip(images, probs)]
    if pool is not None:
        return pool.map(_run_one, jobs)
    if processes == 0 or len(jobs) <= 1:
        return [_run_one(job) for job in jobs]
    with crf_pool(min(processes, len(jobs))) as own_pool:
        return own_pool.map(_run_one, jobs)


def crf_submit(images: Sequence[np.ndarray], probs: Sequence[np.ndarray], crf: DenseCRF, pool: Any) -> Any:
    """Start ``crf`` on each ``(image_rgb, prob)`` pair in ``pool`` without waiting; returns the
    ``AsyncResult`` whose ``get()`` gives what ``crf_batch`` would (same order, same values)."""
    if len(images) != len(probs):
        raise ValueError(f"{len(images)} images but {len(probs)} probability maps")
    return pool.map_async(_run_one, [(crf, image, prob) for image, prob in zip(images, probs)])
