"""Data-parallel training: deterministic sharding, and a two-process gloo run under torchrun
that ends with the weights of a single-process run on the same global batch."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deeplab_caffe.models import read_checkpoint, save_checkpoint
from deeplab_caffe.parity.data.datasets import ProceduralShapes
from deeplab_caffe.parity.data.transforms import EvalTransform
from deeplab_caffe.parity.train.config import load_config, model_config_from
from deeplab_caffe.parity.train.distributed import env_world, epoch_batches, epoch_permutation
from deeplab_caffe.parity.train.loop import build_train_model, train

REPO = Path(__file__).resolve().parents[3]


def test_epoch_permutation_is_a_function_of_seed_and_epoch() -> None:
    assert epoch_permutation(10, seed=0, epoch=0) == epoch_permutation(10, seed=0, epoch=0)
    assert sorted(epoch_permutation(10, seed=0, epoch=0)) == list(range(10))
    assert epoch_permutation(10, seed=0, epoch=0) != epoch_permutation(10, seed=0, epoch=1)
    assert epoch_permutation(10, seed=0, epoch=0) != epoch_permutation(10, seed=1, epoch=0)


def test_rank_shards_split_each_global_batch_in_order() -> None:
    whole = epoch_batches(11, 4, seed=3, epoch=2)
    assert len(whole) == 2 and all(len(b) == 4 for b in whole)  # 11 // 4 batches, tail dropped
    rank0 = epoch_batches(11, 4, seed=3, epoch=2, rank=0, world_size=2)
    rank1 = epoch_batches(11, 4, seed=3, epoch=2, rank=1, world_size=2)
    assert [a + b for a, b in zip(rank0, rank1)] == whole
    assert whole == [epoch_permutation(11, 3, 2)[0:4], epoch_permutation(11, 3, 2)[4:8]]


def test_sharding_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="batch size 5 is not divisible by the 2 processes"):
        epoch_batches(10, 5, seed=0, epoch=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="the dataset has 3 images, fewer than one batch of 4"):
        epoch_batches(3, 4, seed=0, epoch=0)


def test_env_world_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert env_world() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_world() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="inconsistent RANK=4 WORLD_SIZE=4"):
        env_world()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: frozen BN (the recipe: per-rank BN statistics would differ from the full batch's), MSC on,
#: a global batch of 4 (2 per rank) x iter_size 2, 4 updates crossing an epoch boundary
DDP_OVERRIDES = [
    "dataset.kwargs.n_images=12", "dataset.kwargs.size=[32, 32]", "input.crop_size=33",
    "model.freeze_bn=true", "model.msc=true", "solver.batch_size=4", "solver.iter_size=2",
    "solver.max_iter=4", "solver.lr=0.0003", "log.checkpoint_every=2", "log.tensorboard=false",
]


def _calibrated_init(path: Path) -> Path:
    """An init checkpoint whose BN statistics fit the data (as the converted COCO init's do):
    frozen BN at its fresh identity statistics makes a from-scratch net's logits explode."""
    model = build_train_model(load_config("shapes", DDP_OVERRIDES + ["model.freeze_bn=false"])).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batch
    shapes = ProceduralShapes(8, (48, 48), 4, seed=1)
    x = torch.stack([EvalTransform()(*shapes[i][:2])[0] for i in range(len(shapes))])
    with torch.no_grad():
        model(x)
    save_checkpoint(path, model, model_config_from(load_config("shapes", DDP_OVERRIDES)), {})
    return path


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process_on_the_global_batch(tmp_path: Path) -> None:
    """torchrun --nproc_per_node 2 (gloo, CPU): each rank takes half of every global batch,
    DDP averages the gradients and the loss is normalised by the global pixel count, so the
    final weights equal a single process's within 1e-5 (float summation order differs)."""
    overrides = DDP_OVERRIDES + [f"model.init_checkpoint={_calibrated_init(tmp_path / 'init.pth')}"]
    config = load_config("shapes", overrides)
    single = train(config, workdir=tmp_path / "single", device="cpu", progress=False)
    assert all(math.isfinite(v) for v in single.losses) and single.losses[-1] < single.losses[0]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "deeplab_caffe.parity.commands.train", "--config", "shapes", *overrides,
        "--workdir", str(tmp_path / "ddp"), "--device", "cpu", "--no-progress",
    ]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("4/4 iterations") == 1  # only rank 0 reports

    a, _, meta_a = read_checkpoint(single.model_path)
    b, _, meta_b = read_checkpoint(tmp_path / "ddp" / "model.pth")
    assert meta_a["world_size"] == 1 and meta_b["world_size"] == 2
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert diff <= 1e-5, f"max abs weight difference {diff}"
    init, _, _ = read_checkpoint(tmp_path / "init.pth")
    moved = max(float((a[k].double() - init[k].double()).abs().max()) for k in a)
    assert moved > 1e-3  # the runs did train: the tolerance is far below the updates
    assert abs(meta_a["final_loss"] - meta_b["final_loss"]) <= 1e-5 * max(1.0, abs(meta_a["final_loss"]))
    # the training checkpoint (rank 0) records where the data stream stands
    payload = torch.load(tmp_path / "ddp" / "latest.pth", weights_only=True)
    assert payload["world_size"] == 2 and payload["iteration"] == 4
    # 3 global batches per epoch; 4 updates x 2 = 8 batches -> epoch 2, batch 2
    assert payload["data"] == {"epoch": 2, "batch": 2}
