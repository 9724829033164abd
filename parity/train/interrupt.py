"""Ctrl-C during training loses at most the update in flight.

The first SIGINT asks the loop to stop after the current update and write a checkpoint there
(``TrainingInterrupted`` then names it); a second SIGINT raises ``KeyboardInterrupt`` at once.
DataLoader workers forked while the handler is installed inherit it and ignore SIGINT, so the
update in flight still gets its data. Only the main thread of a single process installs it:
under ``torchrun`` each rank would see the signal at a different update, so Ctrl-C keeps
Python's default there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from deeplab_caffe.converter.errors import EXIT_INTERRUPTED

__all__ = ["StopRequest", "TrainingInterrupted"]


class TrainingInterrupted(Exception):
    """The run stopped on Ctrl-C after writing ``checkpoint`` at ``iteration`` updates."""

    exit_status = EXIT_INTERRUPTED  # in the exit-code contract (converter.errors)

    def __init__(self, checkpoint: Path, iteration: int, max_iter: int) -> None:
        self.checkpoint = checkpoint
        self.iteration = iteration
        super().__init__(f"{checkpoint}: interrupted at iteration {iteration} of {max_iter}; "
                         "checkpoint written, --resume continues from it")


class StopRequest:
    """A context manager: while active, ``requested`` turns True on the first SIGINT."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._owner = os.getpid()
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:  # a forked DataLoader worker: the main process decides
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("interrupted: finishing this update and writing a checkpoint "
              "(Ctrl-C again stops at once, without one)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
