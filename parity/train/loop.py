"""DeepLab v2 training: the Caffe recipe (the official train net and solver, ``../shared/data/official``).

``train(config, workdir=...)`` runs a config from ``parity.train.config.load_config``:

* model: ``models.build_model(models.default_config(...))`` from the ``model`` section, seeded
  with ``config["seed"]``; optionally initialised from a converted checkpoint
  (``model.init_checkpoint``: backbone loaded, classifier re-initialised when it does not fit);
* optimiser: SGD with three parameter groups, backbone ``lr``, classifier weights
  ``lr * lr_mult_classifier_weight`` (10), classifier biases ``lr * lr_mult_classifier_bias``
  (20) without weight decay (Caffe ``decay_mult: 0``); frozen BatchNorm is not trained; Caffe's
  update ``V = m*V + lr*g; W -= V`` or, for the seed port's recipes, ``torch.optim.SGD``
  (``solver.update``, see ``parity.train.solver``);
* schedule: poly, ``lr(it) = lr * (1 - it / max_iter) ** poly_power`` for the update that
  follows ``it`` completed updates (the first update uses the base LR), set every iteration;
* loss: the MSC loss (``parity.train.loss``): cross-entropy (``ignore_label`` ignored) on the
  1x, 0.75x, 0.5x and fused maps, labels shrunk by Caffe's Interp as the official train net does
  or, for the seed port's recipes, resized by nearest neighbour (``loss.label_resize``). Each
  term is normalised by the labelled pixels of the whole global micro-batch, divided by ``iter_size``;
* ``iter_size`` forward/backward passes of ``batch_size`` images (global, over all processes)
  are accumulated per update;
* checkpoints every ``log.checkpoint_every`` updates and at the end:
  ``{workdir}/checkpoint_{iteration}.pth`` and ``{workdir}/latest.pth`` (model, optimiser,
  iteration, RNG states, data position, config; readable with ``torch.load(weights_only=True)``),
  and the final weights as ``{workdir}/model.pth`` through ``models.save_checkpoint``.

Determinism: the sample order of epoch ``e`` comes from ``parity.train.distributed.epoch_batches``
(seeded from ``(seed, e)``) and each sample's augmentation from ``(seed, e, index)``
(``parity.data.transforms.TransformedDataset``), so ``resume=True`` continues at the exact batch and,
on the CPU, ends with bitwise the same weights as an uninterrupted run.

CUDA: bf16 autocast (``solver.amp``) and channels_last (``solver.channels_last``) when available.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from torch import nn

from deeplab_caffe.converter.errors import EXIT_CHECK_FAILED
from deeplab_caffe.converter.progress import format_seconds
from deeplab_caffe.models import CheckpointError, build_model, load_checkpoint, save_checkpoint
from deeplab_caffe.parity.data.datasets import DATASETS, build_dataset
from deeplab_caffe.parity.devices import resolve_device
from deeplab_caffe.parity.evaluation.evaluate import evaluate
from deeplab_caffe.parity.train import distributed
from deeplab_caffe.parity.train.batches import BatchStream, build_train_dataset
from deeplab_caffe.parity.train.checkpoint import (LATEST_FILE, MODEL_FILE, ResumeState, WorkdirLock,
                                                   remove_orphaned_temp_files, resume_state,
                                                   save_train_checkpoint, set_rng_state)
from deeplab_caffe.parity.train.config import ConfigError, model_config_from, validate_train_config
from deeplab_caffe.parity.train.init import InitReport, load_init_weights
from deeplab_caffe.parity.train.interrupt import StopRequest, TrainingInterrupted
from deeplab_caffe.parity.train.loss import segmentation_loss
from deeplab_caffe.parity.train.solver import build_optimizer, set_lr
from deeplab_caffe.parity.viz import overlay_panel

__all__ = [
    "Step",
    "StepHook",
    "Trainer",
    "TrainResult",
    "TrainingDivergedError",
    "train",
    "train_and_evaluate",
    "build_train_model",
]

log = logging.getLogger("parity.train")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration."""

    exit_status = EXIT_CHECK_FAILED  # in the exit-code contract (converter.errors)


