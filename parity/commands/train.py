"""``deeplab-train``: train DeepLab v2 with a YAML config.

    deeplab-train --config voc12 [KEY=VALUE ...] --workdir DIR [--resume | --force]
                  [--device auto|cpu|cuda] [--max-iters N] [--no-progress]

``--config`` is a shipped config name (``parity.train.config.available_configs()``: ``voc12``,
``cocostuff10k``, ``cocostuff164k``, ``cityscapes``, the seed port's ``*_port`` variants, and
the CPU smoke recipe ``shapes``) or a path to a YAML file; ``KEY=VALUE`` overrides use dotted keys
(``solver.lr=0.001 dataset.root=/data/voc``). Data-parallel under ``torchrun``:
``torchrun --nproc_per_node 4 -m deeplab_caffe.parity.commands.train --config voc12 --workdir
runs/voc12``; with ``--max-restarts N`` a restarted run continues from the workdir's latest
checkpoint by itself.

A workdir holding an earlier run's checkpoints is refused unless ``--resume`` (continue it;
the log says from which file and iteration) or ``--force`` (start over, replacing its files).
Ctrl-C finishes the update in flight, writes a checkpoint there and exits 130 (a second Ctrl-C
stops at once); SIGTERM (preemption) does the same and exits 143, on every rank. When stderr is not a terminal (CI logs) the progress bar becomes plain lines
(iteration, loss, lr, it/s, ETA) every ``log.log_every`` updates.

Exit status: 0 done, 1 the loss diverged (NaN/inf; the message names the iteration), 2 bad
input (config, dataset, checkpoint, a workdir in use), 3 the environment failed (disk full,
permission denied, a process group that cannot form), 130 Ctrl-C, 143 SIGTERM. Every failure is one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from deeplab_caffe.parity.commands.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ContractCommand, fail
from deeplab_caffe.parity.train.checkpoint import continues, resume_config
from deeplab_caffe.parity.train.config import available_configs, load_config
from deeplab_caffe.parity.train.init import resolve_init
from deeplab_caffe.parity.train.loop import TrainingDivergedError, train

__all__ = ["main"]


@click.command("deeplab-train", cls=ContractCommand)
@click.option("--config", "config_name", required=True,
              help=f"Config name ({', '.join(available_configs())}) or YAML path.")
@click.argument("overrides", nargs=-1)
@click.option("--workdir", required=True, type=click.Path(file_okay=False),
              help="Folder for checkpoints, TensorBoard events (tb/) and model.pth.")
@click.option("--resume", is_flag=True, help="Continue from WORKDIR/latest.pth.")
@click.option("--force", is_flag=True,
              help="Start a fresh run in a WORKDIR holding checkpoints (replaces latest.pth, model.pth).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--max-iters", type=click.IntRange(min=0), default=None,
              help="Stop after N updates in total (the LR schedule still uses solver.max_iter).")
@click.option("--no-progress", is_flag=True, help="No progress bar; log lines on stderr instead.")
def main(config_name: str, overrides: tuple[str, ...], workdir: str, resume: bool, force: bool,
         device: str, max_iters: int | None, no_progress: bool) -> None:
    """Train DeepLab v2 with a config and KEY=VALUE overrides (e.g. solver.lr=0.001).

    Exit status: 0 done, 1 the loss diverged, 2 bad input (config, data, checkpoint, a workdir
    in use without --resume/--force), 3 environment (disk full, permission, no process
    group), 130 Ctrl-C, 143 SIGTERM (both write a checkpoint after the update in flight;
    Ctrl-C twice stops at once). Under torchrun --max-restarts a restart resumes by itself."""
    if resume and force:
        fail("give at most one of --resume, --force")
    # INFO lines on stderr: the init report, and per-iteration lines with --no-progress
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        if continues(workdir, resume):  # the stored config, overrides applied where allowed
            config = resume_config(workdir, config_name, overrides)
        else:
            # the init: model.init_checkpoint, or the synthetic one a recipe makes (shapes), in WORKDIR/init
            config = resolve_init(load_config(config_name, list(overrides)), Path(workdir) / "init")
        result = train(config, workdir=workdir, resume=resume, device=device,
                       max_iters=max_iters, progress=not no_progress, force=force)
    except TrainingDivergedError as err:
        if not config["model"]["init_checkpoint"] and config["model"]["freeze_bn"]:
            raise TrainingDivergedError(f"{err}; this run started from scratch (model.init_checkpoint and "
                                        "model.init_synthetic_seed null) with frozen BatchNorm, "
                                        "which diverges: give model.init_checkpoint=PATH") from err
        raise
    except KeyboardInterrupt:  # the second Ctrl-C, or one before the first update
        fail(f"{workdir}: interrupted; stopped at once, no checkpoint written", EXIT_INTERRUPTED)
    except ValueError as err:
        if hasattr(err, "exit_status"):  # ours (ConfigError, DatasetError, CheckpointError): the wrapper
            raise
        text = str(err).strip()  # e.g. --device cuda without CUDA, bad transform parameters
        fail(text.splitlines()[0] if text else type(err).__name__, EXIT_BAD_INPUT)
    # anything else reaches the contract's wrapper: TrainingInterrupted (130), TrainingDivergedError
    # (1), OSError (3 for a full disk or a permission, naming the file)
    if os.environ.get("RANK", "0") != "0":
        return
    click.echo(
        f"{result.iteration}/{result.max_iter} iterations, loss {result.last_loss:.4f}, "
        f"{result.iters_per_s:.2f} it/s; weights: {result.model_path}"
    )


if __name__ == "__main__":
    main()
