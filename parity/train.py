"""DeepLab v2 training: the Caffe recipe (see ``docs/caffe-format.md``, "Training recipe").

``train(config, workdir=...)`` runs a config from ``parity.config.load_config``:

* model: ``models.build_model(models.default_config(...))`` from the ``model`` section, seeded
  with ``config["seed"]``; optionally initialised from a converted checkpoint
  (``model.init_checkpoint``: backbone loaded, classifier re-initialised when it does not fit);
* optimiser: SGD with three parameter groups, backbone ``lr``, classifier weights
  ``lr * lr_mult_classifier_weight`` (10), classifier biases ``lr * lr_mult_classifier_bias``
  (20) without weight decay (Caffe ``decay_mult: 0``); frozen BatchNorm is not trained;
* schedule: poly, ``lr(it) = lr * (1 - it / max_iter) ** poly_power`` for the update that
  follows ``it`` completed updates (the first update uses the base LR), set every iteration;
* loss: cross-entropy (``ignore_label`` ignored) on every output map against the label resized
  by nearest neighbour to that map's size (``F.interpolate(label[:, None].float(), size,
  mode="nearest")``); an MSC model sums it over the 1x, 0.75x, 0.5x and fused maps (MSC loss).
  Each term is normalised by the labelled pixels of the whole global batch (equal to
  ``F.cross_entropy``'s mean in one process, and exact under DDP), divided by ``iter_size``;
* ``iter_size`` forward/backward passes of ``batch_size`` images (global, over all processes)
  are accumulated per update;
* checkpoints every ``log.checkpoint_every`` updates and at the end:
  ``{workdir}/checkpoint_{iteration}.pth`` and ``{workdir}/latest.pth`` (model, optimiser,
  iteration, RNG states, data position, config; readable with ``torch.load(weights_only=True)``),
  and the final weights as ``{workdir}/model.pth`` through ``models.save_checkpoint``.

Determinism: the sample order of epoch ``e`` comes from ``parity.distributed.epoch_batches``
(seeded from ``(seed, e)``) and each sample's augmentation from ``(seed, e, index)``
(``parity.transforms.TransformedDataset``), so ``resume=True`` continues at the exact batch and,
on the CPU, ends with bitwise the same weights as an uninterrupted run.

CUDA: bf16 autocast (``solver.amp``) and channels_last (``solver.channels_last``) when available.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parity import distributed
from parity.config import ConfigError, validate_train_config

__all__ = [
    "TrainResult",
    "InitReport",
    "TrainingDivergedError",
    "train",
    "train_and_evaluate",
    "poly_lr",
    "model_config_from",
    "build_train_model",
    "param_groups",
    "load_init_weights",
    "resize_labels",
    "segmentation_loss",
    "read_train_checkpoint",
    "TRAIN_CHECKPOINT_FORMAT",
]

log = logging.getLogger("parity.train")

TRAIN_CHECKPOINT_FORMAT = "deeplab-caffe/train-checkpoint/1"
MODEL_FILE = "model.pth"
LATEST_FILE = "latest.pth"
#: config sections that may change between a run and its resumption
RESUMABLE_CHANGES = ("log", "loader", "eval")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration."""


@dataclass
class InitReport:
    """What ``load_init_weights`` took from an init checkpoint: tensor names ``loaded``, the
    model's ``reinitialised`` ones (kept at their fresh initialisation), and checkpoint tensors
    ``unused`` by the model; ``reason`` says why the classifier was re-initialised."""

    path: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    reason: str = ""

    def summary(self) -> str:
        """One line for logs."""
        text = f"init from {self.path}: loaded {len(self.loaded)} tensors"
        if self.reinitialised:
            text += f", re-initialised {len(self.reinitialised)} ({self.reason})"
        if self.unused:
            text += f", {len(self.unused)} checkpoint tensors unused"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "loaded": len(self.loaded), "reinitialised": self.reinitialised,
                "unused": self.unused, "reason": self.reason}


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


