"""The seed port's rows as the port ran them (issue 22), each held against an independent reading of
kazuto1011/deeplab-pytorch @ 4219467 (``tests/seed_port_reference``: ``libs/models/msc.py``,
``libs/datasets/base.py``, ``main.py`` test and train, ``libs/utils/metric.py``): the pyramid of
torch < 1.6 that the published rows ran under, the float64 mean, the port-row evaluation on real
photos (scikit-image's) with bit-exact inputs, and one training step of the ``*_port`` recipe."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner

import seed_port_reference as port
from deeplab_caffe import models
from deeplab_caffe.converter.foreign import FORMATS, import_checkpoint
from deeplab_caffe.parity.commands.eval import eval_command
from deeplab_caffe.parity.data.transforms import MEANS_BGR, EvalTransform
from deeplab_caffe.parity.suite.manifest import load_manifest
from deeplab_caffe.parity.train.config import load_config
from deeplab_caffe.parity.train.loop import build_train_model
from deeplab_caffe.parity.train.loss import resize_labels, segmentation_loss

#: the port's configs/voc12.yaml IMAGE.MEAN (B, G, R), the project's voc mean
PORT_MEAN = (104.008, 116.669, 122.675)
PORT_ROWS = ("voc12-v2-msc-port", "voc12-v2-msc-crf-port", "cocostuff10k-v2-port", "cocostuff10k-v2-crf-port",
             "cocostuff164k-v2-msc-port", "cocostuff164k-v2-msc-crf-port")


def photos() -> list[np.ndarray]:
    """scikit-image's sample photos as BGR uint8 (512x512, 400x600, 300x451)."""
    return [np.ascontiguousarray(getattr(skimage.data, name)()[..., ::-1]) for name in ("astronaut", "coffee", "chelsea")]


def label_for(image: np.ndarray, n_classes: int = 21) -> np.ndarray:
    """A deterministic label from the photo: grey level bands 0..n-1, a 255 border 3 px wide."""
    label = (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) // (256 // n_classes + 1)).astype(np.uint8)
    label[:3], label[-3:], label[:, :3], label[:, -3:] = 255, 255, 255, 255
    return label


def converted(tmp_path, n_classes: int, **kwargs):
    """The reference port model (seeded) and the import of its state dict."""
    ref = port.seeded_port_model(n_classes=n_classes, n_blocks=(1, 1, 1, 1), width=2, **kwargs)
    path = tmp_path / "port.pth"
    torch.save(ref.state_dict(), path)
    return ref, import_checkpoint(path, FORMATS["deeplab-pytorch"])


@pytest.mark.parametrize("size", [(97, 75), (321, 321)])
def test_the_pre16_pyramid_is_the_port_under_torch_before_1_6(tmp_path, size):
    """At odd sizes floor(H * s) makes the recomputed scale differ from s: the two torch eras
    give different logits, and each of our modes matches its era of the port's MSC."""
    ref, result = converted(tmp_path, 5)
    ours = result.model.eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(-120, 130, (1, 3, *size)).astype(np.float32))
    with torch.no_grad():
        ref.torch_pre16 = True
        old = ref(x)
        ref.torch_pre16 = False
        new = ref(x)
        ours.resize = "deeplab-pytorch-pre1.6"
        got_old = ours(x)
        ours.resize = "deeplab-pytorch"
        got_new = ours(x)
    scale = old.abs().max().item()
    assert (got_old - old).abs().max().item() <= 1e-5 * scale
    assert (got_new - new).abs().max().item() <= 1e-5 * scale
    assert (old - new).abs().max().item() > 1e-3 * scale  # the era matters


def test_every_port_row_names_its_pyramid_and_mean_arithmetic_with_the_source():
    rows = {row.name: row for row in load_manifest().rows}
    for name in PORT_ROWS:
        protocol = rows[name].protocol()
        assert protocol["msc_resize"] == "deeplab-pytorch-pre1.6" and protocol["mean_arithmetic"] == "float64", name
        assert "66f27e5" in rows[name].notes and "torch 1.6" in rows[name].notes, name
    assert rows["voc12-v2-msc-official"].protocol()["msc_resize"] == "caffe"  # the official rows keep Caffe's


def test_float64_mean_is_the_ports_input_bit_for_bit():
    """base.py's image -= mean_bgr (float32 image, float64 mean) equals EvalTransform's float64
    arithmetic in every bit; float32 arithmetic differs in the last bit of many elements."""
    for image in photos():
        label = label_for(image)
        want = port.port_input(image, PORT_MEAN)
        got = EvalTransform(PORT_MEAN, mean_arithmetic="float64")(image, label)[0].numpy()
        assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)
        single = EvalTransform(PORT_MEAN)(image, label)[0].numpy()
        assert 0.1 < np.mean(single != want) and np.abs(single - want).max() <= 4e-6


def _voc_folder(root, images, labels) -> None:
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/SegmentationAug"):
        (root / sub).mkdir(parents=True)
    ids = [f"photo{i}" for i in range(len(images))]
    for i, image, label in zip(ids, images, labels):
        assert cv2.imwrite(str(root / "JPEGImages" / f"{i}.jpg"), image)
        assert cv2.imwrite(str(root / "SegmentationClassAug" / f"{i}.png"), label)
    (root / "ImageSets" / "SegmentationAug" / "val.txt").write_text("\n".join(ids) + "\n")