@dataclass
class TrainResult:
    """What a ``train`` call did.

    ``iteration``: updates completed in total (of ``max_iter``); ``completed``: it reached
    ``max_iter``; ``losses``: the loss of each update run by *this* call (mean over
    ``iter_size`` and processes); ``model_path``: the ``models.save_checkpoint`` file of the
    final weights; ``checkpoint_path``: the last training checkpoint (``latest.pth``);
    ``seconds``, ``iters_per_s``, ``images_per_s``: wall-clock of the loop in this call.
    """

    workdir: Path
    model_path: Path
    checkpoint_path: Path | None
    iteration: int
    max_iter: int
    completed: bool
    losses: list[float]
    seconds: float
    iters_per_s: float
    images_per_s: float
    device: str
    world_size: int
    init: InitReport | None = None

    @property
    def last_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def build_train_model(config: Mapping[str, Any]) -> nn.Module:
    """Build the model of a training config with ``torch.manual_seed(config["seed"])`` (the
    initialisation is a function of the seed only)."""
    model_config = model_config_from(config)
    torch.manual_seed(int(config["seed"]))
    return build_model(model_config)


class _TrainNet(nn.Module):
    """Training forward: ``x -> {name: logits}`` (the MSC maps, or ``{"out": logits}``); the
    module DDP wraps, so that DDP sees every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if hasattr(self.model, "forward_msc"):
            return self.model.forward_msc(x)
        return {"out": self.model(x)}


class _Progress:
    """A rich progress bar on stderr (it/s, loss, lr, ETA) when stderr is a terminal; plain
    ``train: iter ...`` lines every ``log_every`` updates when it is not (CI logs); log lines
    when disabled."""

    def __init__(self, enabled: bool, start: int, total: int, log_every: int, stop: int,
                 is_main: bool = True) -> None:
        self.is_main = is_main  # under torchrun only rank 0 reports
        enabled = enabled and is_main
        self.enabled = enabled
        self.log_every = log_every
        self.total = total
        self.stop = stop
        self.bar = None
        self.plain = enabled and not Console(stderr=True).is_terminal
        if enabled and not self.plain:
            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(stderr=True),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, stats="")
            self.bar.start()

    def update(self, iteration: int, loss: float, lr: float, rate: float) -> None:
        stats = f"{rate:.2f} it/s  loss {loss:.4f}  lr {lr:.3g}"
        if self.bar is not None:
            self.bar.update(self.task, completed=iteration, stats=stats)
        elif iteration % self.log_every == 0 or iteration == self.stop:
            if self.plain:
                eta = format_seconds(max(self.stop - iteration, 0) / max(rate, 1e-9))
                print(f"train: iter {iteration}/{self.total}  {stats}  ETA {eta}", file=sys.stderr, flush=True)
            elif self.is_main:
                log.info("iter %d/%d  %s", iteration, self.total, stats)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ------------------------------------------------------------------------------------------
# The run's settings, model and optimiser


def _device(device: str | torch.device, ctx: distributed.DistContext) -> torch.device:
    """``resolve_device``, with a plain ``cuda`` pinned to this process's GPU."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", ctx.local_rank if ctx.is_distributed else torch.cuda.current_device())
    return resolved


@dataclass(frozen=True)
class _Settings:
    """What the config and the call arguments decide, checked once before anything runs."""

    max_iter: int
    stop: int
    iter_size: int
    global_batch: int
    log_every: int
    ignore_label: int
    cuda: bool
    use_amp: bool
    channels_last: bool