# ------------------------------------------------------------------------------------------
# Model, parameter groups, schedule, loss


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    """``base_lr * (1 - iteration / max_iter) ** power``: the LR of the update that follows
    ``iteration`` completed updates (``iteration`` in ``0 .. max_iter``)."""
    if not 0 <= iteration <= max_iter:
        raise ValueError(f"iteration {iteration} outside 0..{max_iter}")
    return base_lr * (1.0 - iteration / max_iter) ** power


def model_config_from(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``models`` config (see docs/architecture.md) a training config's ``model`` section
    describes: ``models.default_config(...)`` plus ``freeze_bn``."""
    from models import default_config

    m = config["model"]
    rates = m["aspp_rates"]
    model_config = default_config(
        int(m["n_classes"]), n_blocks=tuple(m["n_blocks"]),
        aspp_rates=None if rates is None else tuple(rates), msc=bool(m["msc"]),
        stem_channels=int(m["stem_channels"]),
    )
    model_config["freeze_bn"] = bool(m["freeze_bn"])
    return model_config


def build_train_model(config: Mapping[str, Any]) -> nn.Module:
    """Build the model of a training config with ``torch.manual_seed(config["seed"])`` (the
    initialisation is a function of the seed only)."""
    from models import build_model

    model_config = model_config_from(config)
    torch.manual_seed(int(config["seed"]))
    return build_model(model_config)


def _classifier(model: nn.Module) -> nn.Module:
    classifier = getattr(model, "classifier", None)
    if classifier is None:
        raise ValueError("the model has no 'classifier' module (DeepLab v2 expected)")
    return classifier


def param_groups(model: nn.Module, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """SGD parameter groups of DeepLab v2 (trainable parameters only):

    ``backbone`` (lr x1, weight decay), ``classifier_weight`` (lr x
    ``lr_mult_classifier_weight``, weight decay), ``classifier_bias`` (lr x
    ``lr_mult_classifier_bias``, no weight decay). Each group has ``name`` and ``lr_mult``; its
    ``lr`` is set by the schedule (``_set_lr``)."""
    solver = config["solver"]
    classifier = _classifier(model)
    head_ids = {id(p) for p in classifier.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    weights, biases = [], []
    for name, p in classifier.named_parameters():
        if p.requires_grad:
            (biases if name.endswith("bias") else weights).append(p)
    base_lr = float(solver["lr"])
    wd = float(solver["weight_decay"])
    groups = [
        {"name": "backbone", "params": backbone, "lr_mult": 1.0, "weight_decay": wd},
        {"name": "classifier_weight", "params": weights,
         "lr_mult": float(solver["lr_mult_classifier_weight"]), "weight_decay": wd},
        {"name": "classifier_bias", "params": biases,
         "lr_mult": float(solver["lr_mult_classifier_bias"]), "weight_decay": 0.0},
    ]
    for g in groups:
        g["lr"] = base_lr * g["lr_mult"]
    return [g for g in groups if g["params"]]


def _set_lr(optimizer: torch.optim.Optimizer, base_lr: float, iteration: int, max_iter: int,
            power: float) -> float:
    lr = poly_lr(base_lr, iteration, max_iter, power)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr


def resize_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``N x H x W`` int64 labels -> ``N x h x w`` by nearest neighbour (the seed port's way:
    ``F.interpolate(labels[:, None].float(), size, mode="nearest")``)."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def segmentation_loss(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor,
                      ignore_label: int = 255) -> torch.Tensor:
    """Sum over output maps of the mean cross-entropy over labelled pixels.

    ``outputs``: ``{name: N x C x h x w logits}`` (one map, or the MSC maps ``1x``, ``0.75x``,
    ``0.5x``, ``fused``); ``labels``: ``N x H x W`` int64, resized by nearest to each map.
    Under ``torch.distributed`` the pixel count is summed over ranks and the term multiplied by
    the world size, so that the ranks' averaged gradients equal one process's on the whole
    batch. Returns a float32 scalar (0 contribution for a map without labelled pixels).
    """
    sums, counts = [], []
    for logits in outputs.values():
        target = resize_labels(labels, logits.shape[-2:])
        sums.append(F.cross_entropy(logits.float(), target, ignore_index=ignore_label,
                                    reduction="sum"))
        counts.append((target != ignore_label).sum())
    count = torch.stack(counts).to(torch.float32)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        distributed.all_reduce_sum(count)
    total = sums[0].new_zeros(())
    for s, c in zip(sums, count):
        total = total + s * (world / c.clamp(min=1.0))
    return total


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


# ------------------------------------------------------------------------------------------
# Init checkpoint


def load_init_weights(model: nn.Module, path: str | os.PathLike[str]) -> InitReport:
    """Copy a converted checkpoint's weights into ``model`` (e.g. ``coco_init``).

    Every ``backbone.*`` tensor of the model must be in the checkpoint with the same shape
    (else ``CheckpointError`` naming the key). The ``classifier.*`` tensors are loaded only
    when all of them match (same branches and class count); otherwise the classifier keeps its
    fresh initialisation (normal(0, 0.01), zero bias) and the report says why.
    """
    from models import CheckpointError, read_checkpoint

    state, ckpt_config, _ = read_checkpoint(path, map_location="cpu")
    own = model.state_dict()
    report = InitReport(path=str(path))
    for key, value in own.items():
        if not key.startswith("classifier."):
            if key not in state:
                raise CheckpointError(f"{path}: init checkpoint has no {key!r} (the backbone "
                                      f"does not match the model config)")
            if tuple(state[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{path}: init checkpoint {key!r} has shape {tuple(state[key].shape)}, "
                    f"the model needs {tuple(value.shape)}")
    head = [k for k in own if k.startswith("classifier.")]
    head_fits = all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in head)
    head_fits = head_fits and not any(k.startswith("classifier.") and k not in own for k in state)
    if not head_fits:
        branches = ckpt_config.get("classifier", {}).get("branches", [])
        report.reason = (f"checkpoint classifier: {ckpt_config.get('n_classes')} classes, "
                         f"{len(branches)} branch(es); model: "
                         f"{model.config['n_classes'] if getattr(model, 'config', None) else '?'} "
                         f"classes, {len(_classifier(model).branches)} branch(es)")
    with torch.no_grad():
        for key, value in own.items():
            if key.startswith("classifier.") and not head_fits:
                report.reinitialised.append(key)
                continue
            value.copy_(state[key].to(value.dtype))
            report.loaded.append(key)
    report.unused = [k for k in state if k not in own or (k.startswith("classifier.") and not head_fits)]
    return report


# ------------------------------------------------------------------------------------------
# Training checkpoints


def _rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA RNG states as tensors / plain numbers (weights_only-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"algorithm": str(np_state[0]),
                  "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["algorithm"], npst["keys"].numpy().astype(np.uint32),
                         int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (a hard link, or a copy)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def read_train_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint (``latest.pth`` / ``checkpoint_<it>.pth``) with
    ``torch.load(weights_only=True)`` onto the CPU; ``CheckpointError`` naming the file when
    it is missing or is not one."""
    from models import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint to resume from")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable training checkpoint ({first})") from err
    if not isinstance(payload, dict) or payload.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint of this project "
                              f"(expected format {TRAIN_CHECKPOINT_FORMAT!r})")
    return payload


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{prefix}{key}"
            found = _first_difference(a[key], b[key], f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


# ------------------------------------------------------------------------------------------
# Data


class _BatchStream:
    """Yields this rank's micro-batches in order, across epochs; ``position`` is
    ``(epoch, batches consumed in that epoch)`` and fully determines what comes next."""

    def __init__(self, dataset: Any, global_batch: int, seed: int, ctx: distributed.DistContext,
                 num_workers: int, pin_memory: bool, epoch: int = 0, batch: int = 0) -> None:
        self.dataset = dataset
        self.global_batch = global_batch
        self.seed = seed
        self.ctx = ctx
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.epoch = epoch
        self.batch = batch
        self._it: Iterator[Any] | None = None
        # fail early with a clear message (too small a dataset, indivisible batch)
        distributed.epoch_batches(len(dataset), global_batch, seed, 0, ctx.rank, ctx.world_size)

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def _start_epoch(self) -> None:
        batches = distributed.epoch_batches(len(self.dataset), self.global_batch, self.seed,
                                            self.epoch, self.ctx.rank, self.ctx.world_size)
        self.dataset.set_epoch(self.epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches[self.batch:], num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
        self._it = iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        while True:
            if self._it is None:
                self._start_epoch()
            try:
                item = next(self._it)  # type: ignore[arg-type]
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.batch = 0
                continue
            self.batch += 1
            return item


def _build_train_dataset(config: Mapping[str, Any]) -> Any:
    from parity.datasets import build_dataset
    from parity.transforms import TrainTransform, TransformedDataset

    d, inp = config["dataset"], config["input"]
    base = build_dataset(d["name"], d.get("root"), d["split"], **dict(d["kwargs"]))
    n_classes = int(getattr(base, "n_classes", config["model"]["n_classes"]))
    if n_classes != int(config["model"]["n_classes"]):
        raise ConfigError(f"model.n_classes is {config['model']['n_classes']} but dataset "
                          f"{d['name']!r} has {n_classes} classes")
    transform = TrainTransform(
        inp["crop_size"], scale_range=tuple(inp["scale_range"]), flip=bool(inp["flip"]),
        mean_bgr=inp["mean_bgr"], ignore_label=int(inp["ignore_label"]),
        scale_choices=inp["scale_choices"],
    )
    return TransformedDataset(base, transform, seed=int(config["seed"]))


# ------------------------------------------------------------------------------------------
# Logging helpers


def _resolve_device(device: str | torch.device, ctx: distributed.DistContext) -> torch.device:
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    if name == "cuda":
        return torch.device("cuda", ctx.local_rank if ctx.is_distributed else torch.cuda.current_device())
    return torch.device(name)


def _overlay_panel(image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor,
                   mean_bgr: list[float], ignore_label: int) -> np.ndarray:
    """``image | ground truth overlay | prediction overlay`` as uint8 ``H x 3W x 3`` RGB."""
    from parity.demo import overlay, voc_palette

    n_classes = int(logits.shape[0])
    palette = voc_palette(n_classes)
    bgr = (image.detach().float().cpu().permute(1, 2, 0).numpy() + np.asarray(mean_bgr, np.float32))
    bgr = np.clip(np.rint(bgr), 0, 255).astype(np.uint8)
    h, w = bgr.shape[:2]
    pred = F.interpolate(logits[None].detach().float(), size=(h, w), mode="bilinear",
                         align_corners=False)[0].argmax(0).cpu().numpy()
    gt = label.cpu().numpy().copy()
    gt[gt == ignore_label] = 255
    panel = np.concatenate([bgr, overlay(bgr, gt, palette), overlay(bgr, pred, palette)], axis=1)
    return np.ascontiguousarray(panel[..., ::-1])


class _Progress:
    """A rich progress bar on stderr (it/s, loss, lr, ETA), or log lines when disabled."""

    def __init__(self, enabled: bool, start: int, total: int, log_every: int) -> None:
        self.enabled = enabled
        self.log_every = log_every
        self.total = total
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

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
        elif iteration % self.log_every == 0 or iteration == self.total:
            log.info("iter %d/%d  %s", iteration, self.total, stats)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


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
) -> TrainResult:
    """Train a DeepLab v2 model with a validated config (``parity.config.load_config``).

    ``workdir`` receives checkpoints, TensorBoard events (``tb/``) and ``model.pth``.
    ``resume`` continues from ``{workdir}/latest.pth`` (the config may differ only in the
    ``log``, ``loader`` and ``eval`` sections). ``max_iters`` stops once that many updates
    are done in total (the LR schedule still runs to ``solver.max_iter``); a checkpoint is
    written where it stops. ``log_every`` overrides ``log.log_every``. ``device``: ``auto``
    (CUDA when available), ``cpu`` or ``cuda``. Under ``torchrun`` the run is data-parallel
    (see ``parity.distributed``); rank 0 writes the files.

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
        return _train(config, Path(workdir), resume, _resolve_device(device, ctx), ctx,
                      max_iters, log_every, progress)
    finally:
        distributed.teardown(ctx)


def _train(config: dict[str, Any], workdir: Path, resume: bool, device: torch.device,
           ctx: distributed.DistContext, max_iters: int | None, log_every: int | None,
           progress: bool) -> TrainResult:
    from models import CheckpointError, save_checkpoint

    solver, logcfg = config["solver"], config["log"]
    max_iter = int(solver["max_iter"])
    stop = max_iter if max_iters is None else min(int(max_iters), max_iter)
    if stop < 0:
        raise ConfigError(f"max_iters must be >= 0, got {max_iters}")
    iter_size = int(solver["iter_size"])
    global_batch = int(solver["batch_size"])
    if global_batch % ctx.world_size != 0:
        raise ConfigError(f"solver.batch_size {global_batch} is not divisible by the "
                          f"{ctx.world_size} processes")
    log_every = int(logcfg["log_every"] if log_every is None else log_every)
    if log_every < 1:
        raise ConfigError(f"log_every must be >= 1, got {log_every}")
    ignore_label = int(config["input"]["ignore_label"])
    cuda = device.type == "cuda"
    use_amp = cuda and bool(solver["amp"]) and torch.cuda.is_bf16_supported()
    channels_last = cuda and bool(solver["channels_last"])

    if ctx.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()

    if ctx.is_distributed and solver["sync_bn"] and not config["model"]["freeze_bn"] and not cuda:
        raise ConfigError("solver.sync_bn needs CUDA (PyTorch's SyncBatchNorm does not run "
                          "on the CPU); set solver.sync_bn=false")

    # Where to start: a fresh run, or the exact state of latest.pth.
    payload: dict[str, Any] | None = None
    start_iter = 0
    position = {"epoch": 0, "batch": 0}
    if resume:
        payload = read_train_checkpoint(workdir / LATEST_FILE)
        changed = _first_difference(
            {k: v for k, v in payload["config"].items() if k not in RESUMABLE_CHANGES},
            {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES})
        if changed is not None:
            raise ConfigError(f"cannot resume from {workdir / LATEST_FILE}: config key "
                              f"{changed!r} differs from the checkpoint's")
        start_iter = int(payload["iteration"])
        position = {"epoch": int(payload["data"]["epoch"]), "batch": int(payload["data"]["batch"])}
    elif ctx.is_main and (workdir / LATEST_FILE).is_file():
        log.warning("starting a fresh run in %s: its latest.pth (an earlier run) will be "
                    "replaced; pass resume=True (--resume) to continue it instead", workdir)

    # Data first: a missing dataset is reported before any model is built.
    dataset = _build_train_dataset(config)
    try:
        stream = _BatchStream(dataset, global_batch, int(config["seed"]), ctx,
                              int(config["loader"]["num_workers"]), pin_memory=cuda, **position)
    except ValueError as err:
        raise ConfigError(f"{err} (solver.batch_size)") from err

    # Model (seeded), init or resumed weights, optional SyncBN.
    model = build_train_model(config)
    model_config = model_config_from(config)
    init_report: InitReport | None = None
    if payload is not None:
        try:
            model.load_state_dict(payload["model"], strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{workdir / LATEST_FILE}: model weights do not load "
                                  f"({str(err).splitlines()[0]})") from err
    elif config["model"]["init_checkpoint"]:
        init_report = load_init_weights(model, config["model"]["init_checkpoint"])
        if ctx.is_main:
            log.info(init_report.summary())
            if init_report.reinitialised:
                log.info("re-initialised: %s", ", ".join(init_report.reinitialised))
    if ctx.is_distributed and solver["sync_bn"]:
        if config["model"]["freeze_bn"]:
            log.warning("solver.sync_bn ignored: BatchNorm is frozen (model.freeze_bn: true)")
        else:
            model = distributed.convert_sync_batchnorm(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()

    net: nn.Module = _TrainNet(model)
    if ctx.is_distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if cuda else None)

    optimizer = torch.optim.SGD(param_groups(model, config), lr=float(solver["lr"]),
                                momentum=float(solver["momentum"]))
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        _set_rng_state(payload["rng"])  # after build_train_model, which seeds torch
        payload = None

    writer = None
    if ctx.is_main and logcfg["tensorboard"]:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(workdir / "tb"), purge_step=start_iter + 1)

    images_per_update = global_batch * iter_size
    losses: list[float] = []
    bar = _Progress(progress and ctx.is_main, start_iter, max_iter, log_every)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_amp
                else contextlib.nullcontext())
    t0 = time.perf_counter()
    iteration = start_iter
    checkpoint_path: Path | None = None
    try:
        for iteration in range(start_iter, stop):
            lr = _set_lr(optimizer, float(solver["lr"]), iteration, max_iter,
                         float(solver["poly_power"]))
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            for micro in range(iter_size):
                images, labels, _ = stream.next()
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                sync = (contextlib.nullcontext() if not ctx.is_distributed or micro == iter_size - 1
                        else net.no_sync())
                with sync:
                    with autocast:
                        outputs = net(images)
                    loss = segmentation_loss(outputs, labels, ignore_label) / iter_size
                    loss.backward()
                loss_sum += loss.detach()
            loss_value = float(distributed.all_reduce_mean(loss_sum).item())
            done = iteration + 1
            if not math.isfinite(loss_value):
                raise TrainingDivergedError(
                    f"training diverged: loss is {loss_value} at iteration {done} "
                    f"(lr {lr:g}); lower solver.lr or check the data")
            optimizer.step()
            losses.append(loss_value)
            rate = (done - start_iter) / max(time.perf_counter() - t0, 1e-9)
            bar.update(done, loss_value, lr, rate)
            if writer is not None:
                if done % log_every == 0 or done == stop:
                    writer.add_scalar("train/loss", loss_value, done)
                    writer.add_scalar("train/lr", lr, done)
                every = int(logcfg["image_every"])
                if every and (done % every == 0 or done == 1):
                    key = "fused" if "fused" in outputs else next(iter(outputs))
                    panel = _overlay_panel(images[0], labels[0], outputs[key][0],
                                           config["input"]["mean_bgr"], ignore_label)
                    writer.add_image("train/image_label_prediction", panel, done, dataformats="HWC")
            every = int(logcfg["checkpoint_every"])
            if (every and done % every == 0) or done == stop:
                checkpoint_path = _save_train_checkpoint(
                    workdir, done, model, optimizer, config, stream.position, ctx,
                    int(logcfg["keep_checkpoints"]))
        iteration = stop if stop > start_iter else start_iter
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - t0
    n_run = max(iteration - start_iter, 0)

    # Final weights through models.save_checkpoint (what evaluation and the demo read).
    from parity.datasets import DATASETS

    dataset_cls = DATASETS.get(config["dataset"]["name"])
    class_names = list(getattr(dataset, "class_names", None) or getattr(dataset_cls, "class_names", []) or [])
    metadata = {
        "source": "parity.train",
        "recipe": config["name"],
        "dataset": config["dataset"]["name"],
        "split": config["dataset"]["split"],
        "class_names": [str(n) for n in class_names],
        "seed": int(config["seed"]),
        "iterations": iteration,
        "max_iter": max_iter,
        "completed": iteration >= max_iter,
        "final_loss": losses[-1] if losses else None,
        "world_size": ctx.world_size,
        "device": device.type,
        "amp_bf16": use_amp,
        "init_checkpoint": config["model"]["init_checkpoint"],
        "init": init_report.as_dict() if init_report is not None else None,
        "torch": str(torch.__version__),
        "train_config": config,
    }
    model_path = workdir / MODEL_FILE
    if ctx.is_main:
        save_checkpoint(model_path, model, model_config, metadata)
        if checkpoint_path is None and (workdir / LATEST_FILE).is_file():
            checkpoint_path = workdir / LATEST_FILE
    distributed.barrier()
    return TrainResult(
        workdir=workdir, model_path=model_path, checkpoint_path=checkpoint_path,
        iteration=iteration, max_iter=max_iter, completed=iteration >= max_iter, losses=losses,
        seconds=seconds, iters_per_s=n_run / seconds if seconds > 0 else 0.0,
        images_per_s=n_run * images_per_update / seconds if seconds > 0 else 0.0,
        device=str(device), world_size=ctx.world_size, init=init_report,
    )


def _save_train_checkpoint(workdir: Path, iteration: int, model: nn.Module,
                           optimizer: torch.optim.Optimizer, config: Mapping[str, Any],
                           position: Mapping[str, int], ctx: distributed.DistContext,
                           keep: int) -> Path:
    """Rank 0 writes ``checkpoint_{iteration}.pth`` (atomically) and points ``latest.pth`` at
    it; older numbered checkpoints beyond the newest ``keep`` are deleted (0 keeps all)."""
    path = workdir / f"checkpoint_{iteration}.pth"
    if ctx.is_main:
        payload = {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "iteration": iteration,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "config": copy.deepcopy(dict(config)),
            "data": dict(position),
            "rng": _rng_state(),
            "world_size": ctx.world_size,
            "torch": str(torch.__version__),
        }
        _atomic_torch_save(payload, path)
        _link_or_copy(path, workdir / LATEST_FILE)
        if keep:  # only this run's past: files of a longer earlier run are left alone
            numbered = sorted(
                (int(p.stem.split("_")[1]), p) for p in workdir.glob("checkpoint_*.pth")
                if p.stem.split("_")[1].isdigit() and int(p.stem.split("_")[1]) <= iteration)
            for _, old in numbered[:-keep]:
                old.unlink(missing_ok=True)
    distributed.barrier()
    return path


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
) -> tuple[TrainResult, Any]:
    """``train`` then ``parity.evaluate.evaluate`` of the saved ``model.pth`` on the config's
    ``eval`` split (``eval.kwargs``, ``scales``, ``flip``, ``pad_to``). Returns
    ``(TrainResult, EvalResult)``; ``EvalResult.scores["Mean IoU"]`` is a 0-1 fraction."""
    from models import load_checkpoint
    from parity.datasets import build_dataset
    from parity.evaluate import evaluate

    result = train(config, workdir=workdir, resume=resume, device=device, max_iters=max_iters,
                   progress=progress)
    ev = config["eval"]
    d = config["dataset"]
    dataset = build_dataset(d["name"], d.get("root"), ev["split"], **dict(ev["kwargs"]))
    model = load_checkpoint(result.model_path)
    eval_device = _resolve_device(device, distributed.DistContext())
    scores = evaluate(model, dataset, device=eval_device, scales=tuple(ev["scales"]),
                      flip=bool(ev["flip"]), pad_to=ev["pad_to"], progress=progress,
                      mean_bgr=config["input"]["mean_bgr"])
    return result, scores
