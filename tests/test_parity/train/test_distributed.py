"""Data-parallel training: deterministic sharding, a two-process gloo run under torchrun that
ends with the weights of a single-process run on the same global batch, and the README's torchrun
commands as real processes: a killed worker restarted (``--max-restarts``), SIGTERM on every
rank, resuming on another process count refused, evaluation split over two processes."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deeplab_caffe.models import read_checkpoint, save_checkpoint
from deeplab_caffe.parity.data.datasets import ProceduralShapes
from deeplab_caffe.parity.data.transforms import EvalTransform
from deeplab_caffe.parity.train.config import load_config, model_config_from
from deeplab_caffe.parity.train.distributed import env_world, epoch_batches, epoch_permutation
from deeplab_caffe.parity.train.checkpoint import read_train_checkpoint
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


# ------------------------------------------------------------------------------------------
# Elastic restarts, preemption and evaluation under torchrun: the README's commands, run as
# real processes (torchrun from this environment, gloo on the CPU)

#: 20 updates of the DDP recipe, a checkpoint every 5: a worker lost or a SIGTERM after the first
#: checkpoint lands mid-run (about 4 updates/s for two processes on the 2-core CI machine)
ELASTIC_OVERRIDES = DDP_OVERRIDES + ["solver.max_iter=20", "log.checkpoint_every=5", "log.log_every=5"]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    return env


def _train_command(launcher: list[str], workdir: Path, init: Path, *extra: str) -> list[str]:
    return [*launcher, "-m", "deeplab_caffe.parity.commands.train", "--config", "shapes",
            *ELASTIC_OVERRIDES, f"model.init_checkpoint={init}", "--workdir", str(workdir),
            "--device", "cpu", "--no-progress", *extra]


#: the README's single-node and multi-node launchers (``--nnodes 1``, two processes, localhost)
STANDALONE = [TORCHRUN, "--standalone", "--nproc_per_node", "2"]


def _multinode(port: int) -> list[str]:
    return [TORCHRUN, "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--max-restarts", "1"]


def _workers(agent: int) -> dict[int, int]:
    """``{rank: pid}`` of the worker processes ``torchrun`` (pid ``agent``) started (``/proc``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            env = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode().split("\0")
                       if "=" in item)
        except (OSError, ValueError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def _start_and_wait_for(command: list[str], path: Path) -> subprocess.Popen[str]:
    """Start ``command``; return once ``path`` exists (a checkpoint) and both workers are up."""
    proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (path.exists() and len(_workers(proc.pid)) == 2) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {path.name}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.01)
    return proc


