"""Detectron2 DeepLab v3 / v3+ .pkl files onto our models: every key accounted for, and the
converted model equals an independent re-implementation of Detectron2's forward (tests/foreign_detectron2)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import foreign_detectron2 as d2
from deeplab_caffe import models
from deeplab_caffe.converter.cli import main
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.foreign import FORMATS
from deeplab_caffe.converter.foreign.detectron2 import Detectron2Options, detectron2_format, detectron2_mapping
from deeplab_caffe.converter.foreign.rules import export_state_dict, import_checkpoint
from deeplab_caffe.converter.report import import_report
from deeplab_caffe.parity.evaluation.evaluate import upsample_scores


def our_logits(model: torch.nn.Module, image_rgb: torch.Tensor) -> torch.Tensor:
    """Our pipeline: BGR minus the mean (Detectron2's, reversed) in, logits resized to the input
    with align_corners=False (as parity.evaluation does), float64."""
    bgr = image_rgb.flip(1) - torch.tensor(d2.MEAN_RGB[::-1], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model.double()(bgr)
    return F.interpolate(out, size=image_rgb.shape[-2:], mode="bilinear", align_corners=False)


def image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (1, 3, h, w)))


@pytest.mark.parametrize("plus, separable, crop", [
    (True, False, (64, 128)),   # v3+ as published: pooling window 4 x 8 at stride 16, pooled map resized
    (False, False, None),       # v3, global image pooling
    (True, True, (32, 64)),     # depthwise-separable ASPP and 5x5 decoder fuse conv
])
def test_converted_model_matches_detectron2_reference(tmp_path, plus, separable, crop):
    state = d2.random_state(3, plus=plus, separable_convs=separable)
    path = d2.write_pkl(tmp_path / "model_final.pkl", state)
    result = import_checkpoint(path, detectron2_format(Detectron2Options(train_crop=crop)))
    assert {r.status for r in result.records} == {"mapped"}
    assert len(result.records) == len(state) and set(result.filled.values()) >= set(state)
    assert result.config["arch"] == ("deeplab_v3plus" if plus else "deeplab_v3")
    x = image(128, 256)  # features 8 x 16: tiled by the 4 x 8 and 2 x 4 windows
    pool = None if crop is None else (crop[0] // 16, crop[1] // 16)
    with torch.no_grad():
        want = d2.forward(state, x, pool_kernel=pool)
    got = our_logits(result.model, x)
    assert got.shape == want.shape == (1, 3, 128, 256)
    assert (got - want).abs().max().item() <= 1e-5


def test_reference_differs_when_a_convention_is_dropped(tmp_path):
    """The comparison can fail: our model with the stride on the 1x1 conv (Caffe's) is far off."""
    state = d2.random_state(4)
    path = d2.write_pkl(tmp_path / "m.pkl", state)
    wrong = import_checkpoint(path, detectron2_format(Detectron2Options(stride_in_1x1=True, train_crop=None)))
    x = image(64, 96)
    with torch.no_grad():
        want = d2.forward(state, x)
    assert (our_logits(wrong.model, x) - want).abs().max().item() > 1e-2


def test_full_r103_layout_every_key_accounted_for(tmp_path):
    """The model zoo's R103 v3+ layout (3, 4, 23, 3 blocks, 128-channel deep stem, 19 classes),
    with pixel_mean/std and num_batches_tracked, as Detectron2 saves them."""
    state = d2.random_state(0, blocks=(3, 4, 23, 3), stem_out=128, res2_out=256, bottleneck=64,
                            aspp_channels=256, project_channels=48, convs_dim=256, n_classes=19)
    norms = [k.removesuffix(".running_mean") for k in state if k.endswith(".norm.running_mean")]
    state.update({f"{n}.num_batches_tracked": np.array(90000, dtype=np.int64) for n in norms})
    state["pixel_mean"] = np.array(d2.MEAN_RGB, dtype=np.float32).reshape(3, 1, 1)
    state["pixel_std"] = np.array(d2.STD_RGB, dtype=np.float32).reshape(3, 1, 1)
    path = d2.write_pkl(tmp_path / "model_final_a8a355.pkl", state)
    result = import_checkpoint(path, FORMATS["detectron2"])
    outside = {r.key for r in result.records if r.status == "outside"}
    assert outside == {"pixel_mean", "pixel_std"}
    assert len(result.records) == len(state)
    assert not [src for src in result.filled.values() if src.startswith("(absent")]
    assert set(result.filled) == set(result.model.state_dict())
    config = result.config
    assert config["stem"]["deep_channels"] == 64 and config["stem"]["channels"] == 128
    assert [len(s["blocks"]) for s in config["stages"]] == [3, 4, 23, 3]
    assert config["stages"][3]["multi_grid"] == [1, 2, 4] and config["stages"][3]["dilation"] == 2
    assert config["head"]["pooling_kernel"] == [32, 64] and config["decoder"]["low_level_channels"] == 48
    assert config["input_std"] == pytest.approx(list(d2.STD_RGB[::-1]))
    report = import_report(result)
    assert report["accounting"]["unaccounted"] == 0 and report["accounting"]["keys"] == len(state)
    assert report["accounting"]["pytorch_parameters"] == sum(
        v.size for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        and not k.startswith("pixel_"))


def test_unknown_key_is_one_line_error(tmp_path):
    state = d2.random_state(5) | {"sem_seg_head.extra.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(ConversionError, match=r"^.*m\.pkl: key sem_seg_head\.extra\.weight: no detectron2 rule"):
        import_checkpoint(d2.write_pkl(tmp_path / "m.pkl", state), FORMATS["detectron2"])


def test_missing_key_names_the_detectron2_key(tmp_path):
    state = d2.random_state(5)
    del state["backbone.res3.1.conv2.norm.running_var"]
    with pytest.raises(ConversionError, match=r"missing key backbone\.res3\.1\.conv2\.norm\.running_var"):
        import_checkpoint(d2.write_pkl(tmp_path / "m.pkl", state), FORMATS["detectron2"])


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": _Evil()}}))
    with pytest.raises(ConversionError, match=r"evil\.pkl: not a readable Detectron2 \.pkl .*refusing to load builtins\.print"):
        import_checkpoint(path, FORMATS["detectron2"])
    assert "code ran" not in capsys.readouterr().out


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"blobs": {}}))
    with pytest.raises(ConversionError, match=r"x\.pkl: not a Detectron2 checkpoint"):
        import_checkpoint(path, FORMATS["detectron2"])


