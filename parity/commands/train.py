"""``deeplab-train``: train DeepLab v2 with a YAML config.

    deeplab-train --config voc12 [KEY=VALUE ...] --workdir DIR [--resume]
                  [--device auto|cpu|cuda] [--max-iters N] [--no-progress]

``--config`` is a shipped config name (``voc12``, ``cocostuff10k``, ``cocostuff164k``,
``cityscapes``, ``shapes``) or a path to a YAML file; ``KEY=VALUE`` overrides use dotted keys
(``solver.lr=0.001 dataset.root=/data/voc``). Data-parallel under ``torchrun``:
``torchrun --nproc_per_node 4 -m parity.commands.train --config voc12 --workdir runs/voc12``.

Exit status: 0 done, 2 bad input (config, dataset, checkpoint; one ``error: ...`` line on
stderr), 1 when the loss diverges (NaN/inf; the message names the iteration).
"""

from __future__ import annotations

import logging
import os
import sys

import click

from deeplab_caffe.models import CheckpointError
from deeplab_caffe.parity.commands.errors import OneLineErrorCommand, fail
from deeplab_caffe.parity.data.datasets import DatasetError
from deeplab_caffe.parity.train.config import ConfigError, load_config
from deeplab_caffe.parity.train.loop import TrainingDivergedError, train

__all__ = ["main"]




def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@click.command("deeplab-train", cls=OneLineErrorCommand,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_name", required=True,
              help="Config name (voc12, cocostuff10k, cocostuff164k, cityscapes, shapes) or YAML path.")
@click.argument("overrides", nargs=-1)
@click.option("--workdir", required=True, type=click.Path(file_okay=False),
              help="Folder for checkpoints, TensorBoard events (tb/) and model.pth.")
@click.option("--resume", is_flag=True, help="Continue from WORKDIR/latest.pth.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--max-iters", type=click.IntRange(min=0), default=None,
              help="Stop after N updates in total (the LR schedule still uses solver.max_iter).")
@click.option("--no-progress", is_flag=True, help="No progress bar; log lines on stderr instead.")
def main(config_name: str, overrides: tuple[str, ...], workdir: str, resume: bool, device: str,
         max_iters: int | None, no_progress: bool) -> None:
    """Train DeepLab v2 with a config and KEY=VALUE overrides (e.g. solver.lr=0.001)."""
    # INFO lines on stderr: the init report, and per-iteration lines with --no-progress
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(config_name, list(overrides))
        result = train(config, workdir=workdir, resume=resume, device=device,
                       max_iters=max_iters, progress=not no_progress)
    except TrainingDivergedError as err:
        fail(_one_line(err), code=1)
    except (ConfigError, DatasetError, CheckpointError) as err:
        fail(_one_line(err))
    except ValueError as err:  # e.g. --device cuda without CUDA, bad transform parameters
        fail(_one_line(err))
    except OSError as err:  # workdir not writable, disk full, ...
        fail(f"{err.filename or ''}: {err.strerror or _one_line(err)}".lstrip(": "))
    if os.environ.get("RANK", "0") != "0":
        return
    click.echo(
        f"{result.iteration}/{result.max_iter} iterations, loss {result.last_loss:.4f}, "
        f"{result.iters_per_s:.2f} it/s; weights: {result.model_path}"
    )


if __name__ == "__main__":
    main()
