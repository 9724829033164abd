"""Training checkpoints: ``checkpoint_{iteration}.pth`` and ``latest.pth`` in the workdir.

Each holds the model, optimiser, iteration, RNG states, data position and config (readable with
``torch.load(weights_only=True)``); ``latest.pth`` is what ``resume`` continues from, and only
the ``log``, ``loader`` and ``eval`` sections of the config may change between a run and its
resumption. Files are written atomically by rank 0 (``.<name>.*.tmp``, fsync, rename): a kill
mid-save leaves the previous checkpoint intact, and the next run removes the orphaned temp file.
A workdir that already holds checkpoints is refused unless the run resumes or is forced.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import random
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deeplab_caffe.models.files import atomic_output, temp_path_pattern
from deeplab_caffe.models import CheckpointError
from deeplab_caffe.models.bounds import FileBoundError, check_tree_size
from deeplab_caffe.parity.train import distributed
from deeplab_caffe.parity.train.config import (ConfigError, apply_overrides, load_config,
                                               validate_train_config, with_defaults)

__all__ = [
    "TRAIN_CHECKPOINT_FORMAT",
    "LATEST_FILE",
    "MODEL_FILE",
    "RESUMABLE_CHANGES",
    "ResumeState",
    "WorkdirInUseError",
    "WorkdirLock",
    "LOCK_FILE",
    "check_workdir",
    "continues",
    "resume_config",
    "remove_orphaned_temp_files",
    "resume_state",
    "read_train_checkpoint",
    "save_train_checkpoint",
    "rng_state",
    "set_rng_state",
]

log = logging.getLogger("parity.train")

TRAIN_CHECKPOINT_FORMAT = "deeplab-caffe/train-checkpoint/1"
MODEL_FILE = "model.pth"
LATEST_FILE = "latest.pth"
#: config sections that may change between a run and its resumption
RESUMABLE_CHANGES = ("log", "loader", "eval")


class WorkdirInUseError(ConfigError):
    """A fresh run was asked for in a workdir holding an earlier run's checkpoints."""


def check_workdir(workdir: Path, resume: bool, force: bool) -> None:
    """``WorkdirInUseError`` (one line) when ``workdir`` holds ``latest.pth``, numbered
    checkpoints or ``model.pth`` and the run neither resumes nor is forced."""
    if resume or force or not workdir.is_dir():
        return
    found = sorted(p.name for p in workdir.glob("*.pth")
                   if p.name in (LATEST_FILE, MODEL_FILE) or p.name.startswith("checkpoint_"))
    if found:
        raise WorkdirInUseError(f"{workdir}: holds an earlier run ({', '.join(found[:3])}"
                                f"{', ...' if len(found) > 3 else ''}); pass --resume to continue "
                                "it or --force to start over and replace its files")


LOCK_FILE = ".lock"
#: how long a restarted run (TORCHELASTIC_RESTART_COUNT > 0) waits for the lock, seconds
LOCK_WAIT_ON_RESTART_S = 30.0


class WorkdirLock:
    """The run's hold on its workdir: ``fcntl.flock`` on ``{workdir}/.lock``, which holds the
    holder's pid, taken by rank 0 for the run's life. The kernel releases it when the process
    ends however it ends (a crash, SIGKILL, a torchrun restart), so a later ``--resume`` or a
    restarted worker takes it again. ``acquire`` raises ``WorkdirInUseError`` (one line naming
    the workdir and the holder's pid) on every rank when another run holds it."""

    def __init__(self, workdir: Path, ctx: distributed.DistContext) -> None:
        self.workdir, self.ctx = workdir, ctx
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        problem = self._take() if self.ctx.is_main else None
        problem = distributed.all_gather_objects(problem)[0]  # rank 0's answer, on every rank
        if problem is not None:
            raise WorkdirInUseError(problem)
        return self

    def _take(self) -> str | None:
        path = self.workdir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        # a torchrun restart may start while the dead rank 0's DataLoader workers (forked: they
        # share the lock) are still exiting: wait for them a little
        deadline = time.monotonic() + (LOCK_WAIT_ON_RESTART_S if distributed.restart_count() else 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                return (f"{self.workdir}: in use by another deeplab-train run (pid {holder}); wait "
                        "for it to end or give another --workdir")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_orphaned_temp_files(workdir: Path) -> list[Path]:
    """Delete the temporary files an interrupted save left (``.latest.pth.*.tmp``,
    ``.checkpoint_<it>.pth.*.tmp``, ``.model.pth.*.tmp``); returns what was removed."""
    removed = []
    for name in (LATEST_FILE, "checkpoint_*.pth", MODEL_FILE):
        for tmp in workdir.glob(temp_path_pattern(name)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return sorted(removed)


@dataclass
class ResumeState:
    """Where a run starts: ``payload`` (the ``latest.pth`` contents, or None for a fresh run),
    the number of updates done and the data position ``{"epoch", "batch"}``."""

    payload: dict[str, Any] | None = None
    iteration: int = 0
    position: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "batch": 0})


