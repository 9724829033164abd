"""Run manifest rows: structural, forward and metric parity, each row caught into a result.

``run_suite(rows, ...)`` runs each row's step and returns a ``SuiteResult`` whose rows have a
status: ``pass``, ``fail`` (the check found a difference), ``error`` (the step crashed),
``not_run`` (data, weights or a reference are missing; the reason says which and how to supply
it) or ``blocked`` (the row can never run here; the manifest says why). Nothing missing is ever
reported as passed, and a blocked row is neither an error nor missing input.

Steps are thin over the other packages: ``converter.convert`` (structural), ``parity.suite.forward``
(forward, over ``converter.verify``), ``parity.train.loop.train`` + ``parity.evaluation.evaluate.evaluate``
(metric). Where things come from:

- data: ``data_roots[dataset]``, else env ``DEEPLAB_DATA_<DATASET>``, else ``data/datasets/<dataset>``;
- weights: ``weights[row name]`` or ``weights[weights key]``, else env ``DEEPLAB_WEIGHTS_<KEY>``,
  else the release file in ``weights_dir`` (env ``DEEPLAB_WEIGHTS_DIR``, default
  ``data/models/caffe``), else the row's fixture; a ``.caffemodel``/``.caffemodel.h5`` is converted,
  a ``.pth``/``.safetensors`` is loaded with ``models.load_checkpoint``;
- ``retrain=True`` (or ``train_always``, unless the row was given weights: those are evaluated)
  trains with the row's ``train_config`` first, into ``outdir/train/<config>``; the COCO init
  checkpoint comes from ``weights["coco_init"]``, the row's fixture, the recipe's
  ``model.init_checkpoint``, or ``init.caffemodel`` in the release folder. A given weight no
  selected row would use (or that ``--retrain`` would train over) is refused (``check_given_weights``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplab_caffe import models
from deeplab_caffe.converter import CaffeFileError, ConversionError, convert
from deeplab_caffe.converter.conversion import sha256_file
from deeplab_caffe.converter.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, exit_status_of
from deeplab_caffe.converter.progress import format_seconds
from deeplab_caffe.converter.report import conversion_report
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab
from deeplab_caffe.converter.verify import VERIFICATION_IMAGES
from deeplab_caffe.parity.data.datasets import DatasetError, build_dataset
from deeplab_caffe.parity.devices import resolve_device
from deeplab_caffe.parity.evaluation.crf import CRFUnavailableError, DenseCRF
from deeplab_caffe.parity.evaluation.evaluate import evaluate
from deeplab_caffe.parity.suite import forward
from deeplab_caffe.parity.suite.forward import ReferenceUnavailable
from deeplab_caffe.parity.suite.manifest import METRICS, Row
from deeplab_caffe.parity.suite.reports import SCHEMA, environment, git_info
from deeplab_caffe.parity.train.config import load_config
from deeplab_caffe.parity.train.loop import train

PASS, FAIL, ERROR, NOT_RUN, BLOCKED = "pass", "fail", "error", "not_run", "blocked"
STATUSES = (PASS, FAIL, ERROR, NOT_RUN, BLOCKED)
CAFFE_SUFFIXES = (".caffemodel", ".h5", ".hdf5")
CHECKPOINT_SUFFIXES = models.checkpoint.SUFFIXES
DEFAULT_WEIGHTS_DIR = Path("data/models/caffe")
DEFAULT_DATA_DIR = Path("data/datasets")
INIT_WEIGHTS_KEY = "coco_init"


class NotRun(Exception):
    """A row cannot run here; ``str(err)`` says why and how to supply what is missing."""


class CheckFailed(Exception):
    """A check ran and found a difference (status ``fail``)."""


@dataclass
class RowResult:
    """What happened to one manifest row."""

    row: Row
    status: str
    reason: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    weights: list[dict[str, Any]] = field(default_factory=list)
    class_iou: list[float | None] | None = None
    class_names: list[str] | None = None
    duration_s: float = 0.0
    traceback: str | None = None
    bad_input: bool = False  # an ``error`` caused by a file or folder the user supplied (exit status 2)

    def to_dict(self) -> dict[str, Any]:
        row = self.row
        return {
            "name": row.name, "kind": row.kind, "tags": list(row.tags), "model": row.model, "dataset": row.dataset,
            "split": row.split, "options": row.options, "source": row.source, "tolerance": row.tolerance,
            "published": row.published.to_dict() if row.published else None, "protocol": row.protocol(),
            "blocked": row.blocked is not None, "status": self.status, "reason": self.reason, "metrics": self.metrics,
            "details": self.details, "weights": self.weights, "class_iou": self.class_iou,
            "class_names": self.class_names, "duration_s": round(self.duration_s, 3), "traceback": self.traceback, "bad_input": self.bad_input,
            "cost_gpu_hours_estimate": row.cost_gpu_hours,
        }


@dataclass
class SuiteResult:
    """Every row's result plus what the run depended on (environment, commit, seed, weight hashes)."""

    suite: str
    rows: list[RowResult]
    seed: int
    device: str
    retrain: bool
    started: str
    duration_s: float
    environment: dict[str, Any]
    git: dict[str, Any]
    weights: list[dict[str, Any]]

    def counts(self) -> dict[str, int]:
        counts = {status: sum(r.status == status for r in self.rows) for status in STATUSES}
        counts["total"] = len(self.rows)
        return counts

    def exit_status(self, allow_not_run: bool = False) -> int:
        """0 all pass (blocked rows aside); 1 a row failed or crashed (regression); 2 a row's input was
        bad (a corrupt file), or a row could not run for missing input (all of them pass with
        ``allow_not_run``), or nothing was selected."""
        if any(r.status == FAIL or (r.status == ERROR and not r.bad_input) for r in self.rows):
            return 1
        if any(r.bad_input for r in self.rows):
            return 2
        missing = [r for r in self.rows if r.status == NOT_RUN]
        if (missing and not allow_not_run) or not self.rows:
            return 2
        return 0

    def to_dict(self, allow_not_run: bool = False) -> dict[str, Any]:
        counts = self.counts()
        return {
            "schema": SCHEMA, "suite": self.suite, "started": self.started, "duration_s": round(self.duration_s, 3),
            "seed": self.seed, "device": self.device, "retrain": self.retrain, "environment": self.environment,
            "git": self.git, "weights": self.weights, "summary": counts,
            "exit_status": self.exit_status(allow_not_run), "rows": [r.to_dict() for r in self.rows],
        }


