"""The evaluation loop and the ``eval`` command, with models whose predictions are known."""

from __future__ import annotations

import importlib
import io
import json
import math

import numpy as np
import pydensecrf.densecrf  # noqa: F401  (the test extra: a broken install fails here, never skips)
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from deeplab_caffe.parity.evaluation.evaluate import (EvalResult, EvaluationError, evaluate, print_results_table,
                                        save_results_json)


class ColourModel(nn.Module):
    """Logits = the mean-subtracted BGR input (identity 1x1 conv), averaged over 8 x 8 cells:
    stride 8 like DeepLab. On a constant image every logit map is constant, so the predicted
    class (channel furthest above the mean: 0 blue, 1 green, 2 red) is known exactly; padding
    (the mean colour, 0 after subtraction) gives zero logits, which only scale the mixture."""

    def __init__(self, n_out: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, n_out, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            for c in range(min(3, n_out)):
                self.conv.weight[c, c] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 8, 8, ceil_mode=True)


class ListDataset:
    """In-memory dataset with the on-disk datasets' item convention."""

    n_classes = 3
    ignore_label = 255
    class_names = ("blue", "green", "red")
    name = "colours"
    split = "test"

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _constant(h: int, w: int, bgr: tuple[int, int, int]) -> np.ndarray:
    image = np.empty((h, w, 3), np.uint8)
    image[...] = bgr
    return image


def colour_dataset() -> ListDataset:
    # A: blue 8x10 -> predicted 0 everywhere; GT rows 0-3 = 0, rows 4-5 = 1, rows 6-7 ignored
    label_a = np.full((8, 10), 255, np.int64)
    label_a[:4] = 0
    label_a[4:6] = 1
    # B: red 8x10 -> predicted 2; GT 2 except column 0 = 1
    label_b = np.full((8, 10), 2, np.int64)
    label_b[:, 0] = 1
    # C: green 6x12 (another size) -> predicted 1; GT all 1
    label_c = np.ones((6, 12), np.int64)
    return ListDataset([
        (_constant(8, 10, (255, 0, 0)), label_a, "a"),
        (_constant(8, 10, (0, 0, 255)), label_b, "b"),
        (_constant(6, 12, (0, 255, 0)), label_c, "c"),
    ])


# Confusion by hand (rows GT, columns prediction):
#   GT0: A rows 0-3 -> 40 x pred 0                    [40,  0,  0]
#   GT1: A rows 4-5 -> 20 x 0; B col 0 -> 8 x 2; C 72 [20, 72,  8]
#   GT2: B 72 x 2                                      [ 0,  0, 72]
# total 212, trace 184: PA 184/212 = 46/53; recall 1, 72/100, 1: MA 68/75;
# IoU 40/60, 72/100, 72/80: mIoU (2/3 + 0.72 + 0.9)/3 = 343/450;
# FWIoU (40 * 2/3 + 100 * 0.72 + 72 * 0.9) / 212 = 613/795.
EXPECTED_CONFUSION = np.array([[40, 0, 0], [20, 72, 8], [0, 0, 72]])
EXPECTED = {
    "Pixel Accuracy": 46 / 53,
    "Mean Accuracy": 68 / 75,
    "Mean IoU": 343 / 450,
    "Frequency Weighted IoU": 613 / 795,
}


def _assert_expected(result: EvalResult) -> None:
    np.testing.assert_array_equal(result.confusion, EXPECTED_CONFUSION)
    for key, value in EXPECTED.items():
        assert result.scores[key] == pytest.approx(value, abs=1e-12), key
    assert result.class_iou == pytest.approx([2 / 3, 0.72, 0.9], abs=1e-12)
    assert result.n_images == 3 and result.n_pixels == 212
    assert result.class_pixels == [40, 100, 72]


@pytest.mark.parametrize("batch_size, scales, flip, pad_to", [
    (1, (1.0,), False, None),
    (2, (0.5, 0.75, 1.0), True, None),
    (3, (1.0,), True, 16),
    (2, (1.25,), False, (12, 14)),
])
def test_evaluate_gives_exact_scores_for_a_known_model(batch_size, scales, flip, pad_to):
    result = evaluate(
        ColourModel(), colour_dataset(), device="cpu", batch_size=batch_size, scales=scales,
        flip=flip, pad_to=pad_to, progress=False,
    )
    _assert_expected(result)
    assert result.settings["scales"] == list(scales) and result.settings["flip"] == flip


def test_max_images_limits_the_evaluation():
    result = evaluate(ColourModel(), colour_dataset(), device="cpu", max_images=2, progress=False)
    assert result.n_images == 2
    np.testing.assert_array_equal(result.confusion, [[40, 0, 0], [20, 0, 8], [0, 0, 72]])