def resume_state(config: Mapping[str, Any], workdir: Path, resume: bool,
                 ctx: distributed.DistContext, force: bool = False) -> ResumeState:
    """A fresh start, or the exact state of ``{workdir}/latest.pth`` (``ConfigError`` when the
    config differs from the checkpoint's outside ``RESUMABLE_CHANGES``; ``WorkdirInUseError``
    for a fresh start over an earlier run without ``force``). Logs where it resumes."""
    if not resume and continues(workdir, resume):
        resume = True
        if ctx.is_main:
            log.info("torchrun restart %d: continuing from the workdir's latest checkpoint",
                     distributed.restart_count())
    check_workdir(workdir, resume, force)
    if not resume:
        if ctx.is_main and (workdir / LATEST_FILE).is_file():
            log.warning("--force: starting a fresh run in %s; its latest.pth and model.pth "
                        "will be replaced", workdir)
        return ResumeState()
    payload = read_train_checkpoint(workdir / LATEST_FILE)
    stored = with_defaults(payload["config"])  # keys added since the checkpoint: their defaults
    changed = _first_difference(
        {k: v for k, v in stored.items() if k not in RESUMABLE_CHANGES},
        {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES})
    if changed is not None:
        raise ConfigError(f"cannot resume from {workdir / LATEST_FILE}: config key "
                          f"{changed!r} differs from the checkpoint's")
    max_iter = int(config["solver"]["max_iter"])
    if payload["iteration"] > max_iter:  # it would record "completed" without a single update
        raise ConfigError(f"cannot resume from {workdir / LATEST_FILE}: it is at iteration {payload['iteration']}, "
                          f"past solver.max_iter {max_iter}")
    stored_world = int(payload.get("world_size", 1))
    if stored_world != ctx.world_size:
        raise ConfigError(
            f"cannot resume from {workdir / LATEST_FILE}: it was written by {stored_world} "
            f"process(es), this run has {ctx.world_size}; each rank's RNG state and the "
            "gradient summation order belong to that count, so the run would not continue "
            f"exactly: resume with {stored_world} process(es)")
    if ctx.is_main:
        log.info("resuming from %s at iteration %d of %d", workdir / LATEST_FILE,
                 int(payload["iteration"]), int(config["solver"]["max_iter"]))
    return ResumeState(payload, int(payload["iteration"]),
                       {"epoch": int(payload["data"]["epoch"]), "batch": int(payload["data"]["batch"])})


def continues(workdir: str | os.PathLike[str], resume: bool) -> bool:
    """Whether a run continues ``{workdir}/latest.pth``: asked to (``--resume``), or restarted
    by ``torchrun --max-restarts`` (``TORCHELASTIC_RESTART_COUNT`` > 0) after a checkpoint was
    written. A first start into a used workdir is still refused (``check_workdir``)."""
    return resume or (distributed.restart_count() > 0 and (Path(workdir) / LATEST_FILE).is_file())