@dataclass
class RunContext:
    """Inputs and caches shared by the steps of one run."""

    data_roots: dict[str, Path]
    weights: dict[str, Path]
    outdir: Path
    workdir: Path
    seed: int
    device: str
    retrain: bool = False
    references: dict[str, Path] = field(default_factory=dict)
    weights_dir: Path | None = None
    progress: bool = False
    resume: bool = False
    crf_processes: int = 0
    log: Callable[[str], None] = lambda message: None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    conversions: dict[str, Any] = field(default_factory=dict)
    trained: dict[tuple, tuple[Path, dict[str, Any]]] = field(default_factory=dict)
    inits: dict[str, Path] = field(default_factory=dict)  # init source (resolved) -> converted checkpoint

    def record(self, path: Path, what: str, *, temporary: bool = False) -> dict[str, Any]:
        """sha256 + size of a weight file, computed once per path; returns the record. ``temporary``:
        the file lives in the run's temporary folder, removed at the end: the record names the file
        without that folder (reports never point at a path that is gone)."""
        key = str(Path(path).resolve())
        if key not in self.files:
            self.files[key] = {"path": Path(path).name if temporary else str(path), "what": what,
                               "bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}
        return self.files[key]


# ----------------------------------------------------------------------------- resolution


def _env_name(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).upper()


def data_root(row: Row, ctx: RunContext) -> Path | None:
    """The dataset folder of a metric row (None for the procedural ``shapes``); NotRun if absent."""
    name = row.dataset
    if name == "shapes" or name is None:
        return None
    env = f"DEEPLAB_DATA_{_env_name(name)}"
    root = ctx.data_roots.get(name) or (Path(os.environ[env]) if os.environ.get(env) else None)
    if root is None:
        default = DEFAULT_DATA_DIR / name
        if not default.is_dir():
            raise NotRun(f"no data for {name}: pass --data-root {name}=PATH or set {env}")
        root = default
    if not Path(root).is_dir():
        raise NotRun(f"data root for {name} not found: {root}")
    return Path(root)


@dataclass
class Weights:
    """Resolved weights of a row: a Caffe file (converted) or a PyTorch checkpoint (loaded)."""

    path: Path
    kind: str  # "caffe" | "checkpoint"
    prototxt: Path | None = None
    origin: str = ""


def weights_folder(ctx: RunContext) -> Path:
    """Where release files are looked up: ``weights_dir``, env ``DEEPLAB_WEIGHTS_DIR``, ``data/models/caffe``."""
    if ctx.weights_dir is not None:
        return ctx.weights_dir
    return Path(os.environ["DEEPLAB_WEIGHTS_DIR"]) if os.environ.get("DEEPLAB_WEIGHTS_DIR") else DEFAULT_WEIGHTS_DIR


def _given_weights(row: Row, ctx: RunContext) -> Path | None:
    spec = row.weights
    if row.name in ctx.weights:
        return Path(ctx.weights[row.name])
    if spec.key in ctx.weights:
        return Path(ctx.weights[spec.key])
    env = f"DEEPLAB_WEIGHTS_{_env_name(spec.key)}"
    return Path(os.environ[env]) if os.environ.get(env) else None


class UnusedWeightsError(ValueError):
    """A ``--weights NAME=PATH`` that no selected row would use, or that a row would ignore: bad input."""

    exit_status = EXIT_BAD_INPUT


def _trains_from_init(row: Row) -> bool:
    """Whether training ``row`` starts from an init checkpoint (its fixture, or its recipe's ``model.init_checkpoint``)."""
    return bool(row.weights.fixture) or bool(load_config(row.weights.train_config)["model"]["init_checkpoint"])


def check_given_weights(rows: list[Row], weights: dict[str, str | Path], *, retrain: bool = False) -> None:
    """``UnusedWeightsError`` (one line naming the option) unless every given ``NAME=PATH`` is used:
    ``NAME`` is a selected, unblocked row or its weights key, and that row evaluates or converts PATH
    (with ``--retrain`` a metric row trains its own weights instead: refused); ``coco_init`` is also
    used by every row that trains from an init (``--retrain``, or a row that always trains)."""
    runnable = [row for row in rows if not row.blocked]
    for name, path in weights.items():
        addressed = [row for row in runnable if name in (row.name, row.weights.key)]
        for row in addressed:
            if retrain and row.kind == "metric" and row.weights.train_config:
                raise UnusedWeightsError(
                    f"--weights {name}={path}: with --retrain row {row.name} trains its own weights and would not "
                    f"use it; leave out --retrain to evaluate it, or give the training init as "
                    f"--weights {INIT_WEIGHTS_KEY}=PATH")
        if addressed or (name == INIT_WEIGHTS_KEY and any(
                row.kind == "metric" and row.weights.train_config and (retrain or row.weights.train_always)
                and _trains_from_init(row) for row in runnable)):
            continue
        blocked = [row.name for row in rows if row.blocked and name in (row.name, row.weights.key)]
        why = (f"row {blocked[0]} is blocked" if blocked else
               "only training uses it (--retrain, or a row that always trains), and no selected row trains from an init"
               if name == INIT_WEIGHTS_KEY else f"no selected row is named {name!r} or has that weights key")
        raise UnusedWeightsError(f"--weights {name}={path}: no selected row would use it ({why}; selected: "
                                 f"{', '.join(row.name for row in rows)})")


def _kind_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(CHECKPOINT_SUFFIXES):
        return "checkpoint"
    if name.endswith(CAFFE_SUFFIXES):
        return "caffe"
    raise NotRun(f"weights {path}: expected a .caffemodel / .caffemodel.h5 or a .pth / .safetensors checkpoint")


def resolve_weights(row: Row, ctx: RunContext) -> Weights | None:
    """Given file, else release file, else fixture (written on first use); None when none applies."""
    spec = row.weights
    given = _given_weights(row, ctx)
    if given is not None:
        if not given.is_file():
            raise NotRun(f"weights file for {spec.key} not found: {given}")
        prototxt = None
        if spec.prototxt and (given.parent / spec.prototxt).is_file():
            prototxt = given.parent / spec.prototxt
        return Weights(given, _kind_of(given), prototxt, "given")
    if spec.release:
        folder = weights_folder(ctx)
        path = folder / spec.release
        if path.is_file():
            prototxt = folder / spec.prototxt if spec.prototxt else None
            if prototxt is not None and not prototxt.is_file():
                raise NotRun(f"prototxt for {spec.release} not found: {prototxt}")
            return Weights(path, "caffe", prototxt, "release")
    if spec.fixture:
        return _fixture(row, ctx)
    return None


def missing_inputs(row: Row, data_roots: dict[str, Path] | None = None, weights: dict[str, Path] | None = None,
                   weights_dir: Path | None = None) -> list[str]:
    """What ``row`` lacks to run here, looked up as ``run_suite`` would (options, then the
    ``DEEPLAB_*`` variables, then the default folders) without writing anything: ``"data"``
    and/or ``"weights"``; empty when it can run, and for a blocked row (its status says so)."""
    if row.blocked:
        return []
    ctx = RunContext(data_roots=dict(data_roots or {}), weights=dict(weights or {}), outdir=Path("."),
                     workdir=Path("."), seed=0, device="cpu", weights_dir=weights_dir)
    missing = []
    if row.kind == "metric":
        try:
            data_root(row, ctx)
        except NotRun:
            missing.append("data")
    spec = row.weights
    given = _given_weights(row, ctx)
    if given is not None:
        present = given.is_file()
    elif spec.release:
        present = (weights_folder(ctx) / spec.release).is_file()
    else:
        present = bool(spec.fixture or spec.train_always)
    if not present:
        missing.append("weights")
    return missing


def _fixture(row: Row, ctx: RunContext) -> Weights:
    """Write (once per key) a caffemodel with the official DeepLab-ResNet topology and seeded weights."""
    spec = row.weights
    folder = ctx.workdir / "fixtures" / spec.key
    caffemodel, prototxt = folder / f"{spec.key}.caffemodel", folder / f"{spec.key}.prototxt"
    if not caffemodel.is_file():
        f = spec.fixture or {}
        shape = {}  # what the fixture gives; the rest is models.default_config's (DeepLab-ResNet-101)
        if "n_blocks" in f:
            shape["n_blocks"] = tuple(f["n_blocks"])
        if "aspp_rates" in f:  # null: the single 1x1 classifier of the COCO init
            shape["aspp_rates"] = tuple(f["aspp_rates"]) if f["aspp_rates"] else None
        if "stem_channels" in f:
            shape["stem_channels"] = int(f["stem_channels"])
        config = models.default_config(int(f["n_classes"]), msc=bool(f.get("msc", False)), **shape)
        ctx.log(f"  writing fixture {caffemodel.name} (official topology, seed {f.get('seed', 0)})")
        make_synthetic_deeplab(folder, config, seed=int(f.get("seed", 0)), name=spec.key, msc_copies=False)
    return Weights(caffemodel, "caffe", prototxt, "fixture")


def _conversion(row: Row, ctx: RunContext, weights: Weights) -> Any:
    """``converter.convert`` of a Caffe file, cached per file (a failure is cached too)."""
    key = str(weights.path.resolve())
    if key not in ctx.conversions:
        n_classes = row.weights.n_classes or (row.weights.fixture or {}).get("n_classes")
        try:
            ctx.conversions[key] = convert(weights.path, weights.prototxt, n_classes=n_classes)
        except ConversionError as err:
            ctx.conversions[key] = err
    result = ctx.conversions[key]
    if isinstance(result, CaffeFileError) and weights.origin != "fixture":
        raise result  # a corrupt or truncated file the user supplied: bad input, not a failed port
    if isinstance(result, Exception):
        raise CheckFailed(f"conversion failed: {result}")
    return result


def _weight_records(ctx: RunContext, weights: Weights) -> list[dict[str, Any]]:
    temporary = weights.origin == "fixture"
    what = {"fixture": "fixture caffemodel (temporary: written from the manifest's weights.fixture seed into a "
                       "folder removed after the run; the same seed writes the same bytes)",
            "release": "Caffe release file", "given": "given weights"}[weights.origin]
    records = [ctx.record(weights.path, what, temporary=temporary)]
    if weights.prototxt is not None:
        records.append(ctx.record(weights.prototxt, "fixture prototxt (temporary)" if temporary else "prototxt",
                                  temporary=temporary))
    return records


def _require_caffe(row: Row, ctx: RunContext) -> Weights:
    weights = resolve_weights(row, ctx)
    if weights is None:
        spec = row.weights
        where = ctx.weights_dir or os.environ.get("DEEPLAB_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR
        raise NotRun(f"weights missing: {spec.release} not in {where}; pass --weights {spec.key}=PATH "
                     f"or --weights-dir DIR (DeepLab's prototxt_and_model.zip, see README)")
    if weights.kind != "caffe":
        raise NotRun(f"a {row.kind} check needs the Caffe file, got a checkpoint: {weights.path}")
    return weights


# ----------------------------------------------------------------------------- steps


def run_structural(row: Row, ctx: RunContext, result: RowResult) -> None:
    """Conversion accounting: every blob mapped, every structural check agrees (``converter.convert``)."""
    weights = _require_caffe(row, ctx)
    result.weights = _weight_records(ctx, weights)
    conversion = _conversion(row, ctx, weights)
    report = conversion_report(conversion)
    failed = [c for c in conversion.checks if not c.ok]
    result.details = {
        "accounting": report["accounting"], "checks": len(conversion.checks),
        "checks_passed": len(conversion.checks) - len(failed),
        "n_classes": conversion.config["n_classes"], "msc": bool(conversion.config.get("msc")),
        "caffemodel_sha256": conversion.caffemodel_sha256,
    }
    if report["accounting"]["unaccounted"]:
        raise CheckFailed(f"{report['accounting']['unaccounted']} blobs unaccounted for")
    if failed:
        first = failed[0]
        raise CheckFailed(f"{len(failed)} structural checks disagree, first: layer {first.layer} {first.what} "
                          f"{first.caffe} (Caffe) vs {first.model} (model)")


def run_forward(row: Row, ctx: RunContext, result: RowResult) -> None:
    """Converted model vs a Caffe reference (dump or OpenCV), layer by layer (``parity.suite.forward``)."""
    weights = _require_caffe(row, ctx)
    reference = ctx.references.get(row.name) or ctx.references.get("*")
    forward.choose_reference(reference)  # NotRun-like error before any work when there is none
    result.weights = _weight_records(ctx, weights)
    if reference is not None:
        result.weights.append(ctx.record(reference, "Caffe blob dump"))
    conversion = _conversion(row, ctx, weights)
    options = row.options
    report = forward.check_forward(conversion.model, conversion.graph, weights.path, reference=reference,
                           images=options.get("images", VERIFICATION_IMAGES),
                           size=int(options.get("size", 321)), rtol=float(options.get("rtol", 1e-5)),
                           layer_rtol=float(options["layer_rtol"]) if "layer_rtol" in options else None,
                           layer_by_layer=bool(options.get("layer_by_layer", True)), progress=ctx.progress)
    rows = report.rows
    worst = sorted(rows, key=lambda r: -r.max_rel)[:5]
    result.details = {
        "reference": report.reference, "inputs": report.inputs, "rtol": report.rtol, "layers_compared": len(rows),
        "max_rel": report.max_rel, "first_divergent": report.first_divergent,
        "worst": [{"layer": r.layer, "module": r.module, "max_abs": r.max_abs, "max_rel": r.max_rel} for r in worst],
        "divergent": [{"layer": r.layer, "module": r.module, "shape": list(r.shape), "max_abs": r.max_abs,
                       "max_rel": r.max_rel} for r in rows if not r.ok][:10],
    }
    if not rows:
        raise CheckFailed("no layer could be compared (the reference has none of the model's layers)")
    if not report.passed:
        first = next(r for r in rows if not r.ok)
        raise CheckFailed(f"first divergent layer {first.layer} ({first.module}): max rel. error {first.max_rel:.3g} "
                          f"> rtol {report.rtol:g}")


def _init_checkpoint(ctx: RunContext, default: str | None) -> Path | None:
    """The COCO init checkpoint for training: ``--weights coco_init=PATH`` (env
    ``DEEPLAB_WEIGHTS_COCO_INIT``), else the recipe's own path when it exists, else
    ``init.caffemodel`` in the release folder; a caffemodel is converted into ``outdir/train``.
    None when the recipe trains from scratch (``model.init_checkpoint: null``)."""
    if not default:
        return None
    env = os.environ.get("DEEPLAB_WEIGHTS_COCO_INIT")
    given = ctx.weights.get(INIT_WEIGHTS_KEY) or (Path(env) if env else None)
    if given is None and Path(default).is_file():
        return Path(default)
    if given is None and (weights_folder(ctx) / "init.caffemodel").is_file():
        given = weights_folder(ctx) / "init.caffemodel"
    if given is None:
        return Path(default)
    return _given_init(ctx, Path(given))


def _given_init(ctx: RunContext, given: Path) -> Path:
    """A given init file as a checkpoint: a ``.pth``/``.safetensors`` as it is, a caffemodel converted
    into ``outdir/train/coco_init.pth`` (once per run: a rerun with another file converts that one)."""
    if not given.is_file():
        raise NotRun(f"COCO init weights not found: {given}")
    if _kind_of(given) == "checkpoint":
        return given
    key = str(given.resolve())
    if key not in ctx.inits:
        target = ctx.outdir / "train" / "coco_init.pth"
        ctx.log(f"  converting {given.name} for the training init")
        conversion = convert(given, None, n_classes=91)
        target.parent.mkdir(parents=True, exist_ok=True)
        models.save_checkpoint(target, conversion.state_dict, conversion.config,
                               {"source_file": given.name, "source_sha256": conversion.caffemodel_sha256})
        ctx.inits[key] = target
    return ctx.inits[key]


def _fixture_init(row: Row, ctx: RunContext) -> Path:
    """The init checkpoint of a row with a fixture: ``--weights coco_init=PATH`` when given (it must
    fit the recipe's backbone), else the row's fixture caffemodel converted into
    ``outdir/train/<key>_init.pth`` (once per run), like the real recipes' converted Caffe file."""
    if INIT_WEIGHTS_KEY in ctx.weights:
        return _given_init(ctx, Path(ctx.weights[INIT_WEIGHTS_KEY]))
    weights = _fixture(row, ctx)
    key = str(weights.path.resolve())
    if key not in ctx.inits:
        target = ctx.outdir / "train" / f"{row.weights.key}_init.pth"
        conversion = _conversion(row, ctx, weights)
        target.parent.mkdir(parents=True, exist_ok=True)
        models.save_checkpoint(target, conversion.state_dict, conversion.config,
                               {"source_file": weights.path.name, "source_sha256": conversion.caffemodel_sha256})
        ctx.inits[key] = target
    return ctx.inits[key]


def recipe_fingerprint(config: dict[str, Any]) -> str:
    """sha256 of a resolved training config (``parity.train.config.load_config``), keys sorted."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _train(row: Row, ctx: RunContext, result: RowResult, root: Path | None) -> Path:
    """Train with the row's recipe (``parity.train.loop.train``), once per (config, data, seed)."""
    spec = row.weights
    if not spec.train_config:
        raise NotRun("--retrain: this row has no training recipe (weights.train_config); evaluate given weights "
                     f"instead with --weights {spec.key}=PATH")
    overrides = [f"seed={ctx.seed}"]
    if root is not None:
        overrides.append(f"dataset.root={root}")
    config = load_config(spec.train_config, overrides)
    if spec.fixture:
        init = _fixture_init(row, ctx)
    else:
        init = _init_checkpoint(ctx, config["model"]["init_checkpoint"])
    if init is not None:
        config = load_config(spec.train_config, overrides + [f"model.init_checkpoint={init}"])
    if spec.recipe_sha256 is not None:
        pristine = recipe_fingerprint(load_config(spec.train_config))
        result.details["recipe_changed"] = pristine != spec.recipe_sha256
    init_path = config["model"]["init_checkpoint"]
    if init_path and not Path(init_path).is_file():
        raise NotRun(f"training starts from the COCO init checkpoint {init_path}, not found: pass "
                     f"--weights {INIT_WEIGHTS_KEY}=PATH (init.caffemodel or its deeplab-convert .pth)")
    key = (spec.train_config, str(root), ctx.seed, str(init_path))
    if key not in ctx.trained:
        workdir = ctx.outdir / "train" / Path(spec.train_config).stem  # a shipped name or a .yaml path
        resume = ctx.resume and (workdir / "latest.pth").is_file()
        ctx.log(f"  training {spec.train_config} ({config['solver']['max_iter']} iterations) in {workdir}"
                + (" (resuming)" if resume else ""))
        # the suite's own output folder: a rerun replaces its training like its reports
        trained = train(config, workdir=workdir, device=ctx.device, progress=ctx.progress,
                        resume=resume, force=not resume)
        ctx.trained[key] = (trained.model_path, {
            "config": spec.train_config, "iterations": trained.iteration, "seconds": round(trained.seconds, 1),
            "last_loss": trained.last_loss, "device": trained.device, "workdir": str(workdir)})
    path, details = ctx.trained[key]
    result.details["training"] = details
    if init_path:
        result.weights.append(ctx.record(Path(init_path), "training init checkpoint"))
    return path


def _metric_model(row: Row, ctx: RunContext, result: RowResult, root: Path | None) -> Any:
    """The model a metric row evaluates: trained (``--retrain``, or a row that always trains and was
    given no weights), loaded or converted; an MSC model resizes its pyramid as the row says
    (``msc_resize``), whatever its checkpoint says."""
    if ctx.retrain or (row.weights.train_always and _given_weights(row, ctx) is None):
        path = _train(row, ctx, result, root)
        result.weights.append(ctx.record(path, "trained checkpoint"))
        model = models.load_checkpoint(path)
    else:
        weights = resolve_weights(row, ctx)
        if weights is None:
            hint = f"--weights {row.weights.key}=PATH (a .pth/.safetensors checkpoint"
            hint += ", or the Caffe release file)" if row.weights.release else ")"
            if row.weights.train_config:
                hint += f", or --retrain (trains {row.weights.train_config} first)"
            raise NotRun(f"weights missing: pass {hint}")
        result.weights = _weight_records(ctx, weights)
        if weights.kind == "checkpoint":
            model = models.load_checkpoint(weights.path)
        else:
            model = _conversion(row, ctx, weights).model
    if row.options.get("msc") is False and hasattr(model, "base"):
        return model.base  # the single-scale network of an MSC model
    if row.options.get("msc") is True and not hasattr(model, "base"):
        raise CheckFailed("the row evaluates an MSC model but the weights describe a single-scale one")
    row_resize = (row.protocol() or {}).get("msc_resize")
    if isinstance(model, models.MSC) and row_resize is not None:
        model.resize = row_resize  # the row's pyramid, not the checkpoint's (a row without one keeps it)
    return model


def _compare_metrics(row: Row, scores: dict[str, Any], result: RowResult) -> None:
    """Each manifest metric, reproduced vs reported, into ``result.metrics``; ``CheckFailed``
    naming every one beyond the row's tolerance."""
    problems = []
    for metric, score_key in METRICS.items():
        value = float(scores[score_key])
        reproduced = 100.0 * value if np.isfinite(value) else None
        reported = row.reported.get(metric)
        delta = None if reported is None or reproduced is None else reproduced - reported
        ok = None if reported is None else (delta is not None and abs(delta) <= row.tolerance)
        if reported is None and reproduced is None:
            continue
        result.metrics.append({"metric": metric, "reported": reported, "reproduced": reproduced, "delta": delta,
                               "tolerance": row.tolerance, "ok": ok})
        if ok is False:
            shown = "n/a" if reproduced is None else f"{reproduced:.2f}"
            problems.append(f"{metric} {shown} vs reported {reported:.2f}"
                            + (f" ({delta:+.2f}, beyond ±{row.tolerance:g})" if delta is not None else ""))
    if problems:
        if result.details.get("recipe_changed"):
            problems.append(f"note: recipe {row.weights.train_config} changed since this number was pinned "
                            f"(weights.recipe_sha256): re-pin it if the change is intended")
        raise CheckFailed("; ".join(problems))


def run_metric(row: Row, ctx: RunContext, result: RowResult) -> None:
    """Evaluate (after training with --retrain) and compare each metric with the reported value."""
    root = data_root(row, ctx)
    options = row.options
    try:
        dataset = build_dataset(row.dataset, root, row.split, **dict(options.get("dataset_kwargs") or {}))
    except DatasetError as err:
        raise NotRun(f"data for {row.dataset} {row.split} is incomplete: {err}") from None
    crf = None
    if options.get("crf"):
        try:
            crf = DenseCRF()
        except CRFUnavailableError as err:
            raise NotRun(str(err)) from None
    model = _metric_model(row, ctx, result, root)
    protocol = row.protocol() or {}
    result.details["protocol"] = protocol
    ctx.log(f"  evaluating on {row.dataset} {row.split} ({len(dataset)} images, device {ctx.device})")
    evaluation = evaluate(model, dataset, device=ctx.device, scales=tuple(protocol["scales"]), flip=protocol["flip"],
                          crf=crf, crf_processes=ctx.crf_processes, pad_to=protocol["pad_to"],
                          max_images=options.get("max_images"), batch_size=int(options.get("batch_size", 1)),
                          progress=ctx.progress, mean_bgr=protocol["mean_bgr"], upsample=protocol["upsample"],
                          mean_arithmetic=protocol["mean_arithmetic"])
    result.class_iou = list(evaluation.class_iou)
    result.class_names = [str(n) for n in getattr(dataset, "class_names", ())] or None
    result.details.update({"n_images": evaluation.n_images, "n_pixels": evaluation.n_pixels,
                           "eval_seconds": round(evaluation.timings.get("total_s", 0.0), 1)})
    _compare_metrics(row, evaluation.scores, result)


STEPS: dict[str, Callable[[Row, RunContext, RowResult], None]] = {
    "structural": run_structural,
    "forward": run_forward,
    "metric": run_metric,
}


def run_row(row: Row, ctx: RunContext) -> RowResult:
    """Run one row's step; every outcome (including crashes) becomes a RowResult."""
    result = RowResult(row=row, status=PASS)
    start = time.perf_counter()
    random.seed(ctx.seed)
    np.random.seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    if row.blocked:
        result.status, result.reason = BLOCKED, f"blocked: {row.blocked}"
        return result
    try:
        STEPS[row.kind](row, ctx, result)
    except (NotRun, ReferenceUnavailable) as err:
        result.status, result.reason = NOT_RUN, str(err)
    except CheckFailed as err:
        result.status, result.reason = FAIL, str(err)
    except Exception as err:  # a crash in a step: recorded, the run goes on
        if exit_status_of(err) == EXIT_ENVIRONMENT:
            raise  # disk full, permission denied: every later row would fail the same way
        if exit_status_of(err) == EXIT_BAD_INPUT:  # a corrupt file, a bad dataset folder (BlobDumpError too)
            result.status, result.reason, result.bad_input = ERROR, f"bad input: {err}", True
            return _timed(result, start)
        result.status = ERROR
        result.reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        result.traceback = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-6:])
    return _timed(result, start)


