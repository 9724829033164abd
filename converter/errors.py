"""The converter's one error type: a one-line message that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class ConversionError(Exception):
    """A Caffe file that cannot be read or mapped; ``str(err)`` is ``"<file>: <problem>"``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