def _settings(config: Mapping[str, Any], ctx: distributed.DistContext, device: torch.device,
              max_iters: int | None, log_every: int | None) -> _Settings:
    solver, logcfg = config["solver"], config["log"]
    max_iter = int(solver["max_iter"])
    stop = max_iter if max_iters is None else min(int(max_iters), max_iter)
    if stop < 0:
        raise ConfigError(f"max_iters must be >= 0, got {max_iters}")
    global_batch = int(solver["batch_size"])
    if global_batch % ctx.world_size != 0:
        raise ConfigError(f"solver.batch_size {global_batch} is not divisible by the "
                          f"{ctx.world_size} processes")
    log_every = int(logcfg["log_every"] if log_every is None else log_every)
    if log_every < 1:
        raise ConfigError(f"log_every must be >= 1, got {log_every}")
    cuda = device.type == "cuda"
    return _Settings(
        max_iter=max_iter, stop=stop, iter_size=int(solver["iter_size"]), global_batch=global_batch,
        log_every=log_every, ignore_label=int(config["input"]["ignore_label"]), cuda=cuda,
        use_amp=cuda and bool(solver["amp"]) and torch.cuda.is_bf16_supported(),
        channels_last=cuda and bool(solver["channels_last"]))


def _check_sync_bn(config: Mapping[str, Any], ctx: distributed.DistContext, cuda: bool) -> None:
    if ctx.is_distributed and config["solver"]["sync_bn"] and not config["model"]["freeze_bn"] and not cuda:
        raise ConfigError("solver.sync_bn needs CUDA (PyTorch's SyncBatchNorm does not run "
                          "on the CPU); set solver.sync_bn=false")


def _start_weights(model: nn.Module, config: Mapping[str, Any], state: ResumeState,
                   workdir: Path, ctx: distributed.DistContext) -> InitReport | None:
    """Resumed weights, or the init checkpoint's (``model.init_checkpoint``), or none."""
    if state.payload is not None:
        try:
            model.load_state_dict(state.payload["model"], strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{workdir / LATEST_FILE}: model weights do not load "
                                  f"({str(err).splitlines()[0]})") from err
        return None
    if not config["model"]["init_checkpoint"]:
        return None
    report = load_init_weights(model, config["model"]["init_checkpoint"])
    if ctx.is_main:
        log.info(report.summary())
        if report.reinitialised:
            log.info("re-initialised: %s", ", ".join(report.reinitialised))
    return report


def _place(model: nn.Module, config: Mapping[str, Any], ctx: distributed.DistContext,
           device: torch.device, settings: _Settings) -> nn.Module:
    """Optional SyncBN, then the model on its device (channels_last on CUDA), in train mode."""
    if ctx.is_distributed and config["solver"]["sync_bn"]:
        if config["model"]["freeze_bn"]:
            log.warning("solver.sync_bn ignored: BatchNorm is frozen (model.freeze_bn: true)")
        else:
            model = distributed.convert_sync_batchnorm(model)
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    return model


def _wrap(model: nn.Module, ctx: distributed.DistContext, device: torch.device) -> nn.Module:
    """The forward DDP sees (``_TrainNet``), data-parallel under ``torchrun``."""
    net: nn.Module = _TrainNet(model)
    if ctx.is_distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    return net


# ------------------------------------------------------------------------------------------
# One update, and what runs around it


@dataclass
class Step:
    """The outcome of one update: its number (1-based), loss (mean over ``iter_size`` and
    processes), LR, and the last micro-batch with the network's outputs on it."""

    done: int
    loss: float
    lr: float
    images: torch.Tensor
    labels: torch.Tensor
    outputs: dict[str, torch.Tensor]


class StepHook(Protocol):
    """What runs after each update (``Trainer(hooks=[...])``): progress, logging, checkpoints."""

    def after_step(self, trainer: Trainer, step: Step) -> None: ...