def _timed(result: RowResult, start: float) -> RowResult:
    result.duration_s = time.perf_counter() - start
    return result


def run_suite(
    rows: list[Row],
    *,
    data_roots: dict[str, str | Path] | None = None,
    weights: dict[str, str | Path] | None = None,
    outdir: str | Path,
    seed: int = 0,
    device: str = "auto",
    retrain: bool = False,
    references: dict[str, str | Path] | None = None,
    weights_dir: str | Path | None = None,
    suite: str = "custom",
    progress: bool = False,
    resume: bool = False,
    crf_processes: int = 0,
    log: Callable[[str], None] | None = None,
    on_row: Callable[[RowResult], None] | None = None,
) -> SuiteResult:
    """Run ``rows`` in order and collect their results (see the module docstring for inputs).

    ``references`` maps a row name (or ``"*"`` for every forward row) to a Caffe blob dump. A given
    weight no selected row would use is refused first (``check_given_weights``).
    Fixtures go to a temporary folder removed at the end; training goes to ``outdir/train``.
    ``log`` receives progress lines, ``on_row`` each finished row.
    """
    check_given_weights(rows, weights or {}, retrain=retrain)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(device)) if device == "auto" else device
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    results: list[RowResult] = []
    with tempfile.TemporaryDirectory(prefix="deeplab-parity-") as tmp:
        ctx = RunContext(
            data_roots={k: Path(v) for k, v in (data_roots or {}).items()},
            weights={k: Path(v) for k, v in (weights or {}).items()}, outdir=outdir, workdir=Path(tmp), seed=seed,
            device=device, retrain=retrain, references={k: Path(v) for k, v in (references or {}).items()},
            weights_dir=Path(weights_dir) if weights_dir else None, progress=progress, resume=resume,
            crf_processes=crf_processes, log=log or (lambda message: None),
        )
        for i, row in enumerate(rows):
            elapsed = format_seconds(time.perf_counter() - start)
            ctx.log(f"{row.name} ({row.kind}): row {i + 1}/{len(rows)}, elapsed {elapsed}")
            result = run_row(row, ctx)
            results.append(result)
            if on_row is not None:
                on_row(result)
        files = sorted(ctx.files.values(), key=lambda item: item["path"])
        ctx.conversions.clear()
    return SuiteResult(
        suite=suite, rows=results, seed=seed, device=device, retrain=retrain, started=started,
        duration_s=time.perf_counter() - start, environment=environment(device), git=git_info(), weights=files,
    )