def _same_weights(a_path: Path, b_path: Path) -> bool:
    a, _, _ = read_checkpoint(a_path)
    b, _, _ = read_checkpoint(b_path)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(init checkpoint, model.pth)`` of an uninterrupted two-process run of ELASTIC_OVERRIDES."""
    root = tmp_path_factory.mktemp("elastic")
    init = _calibrated_init(root / "init.pth")
    run = subprocess.run(_train_command(STANDALONE, root / "whole", init), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("20/20 iterations") == 1
    return init, root / "whole" / "model.pth"


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_ends_with_the_uninterrupted_weights(
        tmp_path: Path, uninterrupted: tuple[Path, Path]) -> None:
    """SIGKILL to rank 1 after the first checkpoint, under the README's multi-node launcher
    with ``--max-restarts 1``: rank 0 stops with one line, torchrun restarts both workers, the
    same command line continues from the latest checkpoint by itself, exit 0, and model.pth is
    tensor for tensor the uninterrupted run's."""
    init, whole = uninterrupted
    workdir = tmp_path / "run"
    proc = _start_and_wait_for(_train_command(_multinode(_free_port()), workdir, init),
                               workdir / "checkpoint_5.pth")
    os.kill(_workers(proc.pid)[1], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("20/20 iterations") == 1
    assert "torchrun restart 1: continuing from the workdir's latest checkpoint" in stderr
    resumed = re.findall(r"resuming from \S+latest\.pth at iteration (\d+) of 20", stderr)
    assert len(resumed) == 1 and int(resumed[0]) in (5, 10, 15), stderr[-3000:]
    lost = [line for line in stderr.splitlines() if "lost the other processes" in line]
    assert len(lost) == 1 and lost[0].startswith(f"error: {workdir}: rank 0 lost the other processes after "
                                                 "iteration "), stderr[-3000:]
    assert _same_weights(workdir / "model.pth", whole)


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_one_update_with_a_checkpoint_and_exit_143(
        tmp_path: Path, uninterrupted: tuple[Path, Path]) -> None:
    """SIGTERM to every worker (what ``scancel`` does): each finishes the update in flight,
    both stop after the same one, rank 0 writes one checkpoint, each exits 143 (torchrun reports
    the workers' codes); the next start with --resume ends with the uninterrupted weights."""
    init, whole = uninterrupted
    workdir = tmp_path / "run"
    proc = _start_and_wait_for(_train_command(STANDALONE, workdir, init), workdir / "checkpoint_5.pth")
    for pid in _workers(proc.pid).values():
        os.kill(pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0  # torchrun: its workers failed
    assert re.findall(r"exitcode\s+:\s+(-?\d+)", stderr) == ["143", "143"], stderr[-3000:]
    iteration = read_train_checkpoint(workdir / "latest.pth")["iteration"]
    assert 5 <= iteration < 20
    line = (f"error: {workdir / f'checkpoint_{iteration}.pth'}: terminated (SIGTERM) at iteration "
            f"{iteration} of 20; checkpoint written, --resume continues from it")
    assert stderr.splitlines().count(line) == 2, stderr[-3000:]  # one line per rank, the same update
    assert sorted(int(p.stem.split("_")[1]) for p in workdir.glob("checkpoint_*.pth"))[-1] == iteration

    again = subprocess.run(_train_command(STANDALONE, workdir, init, "--resume"), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {workdir / 'latest.pth'} at iteration {iteration} of 20" in again.stderr
    assert _same_weights(workdir / "model.pth", whole)


@pytest.mark.slow
def test_resuming_on_another_process_count_is_refused_with_the_reason(
        tmp_path: Path, uninterrupted: tuple[Path, Path]) -> None:
    init, whole = uninterrupted
    workdir = tmp_path / "run"
    workdir.mkdir()
    first = read_checkpoint(whole)  # a two-process run's latest.pth sits next to its model.pth
    assert first[2]["world_size"] == 2
    for name in ("latest.pth", "checkpoint_20.pth"):
        (workdir / name).write_bytes((whole.parent / name).read_bytes())
    single = subprocess.run(_train_command([sys.executable], workdir, init, "--resume"), cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 2
    assert single.stderr.strip().splitlines()[-1] == (
        f"error: cannot resume from {workdir / 'latest.pth'}: it was written by 2 process(es), this "
        "run has 1; each rank's RNG state and the gradient summation order belong to that count, so "
        "the run would not continue exactly: resume with 2 process(es)")


@pytest.mark.slow
def test_evaluation_under_two_processes_scores_each_image_once_with_the_one_process_scores(
        tmp_path: Path, uninterrupted: tuple[Path, Path]) -> None:
    """7 images (2 does not divide 7): rank 0 scores 4, rank 1 scores 3, the confusion matrices
    are summed; the results file equals one process's (the same per-image predictions)."""
    _, model = uninterrupted
    args = ["-m", "deeplab_caffe.parity.commands.eval", "--checkpoint", str(model), "--dataset", "shapes",
            "--max-images", "7", "--device", "cpu", "--no-progress"]
    one = subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one.json")], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*STANDALONE, *args, "--output", str(tmp_path / "two.json")], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("results written to") == 1  # rank 0 reports
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert a["n_images"] == b["n_images"] == 7
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["scores"] == b["scores"]
    assert a["class_iou"] == b["class_iou"] and a["n_pixels"] == b["n_pixels"] > 0