@pytest.mark.parametrize("crf_processes", [0, 2])
def test_evaluate_with_crf_keeps_a_confident_prediction(crf_processes):
    from deeplab_caffe.parity.evaluation.crf import DenseCRF

    result = evaluate(
        ColourModel(), colour_dataset(), device="cpu", crf=DenseCRF(), crf_processes=crf_processes,
        batch_size=2, progress=False,
    )
    _assert_expected(result)
    assert result.settings["crf"]["bi_xy_std"] == 67
    assert result.timings["crf_s"] > 0


def test_class_count_mismatch_is_a_clear_error():
    with pytest.raises(EvaluationError, match="model outputs 4 classes but the dataset has 3"):
        evaluate(ColourModel(n_out=4), colour_dataset(), device="cpu", progress=False)
    with pytest.raises(EvaluationError, match="scales"):
        evaluate(ColourModel(), colour_dataset(), device="cpu", scales=(0.0,), progress=False)


def test_save_results_json_is_strict_json_and_atomic(tmp_path):
    dataset = colour_dataset()
    dataset.n_classes = 4  # class 3 absent everywhere -> NaN IoU -> null
    result = evaluate(ColourModel(n_out=4), dataset, device="cpu", progress=False)
    assert math.isnan(result.scores["Class IoU"][3]) and result.class_iou[3] is None
    path = tmp_path / "out" / "results.json"
    save_results_json(result, path, extra={"checkpoint": {"sha256": "abc"}})
    data = json.loads(path.read_text())
    assert data["scores"]["Mean IoU"] == pytest.approx(343 / 450, abs=1e-12)
    assert data["class_iou"][3] is None and data["checkpoint"] == {"sha256": "abc"}
    assert data["confusion_matrix"][1] == [20, 72, 8, 0]
    before = path.read_text()
    with pytest.raises(TypeError):  # not serialisable: the old file must survive intact
        save_results_json(result, path, extra={"bad": object()})
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_print_results_table_shows_percent_and_class_names():
    from rich.console import Console

    result = evaluate(ColourModel(), colour_dataset(), device="cpu", progress=False)
    buffer = io.StringIO()
    print_results_table(result, ("blue", "green", "red"), console=Console(file=buffer, width=150))
    text = buffer.getvalue()
    assert "Mean IoU" in text and f"{100 * 343 / 450:.2f}" in text
    assert "green" in text and "72.00" in text


# ------------------------------------------------------------------------------------------
# The real model and the command (need models/ from the models engineer)


def _models():
    return importlib.import_module("deeplab_caffe.models")


def _tiny_model(models):
    torch.manual_seed(0)
    config = models.default_config(n_classes=4, n_blocks=(1, 1, 1, 1), stem_channels=8)
    return models.build_model(config), config


def test_flip_is_the_mean_of_the_image_and_its_mirror_flipped_back():
    from deeplab_caffe.parity.evaluation.evaluate import predict_probs, upsample_scores

    model, _ = _tiny_model(_models())
    model.eval()
    x = torch.randn(2, 3, 41, 49) * 50  # the network is not mirror-symmetric: a pass left unflipped shows
    with torch.no_grad():
        batched = predict_probs(model, x, (41, 49), flip=True)
        passes = [model(x), model(x.flip(3)).flip(3)]  # two separate forwards, by hand
    by_hand = sum(F.softmax(upsample_scores(p, (41, 49), (41, 49), "align_corners_false"), dim=1)
                  for p in passes) / 2
    torch.testing.assert_close(batched, by_hand, rtol=0, atol=1e-6)
    assert (passes[0] - passes[1]).abs().max() > 1e-2


def test_real_deeplab_plugs_into_evaluate():
    from deeplab_caffe.parity.data.datasets import ProceduralShapes

    models = _models()
    model, _ = _tiny_model(models)
    dataset = ProceduralShapes(3, size=(41, 49), split="val")
    one = evaluate(model, dataset, device="cpu", progress=False)
    three = evaluate(model, dataset, device="cpu", batch_size=3, scales=(0.75, 1.0), flip=True,
                     progress=False)
    assert one.n_pixels == three.n_pixels == 3 * 41 * 49
    assert one.confusion.shape == (4, 4)
    for result in (one, three):
        for key in EXPECTED:
            assert 0.0 <= result.scores[key] <= 1.0


def _run_cli(args):
    from deeplab_caffe.parity.commands.eval import eval_command

    return CliRunner().invoke(eval_command, args)


