"""Confusion matrix and the four segmentation scores, as deeplab-pytorch's ``scores()``.

Rows are ground truth, columns prediction. Pixels whose label is ``ignore_label`` (255) or
outside ``0 .. n_classes - 1`` are not counted. Scores are **fractions in [0, 1]** (reports
multiply by 100):

- ``Pixel Accuracy`` = trace / total;
- ``Mean Accuracy`` = nanmean over classes of ``TP / GT`` (classes absent from the ground
  truth give NaN and are left out);
- ``Mean IoU`` = mean over classes **present in the ground truth** of
  ``TP / (GT + Pred - TP)`` (a class only predicted has IoU 0 but does not enter the mean);
- ``Frequency Weighted IoU`` = ``sum_c (GT_c / total) * IoU_c`` over classes with GT_c > 0;
- ``Class IoU``: ``{class index: IoU}``; NaN for a class absent from both GT and prediction.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

SCORE_KEYS: tuple[str, ...] = (
    "Pixel Accuracy",
    "Mean Accuracy",
    "Mean IoU",
    "Frequency Weighted IoU",
)


def scores_from_confusion(matrix: np.ndarray | torch.Tensor) -> dict:
    """Scores (fractions) from an ``n x n`` confusion matrix (rows GT, columns prediction).

    Returns ``{"Pixel Accuracy", "Mean Accuracy", "Mean IoU", "Frequency Weighted IoU":
    float, "Class IoU": {int: float (NaN if absent from GT and prediction)}}``; every score
    is NaN when the matrix is empty.
    """
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    hist = np.asarray(matrix, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {hist.shape}")
    tp = np.diag(hist)
    gt = hist.sum(axis=1)
    pred = hist.sum(axis=0)
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = tp.sum() / total if total > 0 else np.nan
        acc_cls = tp / gt
        iou = tp / (gt + pred - tp)
        freq = gt / total if total > 0 else np.zeros_like(gt)
    present = gt > 0
    mean_acc = float(np.nanmean(acc_cls)) if present.any() else float("nan")
    mean_iou = float(np.mean(iou[present])) if present.any() else float("nan")
    fw_iou = float((freq[present] * iou[present]).sum()) if present.any() else float("nan")
    return {
        "Pixel Accuracy": float(acc),
        "Mean Accuracy": mean_acc,
        "Mean IoU": mean_iou,
        "Frequency Weighted IoU": fw_iou,
        "Class IoU": {i: float(v) for i, v in enumerate(iou)},
    }


class ConfusionMatrix:
    """``n_classes x n_classes`` int64 confusion matrix accumulated on ``device``.

    ``update(pred, label)`` takes integer tensors of equal shape (``H x W`` or ``N x H x W``,
    any device); one ``torch.bincount`` per call. ``all_reduce()`` sums across processes when
    ``torch.distributed`` is initialised. ``scores()`` gives the dict described in the module
    docstring (fractions 0-1).
    """

    def __init__(
        self,
        n_classes: int,
        ignore_label: int = 255,
        device: torch.device | str = "cpu",
    ) -> None:
        if n_classes <= 0:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        self.n_classes = int(n_classes)
        self.ignore_label = int(ignore_label)
        self.device = torch.device(device)
        self.matrix = torch.zeros(
            (self.n_classes, self.n_classes), dtype=torch.int64, device=self.device
        )

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Count ``(label, pred)`` pairs; ignore / out-of-range labels are skipped.

        Predictions must lie in ``0 .. n_classes - 1`` (checked; ValueError otherwise).
        """
        if pred.shape != label.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
        pred = pred.to(self.device, torch.int64).reshape(-1)
        label = label.to(self.device, torch.int64).reshape(-1)
        n = self.n_classes
        valid = (label >= 0) & (label < n) & (label != self.ignore_label)
        pred, label = pred[valid], label[valid]
        if pred.numel() == 0:
            return
        if bool(((pred < 0) | (pred >= n)).any()):
            raise ValueError(f"predictions must be in 0..{n - 1}")
        counts = torch.bincount(label * n + pred, minlength=n * n)
        self.matrix += counts.reshape(n, n)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (no-op unless torch.distributed is initialised)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def numpy(self) -> np.ndarray:
        """The counts as an int64 numpy array (rows GT, columns prediction)."""
        return self.matrix.detach().cpu().numpy().copy()

    def scores(self) -> dict:
        """See ``scores_from_confusion``."""
        return scores_from_confusion(self.numpy())
