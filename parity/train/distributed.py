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
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from deeplab_caffe.converter.errors import EXIT_ENVIRONMENT

__all__ = [
    "DistContext",
    "current",
    "env_world",
    "setup",
    "teardown",
    "epoch_permutation",
    "epoch_batches",
    "all_reduce_sum",
    "all_reduce_mean",
    "all_reduce_max",
    "all_gather_objects",
    "DistributedSetupError",
    "PeerLostError",
    "is_communication_error",
    "restart_count",
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


class DistributedSetupError(RuntimeError):
    """The process group could not form (a peer never arrived or the rendezvous failed)."""

    exit_status = EXIT_ENVIRONMENT  # in the exit-code contract (converter.errors)


class PeerLostError(RuntimeError):
    """A collective failed during training: another process died or the network failed."""

    exit_status = EXIT_ENVIRONMENT  # in the exit-code contract (converter.errors)


def is_communication_error(err: BaseException) -> bool:
    """Whether ``err`` is a failed collective (gloo / NCCL transport, ``DistError``)."""
    text = str(err).lower()
    return isinstance(err, getattr(dist, "DistError", ())) or "gloo" in text or "nccl" in text


def restart_count() -> int:
    """How many times ``torchrun`` has restarted this run's workers
    (``TORCHELASTIC_RESTART_COUNT``; 0 for a first start or outside ``torchrun``)."""
    try:
        return max(int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), 0)
    except ValueError:
        return 0


def current() -> DistContext:
    """This process's place in the initialised process group (one it did not create), or a
    single process's ``DistContext()``."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), env_world()[2], owns_group=False)
    return DistContext()


def setup(device_type: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group ``torchrun`` describes (``nccl`` for ``device_type == "cuda"``,
    else ``gloo``); reuse one that is already initialised. Single process: no group.
    ``DistributedSetupError`` (one line) when the group cannot form."""
    if dist.is_available() and dist.is_initialized():
        return current()
    rank, world, local = env_world()
    if world == 1:
        return DistContext(0, 1, local, owns_group=False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(backend=backend, store=_attempt_store(rank, world, timeout),
                                rank=rank, world_size=world, timeout=timeout)
    except (RuntimeError, ValueError, KeyError) as err:  # DistBackendError, DistStoreError, a bad address
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedSetupError(
            f"the process group of {world} processes did not form (rank {rank}, {backend}, "
            f"rendezvous {where}, restart {restart_count()}): {first}") from err
    return DistContext(rank, world, local, owns_group=True)


#: the rendezvous store of the group ``setup`` formed (``teardown`` checks every rank out in it)
_STORE: dict[str, dist.Store] = {}


def _attempt_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store at ``MASTER_ADDR:MASTER_PORT``, its keys under a prefix of this
    torchrun attempt (``TORCHELASTIC_RESTART_COUNT``). Under torchrun the agent hosts the store
    (``TORCHELASTIC_USE_AGENT_STORE``) and it outlives the workers: without the prefix a
    restarted rank can read a dead peer's gloo address left by the previous attempt and fail
    with ``Gloo connectFullMesh failed ... timed out connecting``. Outside the agent, rank 0
    hosts it (as ``init_method="env://"`` does)."""
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size=world, is_master=not agent_store and rank == 0,
                          timeout=timeout, multi_tenant=not agent_store)
    _STORE["store"] = dist.PrefixStore(f"deeplab_caffe/attempt_{restart_count()}", store)
    return _STORE["store"]


def teardown(ctx: DistContext, wait_for_peers: bool = True) -> None:
    """Destroy the process group if ``setup`` created it, then check out in the rendezvous
    store; rank 0 (which may host that store) waits up to 10 s for the others' check-out, so it
    never leaves while a peer still tears down. Added after one two-process run on the 2-core box
    ended with rank 1 aborting at exit ("terminate called without an active exception"); the
    cause was not established. ``wait_for_peers=False`` (a run ending in an error: a peer may be
    dead) skips the wait; a peer that died is otherwise waited for 10 s at most."""
    if not (ctx.owns_group and dist.is_initialized()):
        return
    store = _STORE.get("store")
    dist.destroy_process_group()
    if store is None:
        return
    try:
        left = store.add("left", 1)
        deadline = time.monotonic() + 10.0
        while wait_for_peers and ctx.is_main and left < ctx.world_size and time.monotonic() < deadline:
            time.sleep(0.05)
            left = store.add("left", 0)
    except RuntimeError:  # the store's host is gone already
        pass
    finally:
        _STORE.clear()


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


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum of ``tensor`` over ranks (in place, also returned); identity without a group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: object) -> list[object]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` without a group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm by ``nn.SyncBatchNorm`` (batch statistics over all ranks).
    Only meaningful when BatchNorm trains (``model.freeze_bn: false``). Parameter and buffer
    names are unchanged, so checkpoints stay loadable by ``models.load_checkpoint``."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