class Trainer:
    """The recipe's update on any iterable of batches: detectron2's ``SimpleTrainer``.

    ``batches`` yields ``(images N x 3 x H x W float, labels N x H x W int64, ...)`` micro-batches
    (extra items, such as ids, are ignored); ``run_step()`` takes ``solver.iter_size`` of them,
    sets the poly LR for the update after ``iteration`` completed ones, accumulates the MSC loss
    (``parity.train.loss``) over them, steps the optimiser (``build_optimizer(model, config)``
    unless one is given), raises ``TrainingDivergedError`` for a non-finite loss, advances
    ``iteration`` and calls each hook's ``after_step(trainer, step)``. ``model`` is used as it is
    (its device, train mode and frozen BatchNorm are the caller's); under an initialised
    ``torch.distributed`` group it is wrapped in DistributedDataParallel and each process gives
    its own share of every global micro-batch. ``deeplab-train`` (``train``) drives it with the
    recipe's data stream and its checkpoint and TensorBoard hooks.
    """

    def __init__(self, model: nn.Module, config: Mapping[str, Any], batches: Iterable[Any], *,
                 device: str | torch.device = "cpu", optimizer: torch.optim.Optimizer | None = None,
                 start_iter: int = 0, hooks: Sequence[StepHook] = ()) -> None:
        self.config = config
        self.ctx = distributed.current()
        self.device = torch.device(device)
        self.settings = _settings(config, self.ctx, self.device, None, None)
        self.model = model
        self.net = _wrap(model, self.ctx, self.device)
        self.optimizer = optimizer if optimizer is not None else build_optimizer(model, config)
        self.iteration = int(start_iter)
        self.hooks = list(hooks)
        self._batches: Iterator[Any] = iter(batches)
        self.autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                         if self.settings.use_amp else contextlib.nullcontext())

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = next(self._batches)[:2]
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def _sync(self, micro: int) -> Any:
        """DDP averages gradients on the last micro-batch of an update only."""
        if not self.ctx.is_distributed or micro == self.settings.iter_size - 1:
            return contextlib.nullcontext()
        return self.net.no_sync()

    def run_step(self) -> Step:
        """One update (see the class docstring); returns its ``Step``."""
        s, solver = self.settings, self.config["solver"]
        lr = set_lr(self.optimizer, float(solver["lr"]), self.iteration, s.max_iter,
                    float(solver["poly_power"]), int(solver["lr_step"]))
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(s.iter_size):
            images, labels = self._batch()
            with self._sync(micro):
                with self.autocast:
                    outputs = self.net(images)
                loss = segmentation_loss(outputs, labels, s.ignore_label,
                                         self.config["loss"]["label_resize"]) / s.iter_size
                loss.backward()
            loss_sum += loss.detach()
        loss_value = float(distributed.all_reduce_mean(loss_sum).item())
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"training diverged: loss is {loss_value} at iteration {self.iteration + 1} "
                f"(lr {lr:g}); lower solver.lr or check the data")
        self.optimizer.step()
        self.iteration += 1
        step = Step(self.iteration, loss_value, lr, images, labels, outputs)
        for hook in self.hooks:
            hook.after_step(self, step)
        return step


