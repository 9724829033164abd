"""The exit-code contract for the parity commands, re-exported from ``converter.errors``.

``ContractCommand``/``ContractGroup`` turn any exception into one ``error: ...`` line and the contract's
exit status (``--debug`` adds the traceback); ``fail`` ends a command with a message of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click

from deeplab_caffe.converter.errors import (  # noqa: F401  (the contract, re-exported for the commands)
    EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_OK, EXIT_STATUS_HELP, ContractCommand,
    ContractGroup, exit_status_of, one_line, report_failure)

def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad input or usage)."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def refuse_existing(output: str | Path | None, force: bool) -> None:
    """One line (exit 2) when ``output`` exists and ``force`` is not given: nothing is overwritten unasked."""
    if output is not None and Path(output).exists() and not force:
        fail(f"{output}: already exists; pass --force to replace it")