def test_cli_converts_and_the_checkpoint_matches_the_reference(tmp_path):
    state = d2.random_state(6)
    path = d2.write_pkl(tmp_path / "model_final.pkl", state)
    out = tmp_path / "d2.safetensors"
    result = CliRunner().invoke(main, ["--from", "detectron2", str(path), "--output", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d2.report.json").read_text())
    assert report["accounting"]["keys"] == report["accounting"]["mapped"] == len(state)
    assert "| `sem_seg_head.decoder.res5.project_conv.convs.4.1.weight` | 8x128x1x1 | float32 | mapped | " \
           "`aspp.pooling.weight` |" in (tmp_path / "d2.report.md").read_text()
    model = models.load_checkpoint(out)
    assert model.metadata["source_format"] == "detectron2"
    assert model.metadata["mean_bgr"] == pytest.approx(d2.MEAN_RGB[::-1])
    x = image(512, 1024)  # the published 32 x 64 pooling window fits the features exactly: one pooled value
    with torch.no_grad():
        want = d2.forward(state, x, pool_kernel=(32, 64))
    assert (our_logits(model, x) - want).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="the 4x4 features are not a multiple of the 32x64 image-pooling window"):
        our_logits(model, image(64, 64))  # Detectron2 refuses such inputs too


def test_cli_bad_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04junk")
    result = CliRunner().invoke(main, ["--from", "detectron2", str(bad), "--output", str(tmp_path / "o.pth")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable")
    assert not (tmp_path / "o.pth").exists()


@pytest.mark.parametrize("plus, separable", [(True, False), (True, True), (False, False)])
def test_rules_invert_to_the_detectron2_layout(tmp_path, plus, separable):
    state = d2.random_state(7, plus=plus, separable_convs=separable)
    result = import_checkpoint(d2.write_pkl(tmp_path / "m.pkl", state), FORMATS["detectron2"])
    back = export_state_dict(result.state_dict, detectron2_mapping(plus=plus), result.model)
    assert {k for k in back if not k.endswith(".num_batches_tracked")} == set(state)  # absent from the file: zeros
    assert all(np.array_equal(back[k].numpy(), v) for k, v in state.items())


def _ours_as_detectron2(model: torch.nn.Module, image_rgb: torch.Tensor, mode: str) -> torch.Tensor:
    """Our evaluation's path: BGR minus the mean, the model, ``upsample_scores`` (float64)."""
    bgr = image_rgb.flip(1) - torch.tensor(d2.MEAN_RGB[::-1], dtype=torch.float64).view(1, 3, 1, 1)
    size = tuple(image_rgb.shape[-2:])
    with torch.no_grad():
        logits = model.double()(bgr)
    return upsample_scores(logits.double(), size, size, mode, models.output_stride(model.config)).double()


@pytest.mark.parametrize("plus", [True, False], ids=["v3plus", "v3"])
def test_scale_factor_crop_is_detectron2s_final_output_at_sides_off_the_stride(tmp_path, plus):
    """At 113 x 241 (neither side a multiple of 16 or 4) Detectron2's output (head upsampled by
    scale_factor = common_stride, then sem_seg_postprocess's top-left crop) equals our
    scale_factor_crop; resizing to the image (align_corners_false) is measurably another thing."""
    state = d2.random_state(11, plus=plus)
    result = import_checkpoint(d2.write_pkl(tmp_path / "m.pkl", state),
                               detectron2_format(Detectron2Options(train_crop=(64, 128))))
    x = image(113, 241, seed=5)  # features 8 x 16: a multiple of the 4 x 8 window
    with torch.no_grad():
        want = d2.inference(state, x, pool_kernel=(4, 8))
    assert want.shape == (1, 3, 113, 241)
    got = _ours_as_detectron2(result.model, x, "scale_factor_crop")
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    other = _ours_as_detectron2(result.model, x, "align_corners_false")
    assert (other - want).abs().max().item() > 1e-2 * want.abs().max().item()


def test_features_the_window_does_not_tile_are_refused_as_detectron2_refuses_them(tmp_path):
    """640 x 1280 gives 40 x 80 features: not a multiple of the published 32 x 64 window, so
    Detectron2's ASPP raises ValueError; so does our model (InputSizeError, a ValueError)."""
    state = d2.random_state(12, plus=False)
    model = import_checkpoint(d2.write_pkl(tmp_path / "m.pkl", state), FORMATS["detectron2"]).model
    x = image(640, 1280)
    with pytest.raises(ValueError, match="pool_kernel_size"):
        with torch.no_grad():
            d2.forward(state, x, pool_kernel=(32, 64))
    with pytest.raises(models.InputSizeError, match="the 40x80 features are not a multiple of the 32x64"):
        our_logits(model, x)
    assert models.smallest_input_size(model.config) == (497, 1009)  # features ceil(side / 16) = 32 x 64
    assert models.accepts_input_size(model.config, (1024, 2048)) and models.accepts_input_size(model.config, (497, 1009))
    assert not models.accepts_input_size(model.config, (496, 1009))
    with torch.no_grad():
        assert tuple(model(image(497, 1009)).shape[-2:]) == (32, 64)


def test_a_protocol_5_pickle_converts_like_protocol_4(tmp_path):
    """Python 3.14 pickles with protocol 5 by default: numpy arrays then come back through
    numpy's _frombuffer, which the restricted loader allows (and nothing else new)."""
    state = d2.random_state(13)
    state["backbone.res2.0.conv1.norm.num_batches_tracked"] = np.array(90000, dtype=np.int64)
    old = import_checkpoint(d2.write_pkl(tmp_path / "p4.pkl", state, protocol=4), FORMATS["detectron2"])
    path = d2.write_pkl(tmp_path / "p5.pkl", state, protocol=5)
    assert b"_frombuffer" in path.read_bytes()
    new = import_checkpoint(path, FORMATS["detectron2"])
    assert new.state_dict.keys() == old.state_dict.keys()
    assert all(torch.equal(new.state_dict[k], old.state_dict[k]) for k in old.state_dict)
    evil = tmp_path / "evil5.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": _Evil()}}, protocol=5))
    with pytest.raises(ConversionError, match=r"refusing to load builtins\.print"):
        import_checkpoint(evil, FORMATS["detectron2"])


