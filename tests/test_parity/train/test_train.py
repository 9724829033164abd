"""Training: poly LR, parameter groups, losses, init loading, checkpoints, exact resume,
divergence, the CLI, and a real CPU run on procedural shapes that must learn."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from deeplab_caffe.models import (CheckpointError, build_model, default_config, load_checkpoint, read_checkpoint,
                    save_checkpoint)
from deeplab_caffe.parity.commands.train import main as train_main
from deeplab_caffe.parity.train.checkpoint import TRAIN_CHECKPOINT_FORMAT, read_train_checkpoint
from deeplab_caffe.parity.train.config import ConfigError, load_config
from deeplab_caffe.parity.train.init import load_init_weights
from deeplab_caffe.parity.train.batches import BatchStream, build_train_dataset
from deeplab_caffe.parity.train.distributed import DistContext
from deeplab_caffe.parity.train.loop import (Step, Trainer, TrainingDivergedError, build_train_model, train,
                                             train_and_evaluate)
from deeplab_caffe.parity.train.loss import caffe_shrink_labels, loss_terms, resize_labels, segmentation_loss
from deeplab_caffe.parity.train.solver import param_groups, poly_lr, set_lr

#: a few-second CPU config: 16 shapes of 32 x 32 (crop 33 = 32 + 1), MSC on, 2 x 2 images per update
TINY = [
    "dataset.kwargs.n_images=16", "dataset.kwargs.size=[32, 32]", "input.crop_size=33",
    "solver.batch_size=2", "solver.iter_size=2", "solver.max_iter=6", "model.msc=true",
    "log.checkpoint_every=3", "log.image_every=2", "log.log_every=1",
]


def tiny_config(*extra: str) -> dict:
    return load_config("shapes", TINY + list(extra))


# ------------------------------------------------------------------------------------------
# Schedule and parameter groups


@pytest.mark.parametrize(("iteration", "expected"), [
    (0, 2.5e-4),
    (1, 0.00024998874997187446),
    (10000, 0.00013397168281703665),
    (19999, 3.3652165227458613e-08),
    (20000, 0.0),
])
def test_poly_lr_values(iteration: int, expected: float) -> None:
    assert poly_lr(2.5e-4, iteration, 20000, 0.9) == expected


def test_poly_lr_with_a_step_is_the_seed_ports_scheduler() -> None:
    """The port (deeplab-pytorch main.py + libs/utils/lr_scheduler.py) trains update k = 1..max
    with the optimizer's current LR, then calls ``scheduler.step(epoch=k)``, which sets the LR to
    ``base * (1 - k / max) ** power`` only when ``k % LR_DECAY == 0`` and keeps it otherwise.
    Played out here step by step, for a short schedule."""
    base, max_iter, power, decay = 2.5e-4, 95, 0.9, 10
    current, port = base, []
    for k in range(1, max_iter + 1):
        port.append(current)  # the LR update k runs with
        if k % decay == 0 and k <= max_iter:
            current = base * (1 - k / max_iter) ** power
    ours = [poly_lr(base, k - 1, max_iter, power, step=decay) for k in range(1, max_iter + 1)]
    assert ours == pytest.approx(port, rel=1e-15, abs=0)
    assert ours[10] < ours[9] == ours[1] == base and len(set(ours)) == 10  # held for 10 updates
    assert poly_lr(base, 37, max_iter, power) != poly_lr(base, 37, max_iter, power, step=decay)


def test_poly_lr_rejects_iterations_outside_the_schedule() -> None:
    with pytest.raises(ValueError, match="outside 0..20000"):
        poly_lr(2.5e-4, 20001, 20000, 0.9)


def _tiny_recipe_model(freeze_bn: bool) -> tuple[torch.nn.Module, dict]:
    cfg = load_config("voc12", [
        "model.n_blocks=[1, 1, 1, 1]", "model.stem_channels=8", "model.aspp_rates=[1, 2]",
        f"model.freeze_bn={str(freeze_bn).lower()}", "model.msc=false", "model.init_checkpoint=null",
    ])
    return build_train_model(cfg), cfg


def test_param_groups_get_1x_10x_20x_and_no_bias_decay() -> None:
    model, cfg = _tiny_recipe_model(freeze_bn=True)
    groups = param_groups(model, cfg)
    assert [g["name"] for g in groups] == ["backbone", "classifier_weight", "classifier_bias"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0, 20.0]
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert grouped["classifier_weight"] == ["classifier.branches.0.weight", "classifier.branches.1.weight"]
    assert grouped["classifier_bias"] == ["classifier.branches.0.bias", "classifier.branches.1.bias"]
    # frozen BN: only convolution weights are trained in the backbone
    assert grouped["backbone"] and all(n.endswith("conv.weight") for n in grouped["backbone"])
    optimizer = torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9)
    lr = set_lr(optimizer, 2.5e-4, 10000, 20000, 0.9)
    assert lr == 0.00013397168281703665
    assert [g["lr"] for g in optimizer.param_groups] == [lr, lr * 10.0, lr * 20.0]


def test_trainable_bn_affine_joins_the_backbone_group() -> None:
    model, cfg = _tiny_recipe_model(freeze_bn=False)
    backbone = param_groups(model, cfg)[0]
    names = {id(p): n for n, p in model.named_parameters()}
    assert any(names[id(p)].endswith("bn.weight") for p in backbone["params"])
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in param_groups(model, cfg)) == n_trainable


# ------------------------------------------------------------------------------------------
# Loss


def test_resize_labels_is_nearest_like_the_seed_port() -> None:
    """PIL's NEAREST (the port's resize_labels) samples the pixel under each output centre:
    4 -> 2 takes rows/columns 1 and 3 (tests/test_converter/test_seed_port_rows.py holds it
    against PIL itself at the port's sizes)."""
    labels = torch.arange(16).reshape(1, 4, 4)
    assert resize_labels(labels, (2, 2)).tolist() == [[[5, 7], [13, 15]]]
    assert resize_labels(labels, (4, 4)) is labels


def test_single_map_loss_is_cross_entropy_mean_over_labelled_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, :2] = 255
    expected = F.cross_entropy(logits, resize_labels(labels, (4, 4)), ignore_index=255)
    got = segmentation_loss({"out": logits}, labels, label_resize="nearest")
    assert torch.allclose(got, expected, rtol=1e-6, atol=0)


