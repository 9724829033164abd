"""Ctrl-C and SIGTERM during training lose at most the update in flight.

The first SIGINT (Ctrl-C) or SIGTERM (what Slurm, Kubernetes and cloud preemption send) asks the
loop to stop after the current update and write a checkpoint there; ``TrainingInterrupted`` then
names it and exits 130 (SIGINT) or 143 (SIGTERM). In a single process a second SIGINT raises
``KeyboardInterrupt`` at once; a repeated SIGTERM, and any repeat under ``torchrun`` (a terminal's
Ctrl-C reaches every worker *and* torchrun, which forwards it again), is the same request.

Under ``torchrun`` every rank installs the handler, and the loop asks ``StopRequest.agreed()``
after each update: an all-reduce of the ranks' flags, so all ranks stop after the same update
even though each received the signal at a different moment, and rank 0 writes one checkpoint
(``parity.train.loop``). DataLoader workers forked while the handler is installed inherit it and
ignore the signals, so the update in flight still gets its data. Only the main thread installs it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch

from deeplab_caffe.converter.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from deeplab_caffe.parity.train import distributed

__all__ = ["StopRequest", "TrainingInterrupted"]

#: the signals handled, and the exit status each ends the run with
_SIGNALS = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}


class TrainingInterrupted(Exception):
    """The run stopped on a signal after writing ``checkpoint`` at ``iteration`` updates;
    ``exit_status`` is 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""

    exit_status = EXIT_INTERRUPTED  # in the exit-code contract (converter.errors)

    def __init__(self, checkpoint: Path, iteration: int, max_iter: int,
                 signum: int = signal.SIGINT) -> None:
        self.checkpoint = checkpoint
        self.iteration = iteration
        self.exit_status = _SIGNALS.get(signal.Signals(signum), EXIT_INTERRUPTED)
        name = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        super().__init__(f"{checkpoint}: {name} at iteration {iteration} of {max_iter}; "
                         "checkpoint written, --resume continues from it")


class StopRequest:
    """A context manager: while active, the first SIGINT or SIGTERM sets ``signum``;
    ``agreed(device)`` tells every rank whether any rank has been asked to stop."""

    def __init__(self, distributed_run: bool = False) -> None:
        self.enabled = threading.current_thread() is threading.main_thread()
        self.distributed_run = distributed_run
        self.signum: int | None = None
        self._owner = os.getpid()
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:  # a forked DataLoader worker: the main process decides
            return
        if self.signum is not None:
            if signum == signal.SIGINT and not self.distributed_run:
                raise KeyboardInterrupt
            return
        self.signum = signum
        what = "SIGTERM" if signum == signal.SIGTERM else "interrupted"
        again = "" if self.distributed_run else " (Ctrl-C again stops at once, without one)"
        print(f"{what}: finishing this update and writing a checkpoint{again}",
              file=sys.stderr, flush=True)

    def agreed(self, device: torch.device) -> int | None:
        """The signal every rank stops for after this update (one all-reduce under
        ``torchrun``; SIGTERM when any rank received it, else SIGINT), or None to go on."""
        if not self.distributed_run:
            return self.signum
        flag = torch.tensor([float(self.signum or 0)], device=device)
        # MAX of 2 (SIGINT) and 15 (SIGTERM): SIGTERM wins when ranks received different ones
        distributed.all_reduce_max(flag)
        value = int(flag.item())
        return value or None

    def __enter__(self) -> StopRequest:
        if self.enabled:
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            # once stopping, a repeat of the signal (torchrun forwards it again while the
            # process exits) is ignored, so the process still ends with its exit status
            repeat = self.signum is not None and (self.distributed_run or signum == signal.SIGTERM)
            signal.signal(signum, signal.SIG_IGN if repeat else previous)
        self._previous.clear()
