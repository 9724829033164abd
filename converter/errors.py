"""The converter's one error type: a one-line message that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class ConversionError(Exception):
    """A Caffe file that cannot be read or mapped; ``str(err)`` is ``"<file>: <problem>"``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


#: The exit-code contract every command (deeplab-convert, -parity, -train, -demo) follows and
#: documents in its ``--help``: one line on stderr for every failure, never a traceback.
EXIT_OK = 0  #: success
EXIT_CHECK_FAILED = 1  #: a check, a parity row or a regression comparison failed
EXIT_BAD_INPUT = 2  #: bad input or usage: a missing or malformed file, option or report
EXIT_ENVIRONMENT = 3  #: the environment failed: disk full, permission denied, no such device
EXIT_INTERRUPTED = 130  #: Ctrl-C (SIGINT), as shells report it