def test_port_msc_loss_sums_the_four_maps_with_nearest_labels() -> None:
    torch.manual_seed(0)
    maps = {"1x": torch.randn(1, 3, 6, 6), "0.75x": torch.randn(1, 3, 5, 5),
            "0.5x": torch.randn(1, 3, 3, 3), "fused": torch.randn(1, 3, 6, 6)}
    labels = torch.randint(0, 3, (1, 41, 41))
    from seed_port_reference import port_resize_labels  # the port's PIL NEAREST (main.py resize_labels)

    expected = sum(F.cross_entropy(m, port_resize_labels(labels, tuple(m.shape[-2:])), ignore_index=255)
                   for m in maps.values())
    assert torch.allclose(segmentation_loss(maps, labels, label_resize="nearest"), expected, rtol=1e-6, atol=0)


def test_caffe_label_shrink_samples_every_8th_row_and_column_at_321() -> None:
    labels = torch.arange(321 * 321).reshape(1, 321, 321)
    shrunk = caffe_shrink_labels(labels, 8)
    assert shrunk.shape == (1, 41, 41)
    rows = torch.arange(0, 321, 8)
    assert torch.equal(shrunk[0], labels[0][rows][:, rows])
    # nearest-neighbour resizing (the seed port) samples other rows: floor(i * 321 / 41)
    assert not torch.equal(resize_labels(labels, (41, 41)), shrunk)
    assert torch.equal(caffe_shrink_labels(labels, 16)[0], labels[0][::16, ::16])


def test_caffe_label_shrink_refuses_sizes_where_caffe_blends_label_ids() -> None:
    with pytest.raises(ValueError, match="blend label ids"):
        caffe_shrink_labels(torch.zeros(1, 320, 321, dtype=torch.long), 8)


def test_official_msc_loss_pairs_each_map_as_the_train_prototxt() -> None:
    """fused and 1x vs label_shrink (8), 0.5x vs label_shrink16, 0.75x upsampled to label_shrink."""
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 65, 65))
    labels[0, :20] = 255
    maps = {"1x": torch.randn(2, 3, 9, 9), "0.75x": torch.randn(2, 3, 7, 7), "0.5x": torch.randn(2, 3, 5, 5),
            "fused": torch.randn(2, 3, 9, 9)}
    l8, l16 = labels[:, ::8, ::8], labels[:, ::16, ::16]
    up = F.interpolate(maps["0.75x"], size=(9, 9), mode="bilinear", align_corners=True)
    expected = {"1x": F.cross_entropy(maps["1x"], l8, ignore_index=255),
                "0.75x": F.cross_entropy(up, l8, ignore_index=255),
                "0.5x": F.cross_entropy(maps["0.5x"], l16, ignore_index=255),
                "fused": F.cross_entropy(maps["fused"], l8, ignore_index=255)}
    got = loss_terms(maps, labels)
    for name, value in expected.items():
        assert torch.allclose(got[name], value, rtol=1e-6, atol=0), name