def test_the_files_pixel_mean_and_std_are_not_used_as_detectron2_does_not_use_them(tmp_path):
    """Detectron2 @ 02b5c4e normalises with the config's PIXEL_MEAN / PIXEL_STD (non-persistent
    buffers): a file whose pixel_mean / pixel_std say otherwise converts to the same model, and
    the report says the values differ and are not used."""
    state = d2.random_state(14)
    plain = import_checkpoint(d2.write_pkl(tmp_path / "plain.pkl", state), FORMATS["detectron2"])
    odd = dict(state, pixel_mean=np.zeros((3, 1, 1), np.float32), pixel_std=np.ones((3, 1, 1), np.float32))
    result = import_checkpoint(d2.write_pkl(tmp_path / "odd.pkl", odd), FORMATS["detectron2"])
    assert result.config == plain.config and result.config["input_std"] == pytest.approx(list(d2.STD_RGB[::-1]))
    x = image(512, 1024)
    with torch.no_grad():
        want = d2.forward(state, x, pool_kernel=(32, 64))  # the config's mean and std
    assert (our_logits(result.model, x) - want).abs().max().item() <= 1e-5
    notes = import_report(result)["notes"]
    assert any(n.startswith("the file's pixel_mean (0, 0, 0) is not used") and "DIFFERS from the config's "
               "123.675, 116.28, 103.53" in n for n in notes), notes
    assert any(n.startswith("the file's pixel_std (1, 1, 1) is not used") for n in notes), notes
    same = dict(state, pixel_mean=np.array(d2.MEAN_RGB, np.float64).reshape(3, 1, 1))
    notes = import_report(import_checkpoint(d2.write_pkl(tmp_path / "same.pkl", same), FORMATS["detectron2"]))["notes"]
    assert any("pixel_mean" in n and "equals the config's" in n for n in notes), notes
    custom = detectron2_format(Detectron2Options(pixel_mean=(100.0, 110.0, 120.0), pixel_std=(50.0, 55.0, 60.0)))
    assert custom.mean_bgr == (120.0, 110.0, 100.0)
    assert import_checkpoint(tmp_path / "plain.pkl", custom).config["input_std"] == [60.0, 55.0, 50.0]