@pytest.mark.slow
def test_port_row_evaluation_is_the_ports_test_loop_on_real_photos(tmp_path):
    """deeplab-parity eval --protocol voc12-v2-msc-port on the three photos (JPEG, read back with
    cv2 as both sides read them) gives the port's predictions on every pixel: the same confusion
    matrix and PA, MA, mIoU, FWIoU. The checkpoint records the Caffe pyramid: the row wins."""
    ref, result = converted(tmp_path, 21, torch_pre16=True)
    caffe_pyramid = result.model
    caffe_pyramid.resize = "caffe"
    checkpoint = models.save_checkpoint(tmp_path / "ours.pth", caffe_pyramid, caffe_pyramid.config,
                                        {"source": "test", "mean_bgr": list(MEANS_BGR["coco"])})
    _voc_folder(tmp_path / "voc", photos(), [label_for(p) for p in photos()])
    decoded = [cv2.imread(str(tmp_path / "voc" / "JPEGImages" / f"photo{i}.jpg"), cv2.IMREAD_COLOR) for i in range(3)]
    labels = [cv2.imread(str(tmp_path / "voc" / "SegmentationClassAug" / f"photo{i}.png"), cv2.IMREAD_UNCHANGED)
              for i in range(3)]
    _, hist, scores = port.port_test_loop(ref, decoded, labels, PORT_MEAN, 21)
    out = tmp_path / "results.json"
    ran = CliRunner().invoke(eval_command, ["--checkpoint", str(checkpoint), "--dataset", "voc12", "--root",
                                            str(tmp_path / "voc"), "--split", "val", "--protocol", "voc12-v2-msc-port",
                                            "--device", "cpu", "--no-progress", "--output", str(out)])
    assert ran.exit_code == 0, ran.output
    data = json.loads(out.read_text())
    assert data["msc_resize"] == "deeplab-pytorch-pre1.6" and data["settings"]["mean_arithmetic"] == "float64"
    assert data["settings"]["mean_bgr"] == list(PORT_MEAN)
    assert np.array_equal(np.array(data["confusion_matrix"]), hist)
    for key, value in scores.items():
        assert data["scores"][key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    clash = CliRunner().invoke(eval_command, ["--checkpoint", str(checkpoint), "--dataset", "shapes", "--protocol",
                                              "voc12-v2-msc-port", "--msc-resize", "caffe"])
    assert clash.exit_code == 2 and "--protocol voc12-v2-msc-port sets --msc-resize" in clash.stderr


def test_pil_nearest_labels_are_the_ports_at_its_training_sizes():
    """The port's resize_labels (PIL NEAREST) at the 321 crop's map sizes: 41 (1x, max), 21
    (0.5x), 31 (0.75x)."""
    labels = torch.from_numpy(label_for(photos()[0][:321, :321]).astype(np.int64))[None].repeat(2, 1, 1)
    for side in (41, 21, 31):
        assert torch.equal(resize_labels(labels, (side, side)), port.port_resize_labels(labels, (side, side)))


def test_one_port_recipe_training_step_is_the_ports_loss_and_gradients(tmp_path):
    """voc12_port's model (the port's pyramid, frozen BN) and loss on a 321 crop of a photo,
    weights from the port's model: the loss and every conv weight's and bias's gradient equal
    the port's main.py train iteration on its own model within float32 rounding (BN is frozen:
    the port's optimizer groups hold only conv weights and biases, main.py get_params)."""
    config = load_config("voc12_port", ["model.n_blocks=[1,1,1,1]", "model.stem_channels=2"])
    assert config["model"]["msc_resize"] == "deeplab-pytorch-pre1.6"
    ref, result = converted(tmp_path, 21, torch_pre16=True)
    model = build_train_model(config)
    assert model.resize == "deeplab-pytorch-pre1.6"
    model.load_state_dict(result.model.state_dict())
    model.train()
    crops = [p[:321, :321] for p in photos()[:2]]
    x = torch.from_numpy(np.stack([port.port_input(c, PORT_MEAN) for c in crops]))
    labels = torch.from_numpy(np.stack([label_for(c) for c in crops]).astype(np.int64))
    ours = segmentation_loss(model.forward_msc(x), labels, label_resize=config["loss"]["label_resize"])
    theirs = port.port_loss(ref, x, labels)
    ours.backward()
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=2e-6)
    ours_params, theirs_params = dict(model.named_parameters()), dict(ref.named_parameters())
    compared = 0
    for record in result.records:
        if record.status == "mapped" and record.key in theirs_params and theirs_params[record.key].grad is not None:
            g_ours, g_theirs = ours_params[record.target].grad, theirs_params[record.key].grad
            if g_ours is None:  # frozen BatchNorm (freeze_bn; the port's optimizer leaves BN out too)
                assert ".bn." in record.target and not ours_params[record.target].requires_grad, record.target
                continue
            assert (g_ours - g_theirs).abs().max().item() <= 1e-4 * g_theirs.abs().max().item() + 1e-7, record.key
            compared += 1
    assert compared > 10