def test_official_loss_needs_a_32k_plus_1_crop_with_msc() -> None:
    with pytest.raises(ConfigError, match=r"input.crop_size' must be 32k \+ 1"):
        load_config("voc12", ["input.crop_size=320"])
    load_config("voc12", ["input.crop_size=320", "loss.label_resize=nearest"])


def test_all_ignored_map_contributes_zero() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = segmentation_loss({"out": logits}, torch.full((1, 2, 2), 255), label_resize="nearest")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


# ------------------------------------------------------------------------------------------
# Init from a converted checkpoint


def test_init_loads_the_backbone_and_reinitialises_a_mismatched_classifier(tmp_path: Path) -> None:
    # a "coco_init"-like checkpoint: same backbone, single 1x1 classifier with 7 classes
    init_cfg = default_config(7, n_blocks=(1, 1, 1, 1), aspp_rates=None, stem_channels=8)
    torch.manual_seed(123)
    init_model = build_model(init_cfg)
    save_checkpoint(tmp_path / "init.pth", init_model, init_cfg, {"source": "test"})

    cfg = tiny_config("model.msc=false")
    model = build_train_model(cfg)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("classifier.")}
    report = load_init_weights(model, tmp_path / "init.pth")

    state = model.state_dict()
    init_state = init_model.state_dict()
    backbone_keys = [k for k in state if k.startswith("backbone.")]
    assert sorted(report.loaded) == sorted(backbone_keys)
    assert all(torch.equal(state[k], init_state[k]) for k in backbone_keys)
    assert sorted(report.reinitialised) == sorted(fresh_head)
    assert all(torch.equal(state[k], v) for k, v in fresh_head.items())
    assert report.unused == ["classifier.branches.0.weight", "classifier.branches.0.bias"]
    assert "7 classes, 1 branch(es)" in report.reason and "4 classes, 2 branch(es)" in report.reason
    expected = f"init from {tmp_path / 'init.pth'}: loaded {len(backbone_keys)} tensors"
    assert report.summary().startswith(expected)


def test_init_loads_a_matching_classifier_too(tmp_path: Path) -> None:
    cfg = tiny_config("model.msc=false", "seed=5")
    source = build_train_model(cfg)
    from deeplab_caffe.parity.train.config import model_config_from

    save_checkpoint(tmp_path / "same.pth", source, model_config_from(cfg), {})
    model = build_train_model(tiny_config("model.msc=false", "seed=6"))
    report = load_init_weights(model, tmp_path / "same.pth")
    assert report.reinitialised == [] and report.unused == []
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_init_with_a_different_backbone_is_an_error(tmp_path: Path) -> None:
    other = default_config(4, n_blocks=(1, 1, 1, 1), aspp_rates=None, stem_channels=16)
    save_checkpoint(tmp_path / "other.pth", build_model(other), other, {})
    model = build_train_model(tiny_config())
    message = r"other\.pth: init checkpoint 'backbone\.stem\.conv1\.conv\.weight' has shape"
    with pytest.raises(CheckpointError, match=message):
        load_init_weights(model, tmp_path / "other.pth")


