"""Distributed data-parallel helpers: process group set-up from ``torchrun``'s environment,
deterministic batch sharding, reductions and SyncBatchNorm.

Works under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``): backend ``nccl`` on CUDA, ``gloo`` on the CPU. Without those variables (or
with ``WORLD_SIZE=1``) everything is a single-process no-op.

Sharding: the batch size is *global* (all ranks together). Epoch ``e``'s sample order is a
permutation drawn from a ``torch.Generator`` seeded from ``(seed, e)``; it is cut into global
batches of ``global_batch`` samples (the incomplete tail is dropped), and rank ``r`` of ``W``
takes the ``r``-th slice of ``global_batch / W`` samples of each. With gradients averaged over
ranks and the loss normalised by the global count of labelled pixels (``parity.train.loop``), a
``W``-process run computes the same update as a single process on the whole batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "env_world",
    "setup",
    "teardown",
    "epoch_permutation",
    "epoch_batches",
    "all_reduce_sum",
    "all_reduce_mean",
    "barrier",
    "convert_sync_batchnorm",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node).
    ``owns_group`` is true when ``setup`` created the process group (``teardown`` ends it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and TensorBoard events."""
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from ``torchrun``'s environment (``(0, 1, 0)`` when
    unset). Raises ``ValueError`` for inconsistent values."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({err})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def setup(device_type: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group ``torchrun`` describes (``nccl`` for ``device_type == "cuda"``,
    else ``gloo``); reuse one that is already initialised. Single process: no group."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), env_world()[2], owns_group=False)
    rank, world, local = env_world()
    if world == 1:
        return DistContext(0, 1, local, owns_group=False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, owns_group=True)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if ``setup`` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of epoch ``epoch``: ``torch.randperm(n)`` from a CPU ``torch.Generator``
    seeded with a 63-bit value derived from ``(seed, epoch)`` (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return torch.randperm(n, generator=generator).tolist()


def epoch_batches(
    n: int, global_batch: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """Rank ``rank``'s batches for epoch ``epoch``: ``n // global_batch`` lists of
    ``global_batch // world_size`` dataset indices (see the module docstring)."""
    if global_batch % world_size != 0:
        raise ValueError(f"batch size {global_batch} is not divisible by the {world_size} processes")
    if n < global_batch:
        raise ValueError(f"the dataset has {n} images, fewer than one batch of {global_batch}")
    order = epoch_permutation(n, seed, epoch)
    local = global_batch // world_size
    return [
        order[start + rank * local : start + (rank + 1) * local]
        for start in range(0, n - global_batch + 1, global_batch)
    ]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (in place, also returned); identity without a group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (in place, also returned)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm by ``nn.SyncBatchNorm`` (batch statistics over all ranks).
    Only meaningful when BatchNorm trains (``model.freeze_bn: false``). Parameter and buffer
    names are unchanged, so checkpoints stay loadable by ``models.load_checkpoint``."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