class _Hooks:
    """What runs after each update: the progress bar, TensorBoard (rank 0) and checkpoints."""

    def __init__(self, config: Mapping[str, Any], settings: _Settings, workdir: Path,
                 ctx: distributed.DistContext, stream: BatchStream, start_iter: int,
                 progress: bool) -> None:
        self.config, self.settings, self.workdir, self.ctx = config, settings, workdir, ctx
        self.stream = stream
        self.start_iter = start_iter
        self.writer = None
        if ctx.is_main and config["log"]["tensorboard"]:
            # Imported here, not at the top: importing torch.utils.tensorboard costs 0.7-1.0 s
            # (measured on the 2-core CI machine, torch 2.13), which every command importing
            # this module (deeplab-parity list/run/compare) would pay without training.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(workdir / "tb"), purge_step=start_iter + 1)
        self.bar = _Progress(progress, start_iter, settings.max_iter, settings.log_every,
                             settings.stop, ctx.is_main)
        self.t0 = time.perf_counter()
        self.checkpoint_path: Path | None = None
        self.saved_at = start_iter

    def after_step(self, trainer: Trainer, step: Step) -> None:
        rate = (step.done - self.start_iter) / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(step.done, step.loss, step.lr, rate)
        if self.writer is not None:
            self._tensorboard(step)
        every = int(self.config["log"]["checkpoint_every"])
        if (every and step.done % every == 0) or step.done == self.settings.stop:
            self.save(step.done, trainer)

    def save(self, done: int, trainer: Trainer) -> Path:
        """The training checkpoint after ``done`` updates (once per iteration)."""
        if self.saved_at != done or self.checkpoint_path is None:
            self.checkpoint_path = save_train_checkpoint(
                self.workdir, done, trainer.model, trainer.optimizer, self.config, self.stream.position,
                self.ctx, int(self.config["log"]["keep_checkpoints"]))
            self.saved_at = done
        return self.checkpoint_path

    def _tensorboard(self, step: Step) -> None:
        done, s = step.done, self.settings
        if done % s.log_every == 0 or done == s.stop:
            self.writer.add_scalar("train/loss", step.loss, done)
            self.writer.add_scalar("train/lr", step.lr, done)
        every = int(self.config["log"]["image_every"])
        if every and (done % every == 0 or done == 1):
            key = "fused" if "fused" in step.outputs else next(iter(step.outputs))
            panel = overlay_panel(step.images[0], step.labels[0], step.outputs[key][0],
                                  self.config["input"]["mean_bgr"], s.ignore_label)
            self.writer.add_image("train/image_label_prediction", panel, done, dataformats="HWC")

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------------------------
# The training loop


def train(
    config: Mapping[str, Any],
    *,
    workdir: str | os.PathLike[str],
    resume: bool = False,
    device: str | torch.device = "auto",
    max_iters: int | None = None,
    log_every: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> TrainResult:
    """Train a DeepLab v2 model with a validated config (``parity.train.config.load_config``).

    ``workdir`` receives checkpoints, TensorBoard events (``tb/``) and ``model.pth``.
    ``resume`` continues from ``{workdir}/latest.pth`` (the config may differ only in the
    ``log``, ``loader`` and ``eval`` sections); a fresh run in a workdir holding checkpoints
    is refused (``WorkdirInUseError``) unless ``force``. Ctrl-C stops after the update in
    flight, writes a checkpoint there and raises ``TrainingInterrupted`` (see
    ``parity.train.interrupt``). ``max_iters`` stops once that many updates
    are done in total (the LR schedule still runs to ``solver.max_iter``); a checkpoint is
    written where it stops. ``log_every`` overrides ``log.log_every``. ``device``: ``auto``
    (CUDA when available), ``cpu`` or ``cuda``. Under ``torchrun`` the run is data-parallel
    (see ``parity.train.distributed``); rank 0 writes the files.

    Raises ``ConfigError``, ``DatasetError``, ``CheckpointError`` for bad input and
    ``TrainingDivergedError`` when the loss is not finite.
    """
    validate_train_config(config)
    config = copy.deepcopy(dict(config))
    requested = str(device)
    device_type = "cuda" if requested.startswith("cuda") or (
        requested == "auto" and torch.cuda.is_available()) else "cpu"
    ctx = distributed.setup(device_type)
    try:
        result = _train(config, Path(workdir), resume, _device(device, ctx), ctx,
                        max_iters, log_every, progress, force)
    except BaseException:  # a lost peer, a signal, bad input: leave at once, its error line next
        distributed.teardown(ctx, wait_for_peers=False)
        raise
    distributed.teardown(ctx)
    return result


def _train(config: dict[str, Any], workdir: Path, resume: bool, device: torch.device,
           ctx: distributed.DistContext, max_iters: int | None, log_every: int | None,
           progress: bool, force: bool) -> TrainResult:
    settings = _settings(config, ctx, device, max_iters, log_every)
    if ctx.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir, ctx):  # held until the run ends: a second run is refused
        if ctx.is_main:
            for orphan in remove_orphaned_temp_files(workdir):
                log.warning("removed %s, left by an interrupted save", orphan)
        distributed.barrier()
        return _run(config, workdir, resume, device, ctx, settings, progress, force)


