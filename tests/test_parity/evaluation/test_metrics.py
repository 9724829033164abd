"""Confusion matrix and scores, against hand-computed values and the seed port's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deeplab_caffe.parity.evaluation.metrics import ConfusionMatrix, scores_from_confusion

# A 3-class example worked out by hand (the last pixel is ignored):
#   GT   : 0 0 0 1 1 2 2 2 255
#   pred : 0 0 1 1 2 2 2 0 1
# Confusion (rows GT, columns pred): GT0 -> [2, 1, 0], GT1 -> [0, 1, 1], GT2 -> [1, 0, 2]
#   total 8, trace 5                        -> Pixel Accuracy = 5/8
#   recall 2/3, 1/2, 2/3                    -> Mean Accuracy  = (2/3 + 1/2 + 2/3) / 3 = 11/18
#   IoU 2/(3+3-2), 1/(2+2-1), 2/(3+3-2)     =  1/2, 1/3, 1/2 -> Mean IoU = 4/9
#   GT frequency 3/8, 2/8, 3/8              -> FWIoU = 3/16 + 1/12 + 3/16 = 11/24
GT = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 255])
PRED = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 1])
HAND = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]])


def seed_scores(label_trues, label_preds, n_class):
    """deeplab-pytorch's libs/utils/metric.py scores(), as a reference."""
    hist = np.zeros((n_class, n_class))
    for lt, lp in zip(label_trues, label_preds):
        lt, lp = lt.flatten(), lp.flatten()
        mask = (lt >= 0) & (lt < n_class)
        hist += np.bincount(n_class * lt[mask].astype(int) + lp[mask], minlength=n_class**2).reshape(
            n_class, n_class
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
    valid = hist.sum(axis=1) > 0
    mean_iu = np.nanmean(iu[valid])
    freq = hist.sum(axis=1) / hist.sum()
    fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return {"Pixel Accuracy": acc, "Mean Accuracy": acc_cls, "Frequency Weighted IoU": fwavacc,
            "Mean IoU": mean_iu, "Class IoU": dict(zip(range(n_class), iu))}


def test_hand_computed_three_class_example():
    cm = ConfusionMatrix(3)
    cm.update(PRED.reshape(3, 3), GT.reshape(3, 3))
    np.testing.assert_array_equal(cm.numpy(), HAND)
    s = cm.scores()
    assert s["Pixel Accuracy"] == 5 / 8
    assert s["Mean Accuracy"] == pytest.approx(11 / 18, abs=1e-15)
    assert s["Mean IoU"] == pytest.approx(4 / 9, abs=1e-15)
    assert s["Frequency Weighted IoU"] == pytest.approx(11 / 24, abs=1e-15)
    assert s["Class IoU"] == {0: 0.5, 1: pytest.approx(1 / 3, abs=1e-15), 2: 0.5}


def test_class_absent_from_ground_truth_is_left_out_of_the_means():
    # 4 classes: class 3 never in GT but predicted once (IoU 0, not averaged); class 2 in
    # neither (IoU NaN). GT 0 0 1 1, pred 0 3 1 1 -> confusion [[1,0,0,1],[0,2,0,0],0,0]
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 3, 1, 1]), torch.tensor([0, 0, 1, 1]))
    s = cm.scores()
    assert s["Class IoU"][0] == 0.5 and s["Class IoU"][1] == 1.0
    assert math.isnan(s["Class IoU"][2]) and s["Class IoU"][3] == 0.0
    assert s["Mean IoU"] == 0.75  # (1/2 + 1) / 2, classes 2 and 3 excluded
    assert s["Mean Accuracy"] == 0.75  # (1/2 + 2/2) / 2
    assert s["Pixel Accuracy"] == 0.75
    assert s["Frequency Weighted IoU"] == 0.75  # 2/4 * 1/2 + 2/4 * 1


@pytest.mark.parametrize("ignore_label", [255, 7])
def test_ignore_label_pixels_are_not_counted(ignore_label):
    cm = ConfusionMatrix(3, ignore_label=ignore_label)
    label = torch.tensor([[0, ignore_label], [2, ignore_label]])
    pred = torch.tensor([[0, 1], [1, 2]])
    cm.update(pred, label)
    expected = np.zeros((3, 3), np.int64)
    expected[0, 0] = 1
    expected[2, 1] = 1
    np.testing.assert_array_equal(cm.numpy(), expected)
    assert cm.scores()["Pixel Accuracy"] == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_classes", [2, 5, 21])
def test_scores_equal_the_seed_port_on_random_batches(seed, n_classes):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, (3, 7, 9))
    labels[rng.random(labels.shape) < 0.1] = 255
    labels[labels == n_classes - 1] = 0  # one class absent from the ground truth
    preds = rng.integers(0, n_classes, (3, 7, 9))
    cm = ConfusionMatrix(n_classes)
    cm.update(torch.from_numpy(preds[:2]), torch.from_numpy(labels[:2]))  # a batch
    cm.update(torch.from_numpy(preds[2]), torch.from_numpy(labels[2]))  # then one image
    ours = cm.scores()
    ref = seed_scores(list(np.where(labels == 255, -1, labels)), list(preds), n_classes)
    for key in ("Pixel Accuracy", "Mean Accuracy", "Mean IoU", "Frequency Weighted IoU"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12)
    for c in range(n_classes):
        assert ours["Class IoU"][c] == pytest.approx(ref["Class IoU"][c], abs=1e-12, nan_ok=True)


def test_empty_matrix_gives_nan_scores_and_reset_clears():
    cm = ConfusionMatrix(3)
    assert all(math.isnan(cm.scores()[k]) for k in ("Pixel Accuracy", "Mean IoU", "Mean Accuracy"))
    cm.update(PRED, GT)
    cm.reset()
    assert cm.numpy().sum() == 0


def test_bad_inputs_are_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="predictions must be in 0..2"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="square"):
        scores_from_confusion(np.zeros((2, 3)))


def test_all_reduce_is_a_no_op_without_distributed():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    cm.all_reduce()
    np.testing.assert_array_equal(cm.numpy(), HAND)