# ------------------------------------------------------------------------------------------
# Checkpoints and exact resume


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = tiny_config()
    full = train(cfg, workdir=tmp_path / "full", device="cpu", progress=False)
    assert full.iteration == 6 and full.completed and len(full.losses) == 6

    first = train(cfg, workdir=tmp_path / "split", device="cpu", progress=False, max_iters=3)
    assert first.iteration == 3 and not first.completed
    assert first.losses == full.losses[:3]
    second = train(cfg, workdir=tmp_path / "split", device="cpu", progress=False, resume=True)
    assert second.iteration == 6 and second.completed
    assert second.losses == full.losses[3:]  # the same batches, in the same order

    a, _, meta_a = read_checkpoint(full.model_path)
    b, _, meta_b = read_checkpoint(second.model_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    opt_a = read_train_checkpoint(tmp_path / "full" / "latest.pth")["optimizer"]["state"]
    opt_b = read_train_checkpoint(tmp_path / "split" / "latest.pth")["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["history"], opt_b[i]["history"]) for i in opt_a)  # CaffeSGD's V
    assert meta_a["iterations"] == meta_b["iterations"] == 6


def test_the_public_trainer_on_its_own_batches_is_the_update_train_runs(tmp_path: Path) -> None:
    """``Trainer`` driven step by step with the recipe's batch stream and a hook gives the losses
    and the weights ``train`` (``deeplab-train``) ends with, bit for bit on the CPU; a plain
    list of batches drives it too."""
    cfg = tiny_config()
    full = train(cfg, workdir=tmp_path, device="cpu", progress=False)

    class Record:
        def __init__(self) -> None:
            self.steps: list[tuple[int, float, float]] = []

        def after_step(self, trainer: Trainer, step: Step) -> None:
            assert trainer.iteration == step.done
            self.steps.append((step.done, step.loss, step.lr))

    model = build_train_model(cfg).train()
    stream = BatchStream(build_train_dataset(cfg), 2, int(cfg["seed"]), DistContext(), 0, False)
    record = Record()
    trainer = Trainer(model, cfg, stream, hooks=[record])
    steps = [trainer.run_step() for _ in range(6)]
    assert [s.loss for s in steps] == full.losses and [d for d, _, _ in record.steps] == [1, 2, 3, 4, 5, 6]
    assert record.steps[0][2] == cfg["solver"]["lr"]  # the first update uses the base LR
    ours, _, _ = read_checkpoint(full.model_path)
    assert all(torch.equal(model.state_dict()[k], ours[k]) for k in ours)

    images, labels, _ = next(iter(BatchStream(build_train_dataset(cfg), 2, 0, DistContext(), 0, False)))
    fresh = build_train_model(cfg).train()
    listed = Trainer(fresh, cfg, [(images, labels)] * 2, start_iter=5)  # iter_size 2: one update
    step = listed.run_step()
    assert step.done == listed.iteration == 6 and math.isfinite(step.loss)
    assert step.lr == pytest.approx(cfg["solver"]["lr"] * (1 - 5 / 6) ** 0.9, rel=1e-12)


def test_training_checkpoint_contents_and_files(tmp_path: Path) -> None:
    cfg = tiny_config("log.keep_checkpoints=1")
    result = train(cfg, workdir=tmp_path, device="cpu", progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint_6.pth", "latest.pth", "model.pth"]
    payload = torch.load(tmp_path / "latest.pth", map_location="cpu", weights_only=True)
    assert payload["format"] == TRAIN_CHECKPOINT_FORMAT
    assert payload["iteration"] == 6
    # 8 batches of 2 per epoch; 6 updates x iter_size 2 = 12 batches -> epoch 1, batch 4
    assert payload["data"] == {"epoch": 1, "batch": 4}
    assert set(payload["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert payload["config"] == cfg
    assert len(payload["optimizer"]["param_groups"]) == 3
    assert list(tmp_path.glob("tb/events.out.tfevents.*"))
    assert result.checkpoint_path == tmp_path / "checkpoint_6.pth"

    model = load_checkpoint(result.model_path)  # what evaluation and the demo read
    assert model.config["msc"] is not None and model.config["n_classes"] == 4
    meta = model.metadata
    assert meta["recipe"] == "deeplab_v2_shapes_smoke"
    assert meta["dataset"] == "shapes" and meta["seed"] == 0 and meta["iterations"] == 6
    assert meta["class_names"] == ["background", "circle", "rectangle", "triangle"]
    assert meta["train_config"] == cfg


def test_a_forced_fresh_run_in_an_old_workdir_keeps_its_own_checkpoints(tmp_path: Path) -> None:
    train(tiny_config("log.keep_checkpoints=1"), workdir=tmp_path, device="cpu", progress=False)
    train(tiny_config("log.keep_checkpoints=1"), workdir=tmp_path, device="cpu", progress=False,
          max_iters=3, force=True)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pth")) == ["checkpoint_3.pth", "checkpoint_6.pth"]
    assert read_train_checkpoint(tmp_path / "latest.pth")["iteration"] == 3


def test_resume_refuses_a_changed_recipe(tmp_path: Path) -> None:
    train(tiny_config(), workdir=tmp_path, device="cpu", progress=False, max_iters=1)
    with pytest.raises(ConfigError, match="config key 'solver.lr' differs"):
        train(tiny_config("solver.lr=0.1"), workdir=tmp_path, device="cpu", progress=False, resume=True)
    with pytest.raises(CheckpointError, match="no training checkpoint to resume from"):
        train(tiny_config(), workdir=tmp_path / "empty", device="cpu", progress=False, resume=True)


def test_a_checkpoint_from_before_a_key_existed_resumes_with_its_default(tmp_path: Path) -> None:
    train(tiny_config(), workdir=tmp_path, device="cpu", progress=False, max_iters=1)
    payload = torch.load(tmp_path / "latest.pth", weights_only=True)
    del payload["config"]["solver"]["lr_step"]  # as checkpoints were written before the key
    torch.save(payload, tmp_path / "latest.pth")
    train(tiny_config(), workdir=tmp_path, device="cpu", progress=False, resume=True)
    with pytest.raises(ConfigError, match="config key 'solver.lr_step' differs"):
        train(tiny_config("solver.lr_step=10"), workdir=tmp_path, device="cpu", progress=False, resume=True)


def test_nan_loss_stops_with_the_iteration(tmp_path: Path) -> None:
    cfg = tiny_config("solver.lr=1e10", "solver.max_iter=20", "model.msc=false", "solver.iter_size=1")
    with pytest.raises(TrainingDivergedError, match=r"loss is (nan|inf) at iteration \d+ \(lr "):
        train(cfg, workdir=tmp_path, device="cpu", progress=False)
    assert not (tmp_path / "model.pth").exists()


def test_dataset_smaller_than_a_batch_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the dataset has 16 images, fewer than one batch of 32"):
        train(tiny_config("solver.batch_size=32"), workdir=tmp_path, device="cpu", progress=False)


# ------------------------------------------------------------------------------------------
# CLI


def test_cli_trains_and_reports(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_main, [
        "--config", "shapes", *TINY, "solver.max_iter=2", "--workdir", str(tmp_path),
        "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^2/2 iterations, loss \d+\.\d{4}", result.stdout)
    assert (tmp_path / "model.pth").is_file()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--config", "voc13"], 2, "error: unknown config 'voc13'"),
    (["--config", "shapes", "solver.lrr=1"], 2,
     "error: override 'solver.lrr=1': unknown config key 'solver.lrr'"),
    (["--config", "voc12", "dataset.root=/nonexistent/voc", "model.init_checkpoint=null"], 2,
     "error: voc12 root not found: /nonexistent/voc"),
    (["--config", "shapes", "model.init_checkpoint=/nonexistent/init.pth"], 2,
     "error: /nonexistent/init.pth: init checkpoint not found (model.init_checkpoint); convert the COCO init"),
    (["--config", "shapes", *TINY, "solver.lr=1e10", "solver.max_iter=20", "model.msc=false"], 1,
     "error: training diverged: loss is"),
])
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    result = CliRunner().invoke(train_main, [*args, "--workdir", str(tmp_path), "--device", "cpu",
                                             "--no-progress"])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert result.stderr.rstrip("\n").endswith(errors[0])  # the last line says why


# ------------------------------------------------------------------------------------------
# A real CPU run that learns


@pytest.mark.slow
def test_shapes_smoke_recipe_from_a_converted_caffemodel_reaches_miou_0_8(tmp_path: Path) -> None:
    """The shapes recipe (configs/shapes.yaml: the official recipe at toy size, 200 updates of 4
    images 97 x 97, seed 0) from a converted synthetic caffemodel (converter.synthetic: official
    topology, 91 classes, single classifier), evaluated on 50 held-out images."""
    from deeplab_caffe.converter import convert
    from deeplab_caffe.converter.synthetic import make_synthetic_deeplab

    fixture = make_synthetic_deeplab(tmp_path / "fixture", default_config(
        91, n_blocks=(1, 1, 1, 1), aspp_rates=None, stem_channels=8), seed=0, msc_copies=False)
    conversion = convert(fixture.caffemodel_path, None, n_classes=91)
    save_checkpoint(tmp_path / "init.pth", conversion.state_dict, conversion.config, {"source": "fixture"})
    cfg = load_config("shapes", [f"model.init_checkpoint={tmp_path / 'init.pth'}"])
    result, scores = train_and_evaluate(cfg, workdir=tmp_path / "run", device="cpu", progress=False)
    assert result.iteration == 200 and result.completed
    assert result.init is not None and result.init.reinitialised  # the 91-class classifier does not fit
    assert math.isfinite(result.last_loss) and result.last_loss < 0.6
    assert scores.n_images == 50
    assert scores.scores["Mean IoU"] >= 0.8, scores.scores