def _run(config: dict[str, Any], workdir: Path, resume: bool, device: torch.device,
         ctx: distributed.DistContext, settings: _Settings, progress: bool, force: bool) -> TrainResult:
    """The run in a locked workdir: data, model, optimiser, the loop, the final weights."""
    _check_sync_bn(config, ctx, settings.cuda)
    state = resume_state(config, workdir, resume, ctx, force)

    # Data first: a missing dataset is reported before any model is built.
    dataset = build_train_dataset(config)
    try:
        stream = BatchStream(dataset, settings.global_batch, int(config["seed"]), ctx,
                             int(config["loader"]["num_workers"]), pin_memory=settings.cuda,
                             **state.position)
    except ValueError as err:
        raise ConfigError(f"{err} (solver.batch_size)") from err

    model = build_train_model(config)  # seeded
    init_report = _start_weights(model, config, state, workdir, ctx)
    model = _place(model, config, ctx, device, settings)
    optimizer = build_optimizer(model, config)
    if state.payload is not None:
        optimizer.load_state_dict(state.payload["optimizer"])
        ranks = state.payload.get("rng_ranks") or [state.payload["rng"]]
        set_rng_state(ranks[ctx.rank])  # after build_train_model, which seeds torch
        state.payload = None
    hooks = _Hooks(config, settings, workdir, ctx, stream, state.iteration, progress)
    trainer = Trainer(model, config, stream, device=device, optimizer=optimizer,
                      start_iter=state.iteration, hooks=[hooks])
    losses, iteration, seconds, checkpoint_path = _loop(trainer, hooks, workdir, settings.stop)
    return _finish(config, settings, workdir, ctx, device, model, dataset, init_report,
                   _Outcome(state.iteration, iteration, losses, seconds, checkpoint_path))


def _loop(trainer: Trainer, hooks: _Hooks, workdir: Path,
          stop: int) -> tuple[list[float], int, float, Path | None]:
    """Updates up to ``stop``: ``(losses, iteration reached, seconds, last checkpoint)``."""
    start_iter = trainer.iteration
    losses: list[float] = []
    try:
        with StopRequest(distributed_run=trainer.ctx.is_distributed) as signals:
            while trainer.iteration < stop:
                step = trainer.run_step()  # the hooks: progress, TensorBoard, checkpoints
                losses.append(step.loss)
                signum = signals.agreed(trainer.device)  # the same answer on every rank
                if signum is not None:
                    raise TrainingInterrupted(hooks.save(step.done, trainer), step.done,
                                              trainer.settings.max_iter, signum)
    except RuntimeError as err:
        if not (trainer.ctx.is_distributed and distributed.is_communication_error(err)):
            raise
        first = str(err).strip().splitlines()[0][:200]
        raise distributed.PeerLostError(
            f"{workdir}: rank {trainer.ctx.rank} lost the other processes after iteration "
            f"{start_iter + len(losses)} ({first}); under "
            "torchrun --max-restarts the restart continues from the latest checkpoint") from err
    finally:
        hooks.close()
    seconds = time.perf_counter() - hooks.t0
    return losses, max(stop, start_iter), seconds, hooks.checkpoint_path


@dataclass
class _Outcome:
    """What the loop did: updates from ``start_iter`` to ``iteration``, their losses, the time."""

    start_iter: int
    iteration: int
    losses: list[float]
    seconds: float
    checkpoint_path: Path | None