def test_eval_cli_missing_checkpoint_is_one_line_exit_2(tmp_path):
    out = tmp_path / "results.json"
    result = _run_cli(["--checkpoint", str(tmp_path / "nope.pth"), "--dataset", "shapes",
                       "--output", str(out), "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr == f"error: checkpoint not found: {tmp_path / 'nope.pth'}\n"
    assert result.stdout == "" and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--scales", "1,abc"], "error: --scales must be comma-separated numbers"),
    (["--scales", "0"], "error: --scales must be positive"),
    (["--dataset", "voc12"], "error: dataset 'voc12' needs a root folder"),
    (["--dataset", "voc12", "--root", "/no/such/voc"], "error: voc12 root not found: /no/such/voc"),
    (["--dataset", "ade20k"], "error: Invalid value for '--dataset'"),
    (["--crf-processes", "-1"], "error: Invalid value for '--crf-processes'"),
])
def test_eval_cli_bad_options_are_one_line_exit_2(tmp_path, args, message):
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"")
    base = ["--checkpoint", str(ckpt), "--dataset", "shapes", "--no-progress"]
    result = _run_cli(base + args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_eval_cli_unloadable_checkpoint_is_one_line_exit_2(tmp_path):
    _models()
    ckpt = tmp_path / "garbage.pth"
    ckpt.write_bytes(b"this is not a checkpoint")
    result = _run_cli(["--checkpoint", str(ckpt), "--dataset", "shapes", "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert str(ckpt) in result.stderr


def test_eval_cli_happy_path_writes_results(tmp_path):
    models = _models()
    model, config = _tiny_model(models)
    ckpt = tmp_path / "tiny.pth"
    models.save_checkpoint(ckpt, model, config, {"source": "test"})
    out = tmp_path / "results.json"
    result = _run_cli(["--checkpoint", str(ckpt), "--dataset", "shapes", "--max-images", "2",
                       "--scales", "0.5,1.0", "--flip", "--device", "cpu", "--output", str(out),
                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Mean IoU" in result.stdout and "circle" in result.stdout
    data = json.loads(out.read_text())
    assert data["n_images"] == 2 and data["settings"]["scales"] == [0.5, 1.0]
    assert len(data["checkpoint"]["sha256"]) == 64
    assert data["settings"]["dataset"] == "shapes" and data["settings"]["split"] == "val"


def test_crf_overlapped_in_workers_equals_the_sequential_loop():
    """The CRF of batch k runs in the workers while the network computes batch k+1; the
    confusion matrix is the sequential loop's, cell for cell."""
    from deeplab_caffe.parity.data.datasets import ProceduralShapes
    from deeplab_caffe.parity.evaluation.crf import DenseCRF

    model, _ = _tiny_model(_models())
    dataset = ProceduralShapes(7, size=(41, 49), split="val")
    sequential = evaluate(model, dataset, device="cpu", crf=DenseCRF(), crf_processes=0, progress=False)
    overlapped = evaluate(model, dataset, device="cpu", crf=DenseCRF(), crf_processes=2, batch_size=2,
                          progress=False)
    plain = evaluate(model, dataset, device="cpu", progress=False)
    np.testing.assert_array_equal(overlapped.confusion, sequential.confusion)
    assert not np.array_equal(sequential.confusion, plain.confusion)  # the CRF did change labels


def test_eval_cli_takes_the_official_protocol(tmp_path):
    """--upsample caffe_interp --mean coco --pad-to 65: the shapes images (64 px) padded like
    Caffe's test crop, the score map zoomed by 8; the JSON records what was used."""
    models = _models()
    model, config = _tiny_model(models)
    ckpt = tmp_path / "tiny.pth"
    models.save_checkpoint(ckpt, model, config, {"source": "test"})
    out = tmp_path / "results.json"
    result = _run_cli(["--checkpoint", str(ckpt), "--dataset", "shapes", "--max-images", "2", "--pad-to", "65",
                       "--upsample", "caffe_interp", "--mean", "coco", "--device", "cpu", "--output", str(out),
                       "--no-progress"])
    assert result.exit_code == 0, result.output
    settings = json.loads(out.read_text())["settings"]
    assert settings["upsample"] == "caffe_interp" and settings["mean_bgr"] == [104.0, 114.1, 120.1]
    bad = _run_cli(["--checkpoint", str(ckpt), "--dataset", "shapes", "--upsample", "nearest"])
    assert bad.exit_code == 2 and "Invalid value for '--upsample'" in bad.output


def test_eval_cli_fuse_gives_the_same_confusion(tmp_path):
    models = _models()
    model, config = _tiny_model(models)
    ckpt = models.save_checkpoint(tmp_path / "tiny.pth", model, config, {"source": "test"})
    confusions = []
    for extra in ([], ["--fuse"]):
        out = tmp_path / f"results{len(extra)}.json"
        result = _run_cli(["--checkpoint", str(ckpt), "--dataset", "shapes", "--max-images", "3", "--device", "cpu",
                           "--output", str(out), "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        confusions.append(json.loads(out.read_text())["confusion_matrix"])
    assert confusions[0] == confusions[1]


def _cocostuff164k(root, good: int, bad: dict[str, str]):
    """A COCO-Stuff 164k layout (val2017): ``good`` readable pairs, then the ``bad`` cases
    (name -> "image" undecodable, "label" undecodable, "no-label" missing)."""
    import cv2

    rng = np.random.default_rng(0)
    (root / "images" / "val2017").mkdir(parents=True)
    (root / "annotations" / "val2017").mkdir(parents=True)
    names = [f"{i:03d}" for i in range(good)] + sorted(bad)
    for name in names:
        image, label = root / "images" / "val2017" / f"{name}.jpg", root / "annotations" / "val2017" / f"{name}.png"
        cv2.imwrite(str(image), rng.integers(0, 256, (33, 45, 3), dtype=np.uint8))
        cv2.imwrite(str(label), rng.integers(0, 182, (33, 45), dtype=np.uint8))
        kind = bad.get(name)
        if kind == "image":
            image.write_bytes(b"\xff\xd8 truncated jpeg")
        elif kind == "label":
            label.write_bytes(label.read_bytes()[:50])
        elif kind == "no-label":
            label.unlink()


def test_eval_cli_goes_on_past_unreadable_files_and_exits_2(tmp_path):
    models = _models()
    torch.manual_seed(0)
    config = models.default_config(n_classes=182, n_blocks=(1, 1, 1, 1), stem_channels=8)
    ckpt = tmp_path / "tiny.pth"
    models.save_checkpoint(ckpt, models.build_model(config), config, {})
    bad = {"b1": "image", "b2": "label", "b3": "no-label"}
    _cocostuff164k(tmp_path / "mixed", 3, bad)
    _cocostuff164k(tmp_path / "clean", 3, {})
    base = ["--checkpoint", str(ckpt), "--dataset", "cocostuff164k", "--device", "cpu", "--no-progress"]

    mixed = _run_cli(base + ["--root", str(tmp_path / "mixed"), "--output", str(tmp_path / "mixed.json")])
    assert mixed.exit_code == 2
    files = {name: tmp_path / "mixed" / folder / "val2017" / f"{name}.{ext}"
             for name, (folder, ext) in {"b1": ("images", "jpg"), "b2": ("annotations", "png"),
                                         "b3": ("annotations", "png")}.items()}
    assert mixed.stderr.splitlines() == [
        f"error: {files['b1']}: cannot decode image",
        f"error: {files['b2']}: cannot decode label",
        f"error: {files['b3']}: label not found",
        "error: 3 of 6 images could not be read (listed above); the scores cover the other 3"]
    clean = _run_cli(base + ["--root", str(tmp_path / "clean"), "--output", str(tmp_path / "clean.json")])
    assert clean.exit_code == 0, clean.output
    mixed_json, clean_json = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("mixed", "clean"))
    assert mixed_json["n_images"] == 3 and len(mixed_json["failed"]) == 3 and clean_json["failed"] == []
    assert mixed_json["confusion_matrix"] == clean_json["confusion_matrix"]  # the readable three


def test_evaluate_without_a_bad_file_callback_stops_at_the_first(tmp_path):
    from deeplab_caffe.parity.data.datasets import DatasetError, build_dataset

    models = _models()
    model, _ = _tiny_model(models)
    _cocostuff164k(tmp_path, 0, {"b1": "image"})
    with pytest.raises(DatasetError, match="cannot decode image"):
        evaluate(model, build_dataset("cocostuff164k", tmp_path, "val2017"), device="cpu", progress=False)


def test_the_checkpoint_mean_is_subtracted_unless_one_is_given():
    """A foreign import records its input mean in the checkpoint metadata: grey (120, 120, 120)
    is blue-most after the VOC mean, green-most after (130, 100, 110)."""
    grey = ListDataset([(_constant(8, 8, (120, 120, 120)), np.ones((8, 8), np.int64), "grey")])
    model = ColourModel()
    assert evaluate(model, grey, device="cpu", progress=False).scores["Pixel Accuracy"] == 0.0
    model.metadata = {"mean_bgr": [130.0, 100.0, 110.0]}
    result = evaluate(model, grey, device="cpu", progress=False)
    assert result.settings["mean_bgr"] == [130.0, 100.0, 110.0] and result.scores["Pixel Accuracy"] == 1.0
    given = evaluate(model, grey, device="cpu", progress=False, mean_bgr=(104.008, 116.669, 122.675))
    assert given.scores["Pixel Accuracy"] == 0.0
