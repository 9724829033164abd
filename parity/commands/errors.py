"""One-line errors for the parity commands: ``error: <problem>`` on stderr, exit status 2."""

from __future__ import annotations

from typing import NoReturn

import click

from deeplab_caffe.converter.errors import (  # noqa: F401  (the contract, re-exported for the commands)
    EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_OK)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad input or usage)."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


class OneLineErrorCommand(click.Command):
    """A click command whose usage errors (bad option values, unknown options) are one line, exit 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            ctx.exit(2)