def _metadata(config: Mapping[str, Any], settings: _Settings, ctx: distributed.DistContext,
              device: torch.device, dataset: Any, init_report: InitReport | None,
              outcome: _Outcome) -> dict[str, Any]:
    """The metadata record of ``model.pth``."""
    dataset_cls = DATASETS.get(config["dataset"]["name"])
    class_names = list(getattr(dataset, "class_names", None) or getattr(dataset_cls, "class_names", []) or [])
    return {
        "source": "parity.train",
        "recipe": config["name"],
        "dataset": config["dataset"]["name"],
        "split": config["dataset"]["split"],
        "class_names": [str(n) for n in class_names],
        "seed": int(config["seed"]),
        "iterations": outcome.iteration,
        "max_iter": settings.max_iter,
        "completed": outcome.iteration >= settings.max_iter,
        "final_loss": outcome.losses[-1] if outcome.losses else None,
        "world_size": ctx.world_size,
        "device": device.type,
        "amp_bf16": settings.use_amp,
        "init_checkpoint": config["model"]["init_checkpoint"],
        "init": init_report.as_dict() if init_report is not None else None,
        "torch": str(torch.__version__),
        "train_config": config,
    }


def _finish(config: Mapping[str, Any], settings: _Settings, workdir: Path,
            ctx: distributed.DistContext, device: torch.device, model: nn.Module, dataset: Any,
            init_report: InitReport | None, outcome: _Outcome) -> TrainResult:
    """Final weights through ``models.save_checkpoint`` (what evaluation and the demo read)."""
    model_path = workdir / MODEL_FILE
    checkpoint_path = outcome.checkpoint_path
    if ctx.is_main:
        save_checkpoint(model_path, model, model_config_from(config),
                        _metadata(config, settings, ctx, device, dataset, init_report, outcome))
        if checkpoint_path is None and (workdir / LATEST_FILE).is_file():
            checkpoint_path = workdir / LATEST_FILE
    distributed.barrier()
    n_run, seconds = max(outcome.iteration - outcome.start_iter, 0), outcome.seconds
    images_per_update = settings.global_batch * settings.iter_size
    return TrainResult(
        workdir=workdir, model_path=model_path, checkpoint_path=checkpoint_path,
        iteration=outcome.iteration, max_iter=settings.max_iter,
        completed=outcome.iteration >= settings.max_iter, losses=outcome.losses,
        seconds=seconds, iters_per_s=n_run / seconds if seconds > 0 else 0.0,
        images_per_s=n_run * images_per_update / seconds if seconds > 0 else 0.0,
        device=str(device), world_size=ctx.world_size, init=init_report,
    )


# ------------------------------------------------------------------------------------------
# Train, then evaluate


def train_and_evaluate(
    config: Mapping[str, Any],
    *,
    workdir: str | os.PathLike[str],
    device: str = "auto",
    resume: bool = False,
    max_iters: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> tuple[TrainResult, Any]:
    """``train`` then ``parity.evaluation.evaluate.evaluate`` of the saved ``model.pth`` on the config's
    ``eval`` split (``eval.kwargs``, ``scales``, ``flip``, ``pad_to``). Returns
    ``(TrainResult, EvalResult)``; ``EvalResult.scores["Mean IoU"]`` is a 0-1 fraction."""
    result = train(config, workdir=workdir, resume=resume, device=device, max_iters=max_iters,
                   progress=progress, force=force)
    ev = config["eval"]
    d = config["dataset"]
    dataset = build_dataset(d["name"], d.get("root"), ev["split"], **dict(ev["kwargs"]))
    model = load_checkpoint(result.model_path)
    eval_device = _device(device, distributed.DistContext())
    scores = evaluate(model, dataset, device=eval_device, scales=tuple(ev["scales"]),
                      flip=bool(ev["flip"]), pad_to=ev["pad_to"], progress=progress,
                      mean_bgr=config["input"]["mean_bgr"])
    return result, scores
