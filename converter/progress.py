"""Progress of a long loop on stderr, readable on a terminal and in a CI log alike.

On a terminal: a rich bar (count, elapsed, time remaining). Otherwise (CI logs, pipes, files): one
plain line every ``interval_s`` seconds and one at the end, e.g.
``verify: step 120/482, elapsed 1m05s, ETA 3m16s``, so a long step is never silent. The interval
comes from the environment variable ``DEEPLAB_PROGRESS_INTERVAL`` (seconds, default 30).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

DEFAULT_INTERVAL_S = 30.0


def format_seconds(seconds: float) -> str:
    """``65.2`` -> ``"1m05s"``; ``3725`` -> ``"1h02m05s"``; under a minute ``"42s"``."""
    s = int(round(seconds))
    hours, minutes, secs = s // 3600, s // 60 % 60, s % 60
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _interval_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get("DEEPLAB_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class StepProgress:
    """``with StepProgress("eval", total) as p: ... p.advance(n)``; silent when ``enabled`` is False.

    ``stream`` (default stderr) decides: a terminal gets the rich bar, anything else plain lines.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, interval_s: float | None = None,
                 stream: TextIO | None = None) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.interval_s = _interval_from_env() if interval_s is None else interval_s
        self.done = 0
        self.bar: Progress | None = None
        self.task = None
        self.start = self.last_line = time.perf_counter()

    def __enter__(self) -> StepProgress:
        self.start = self.last_line = time.perf_counter()
        if self.enabled and self.stream.isatty():
            self.bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=self.stream))
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total)
        return self

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more done; on a non-terminal print a line when the interval has passed."""
        self.done += steps
        if self.bar is not None:
            self.bar.advance(self.task, steps)
        elif self.enabled and time.perf_counter() - self.last_line >= self.interval_s:
            self._line()

    def line(self) -> str:
        """The plain progress line: step, elapsed time and the remaining time at the mean pace so far."""
        elapsed = time.perf_counter() - self.start
        text = f"{self.label}: step {self.done}/{self.total}, elapsed {format_seconds(elapsed)}"
        if 0 < self.done < self.total:
            text += f", ETA {format_seconds(elapsed / self.done * (self.total - self.done))}"
        return text

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line = time.perf_counter()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.enabled and exc_type is None and self.done:
            self._line()