def resume_config(workdir: str | os.PathLike[str], config_name: str | os.PathLike[str],
                  overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The config a resumed run continues with: the one ``{workdir}/latest.pth`` stores (keys
    added since: their defaults), with ``overrides`` applied. ``ConfigError`` (one line) when
    ``config_name`` is another recipe than the checkpoint's, or an override changes a key
    outside ``RESUMABLE_CHANGES``; an override that repeats the stored value is fine."""
    path = Path(workdir) / LATEST_FILE
    stored = with_defaults(read_train_checkpoint(path)["config"])
    named = load_config(config_name)
    if named["name"] != stored.get("name"):
        raise ConfigError(f"cannot resume from {path}: it is a run of recipe {stored.get('name')!r}, "
                          f"--config gives {named['name']!r}")
    config = apply_overrides(stored, list(overrides))
    changed = _first_difference(
        {k: v for k, v in stored.items() if k not in RESUMABLE_CHANGES},
        {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES})
    if changed is not None:
        raise ConfigError(f"cannot resume from {path}: the override of {changed!r} contradicts "
                          "the checkpoint's config (only the log, loader and eval sections may change)")
    validate_train_config(config)
    return config


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["algorithm"], npst["keys"].numpy().astype(np.uint32),
                         int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` whole or not at all (``models.files.atomic_output``); a full disk is an
    ``OSError`` (ENOSPC) naming the checkpoint."""
    try:
        with atomic_output(path) as handle:
            torch.save(obj, handle)
    except RuntimeError as err:  # torch's zip writer hides a full disk's OSError behind its own error
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from err
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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint to resume from")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable training checkpoint ({first})") from err
    try:  # before any size in it is used: zero-stride tensors, shared lists
        check_tree_size(path, "training checkpoint", payload)
    except FileBoundError as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(payload, dict) or payload.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint of this project "
                              f"(expected format {TRAIN_CHECKPOINT_FORMAT!r})")
    _check_entries(path, payload)
    return payload


#: what each entry of a training checkpoint must be (``save_train_checkpoint`` writes them)
_ENTRIES: dict[str, type | tuple[type, ...]] = {"iteration": int, "model": Mapping, "optimizer": Mapping,
                                                 "config": Mapping, "data": Mapping, "rng": Mapping}


def _check_entries(path: Path, payload: Mapping[str, Any]) -> None:
    """``CheckpointError`` naming the entry when a (crafted) checkpoint lacks one or holds the
    wrong kind of value: a negative or non-integer iteration or data position, a model entry
    that is not a tensor."""
    for key, kind in _ENTRIES.items():
        if key not in payload:
            raise CheckpointError(f"{path}: training checkpoint has no {key!r} entry")
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            raise CheckpointError(f"{path}: training checkpoint entry {key!r} is a "
                                  f"{type(payload[key]).__name__}, not {getattr(kind, '__name__', kind)}")
    for key, value in (("iteration", payload["iteration"]), *((f"data.{k}", payload["data"].get(k))
                                                              for k in ("epoch", "batch"))):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{path}: training checkpoint entry {key!r} is {value!r}, not a count >= 0")
    bad = next((k for k, v in payload["model"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: training checkpoint entry model[{bad!r}] is not a tensor")


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


def save_train_checkpoint(workdir: Path, iteration: int, model: nn.Module,
                           optimizer: torch.optim.Optimizer, config: Mapping[str, Any],
                           position: Mapping[str, int], ctx: distributed.DistContext,
                           keep: int) -> Path:
    """Rank 0 writes ``checkpoint_{iteration}.pth`` (atomically) and points ``latest.pth`` at
    it; older numbered checkpoints beyond the newest ``keep`` are deleted (0 keeps all).
    Collective under ``torchrun``: every rank's RNG state is gathered into it (``rng_ranks``;
    model, optimiser and data position are the same on every rank), and no rank returns before
    the file is complete."""
    path = workdir / f"checkpoint_{iteration}.pth"
    rng_ranks = distributed.all_gather_objects(rng_state())  # every rank's, before rank 0 writes
    if ctx.is_main:
        payload = {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "iteration": iteration,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "config": copy.deepcopy(dict(config)),
            "data": dict(position),
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
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
