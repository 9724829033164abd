"""The exit-code contract for the parity commands, re-exported from ``converter.errors``.

``ContractCommand``/``ContractGroup`` turn any exception into one ``error: ...`` line and the contract's
exit status (``--debug`` adds the traceback); ``fail`` ends a command with a message of its own.
"""

from __future__ import annotations

from typing import NoReturn

import click

from deeplab_caffe.converter.errors import (  # noqa: F401  (the contract, re-exported for the commands)
    EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_OK, EXIT_STATUS_HELP, ContractCommand,
    ContractGroup, exit_status_of, one_line, report_failure)

def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad input or usage)."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)