def test_deeplab_parity_eval_refuses_an_untiled_input_in_one_line_and_runs_detectron2s_upsampling(tmp_path):
    """The eval CLI on the 64 x 64 shapes images (4 x 4 features): a 3 x 3 window (train crop
    48 x 48) is refused with one line and exit 2, as Detectron2 would refuse the input; a
    4 x 4 window runs with --upsample scale_factor_crop."""
    from deeplab_caffe.parity.commands.eval import eval_command

    state = d2.random_state(15, plus=False, n_classes=4)
    path = d2.write_pkl(tmp_path / "m.pkl", state)
    for crop in ((48, 48), (64, 64)):
        result = import_checkpoint(path, detectron2_format(Detectron2Options(train_crop=crop)))
        models.save_checkpoint(tmp_path / f"d2_{crop[0]}.pth", result.model, result.config, {"source": "test"})
    args = ["--dataset", "shapes", "--max-images", "1", "--device", "cpu", "--no-progress", "--upsample",
            "scale_factor_crop"]
    refused = CliRunner().invoke(eval_command, ["--checkpoint", str(tmp_path / "d2_48.pth"), *args])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.output
    assert refused.stderr.startswith("error: a 64x64 input (scale 1): the 4x4 features are not a multiple of the "
                                     "3x3 image-pooling window")
    ran = CliRunner().invoke(eval_command, ["--checkpoint", str(tmp_path / "d2_64.pth"), *args])
    assert ran.exit_code == 0, ran.output
    assert "Mean IoU" in ran.stdout
