"""The training data: the recipe's dataset with its augmentation, and the stream of this
rank's micro-batches, whose position ``(epoch, batch)`` fully determines what comes next."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from deeplab_caffe.parity.data.datasets import build_dataset
from deeplab_caffe.parity.data.transforms import TrainTransform, TransformedDataset
from deeplab_caffe.parity.train import distributed
from deeplab_caffe.parity.train.config import ConfigError

__all__ = ["BatchStream", "build_train_dataset"]


class BatchStream:
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

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        return self.next()

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


def build_train_dataset(config: Mapping[str, Any]) -> Any:
    d, inp = config["dataset"], config["input"]
    base = build_dataset(d["name"], d.get("root"), d["split"], **dict(d["kwargs"]))
    n_classes = int(getattr(base, "n_classes", config["model"]["n_classes"]))
    if n_classes != int(config["model"]["n_classes"]):
        raise ConfigError(f"model.n_classes is {config['model']['n_classes']} but dataset "
                          f"{d['name']!r} has {n_classes} classes")
    transform = TrainTransform(
        inp["crop_size"], scale_range=tuple(inp["scale_range"]), flip=bool(inp["flip"]),
        mean_bgr=inp["mean_bgr"], ignore_label=int(inp["ignore_label"]),
        scale_choices=inp["scale_choices"], resize=inp["resize"],
    )
    return TransformedDataset(base, transform, seed=int(config["seed"]))
