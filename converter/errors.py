"""Errors and the exit-code contract every command follows, with the one wrapper that applies it.

Commands are click commands made with ``cls=ContractCommand`` (or groups with ``cls=ContractGroup``,
whose subcommands get ``ContractCommand``). Any exception a command raises becomes one line on stderr,
``error: <file>: <problem>``, and the exit status of the contract below; ``--debug`` prints the
traceback first. An exception class states its status with a class attribute ``exit_status``
(``ConversionError``, ``models.CheckpointError`` and the parity errors say 2); an ``OSError`` anywhere
in an exception's cause chain with errno ENOSPC/EDQUOT/EACCES/EPERM/EROFS makes it 3, whatever
wrapped it. ``exit_status_of`` and ``one_line`` are the plain functions under the click classes.
"""

from __future__ import annotations

import errno
import sys
import traceback
from pathlib import Path
from typing import Any

import click


class ConversionError(Exception):
    """A Caffe file that cannot be read or mapped; ``str(err)`` is ``"<file>: <problem>"``."""

    exit_status = 2  # bad input (the contract's EXIT_BAD_INPUT)

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class CaffeFileError(ConversionError):
    """The file itself is unusable (missing, truncated, not a caffemodel/prototxt), as opposed to a
    readable file the converter could not map; the parity suite reports it as bad input, not a failed port."""


#: The exit-code contract every command (deeplab-convert, -parity, -train, -demo) follows and
#: documents in its ``--help``: one line on stderr for every failure, never a traceback.
EXIT_OK = 0  #: success
EXIT_CHECK_FAILED = 1  #: a check, a parity row or a regression comparison failed (also: an internal error)
EXIT_BAD_INPUT = 2  #: bad input or usage: a missing or malformed file, option or report
EXIT_ENVIRONMENT = 3  #: the environment failed: disk full, quota, permission denied, read-only file system
EXIT_INTERRUPTED = 130  #: Ctrl-C (SIGINT), as shells report it
EXIT_TERMINATED = 143  #: SIGTERM (preemption: Slurm, Kubernetes, cloud), as shells report it

#: errno values that are the machine's fault, not the input's: exit status 3.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})

#: The ``--help`` epilog of every command (``\b`` keeps click from rewrapping it).
EXIT_STATUS_HELP = (
    "\b\nExit status: 0 ok; 1 a check or regression failed; 2 bad input or usage;\n"
    "3 environment (disk full, permission denied, read-only file system);\n"
    "130 interrupted (Ctrl-C). Every failure is one line on stderr,\n"
    "'error: <file>: <problem>'; --debug adds the traceback."
)


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    while err is not None and all(err is not s for s in seen):
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _environment_error(err: BaseException) -> OSError | None:
    return next((e for e in _chain(err) if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS), None)


def exit_status_of(err: BaseException) -> int:
    """The contract's exit status for an exception that ended a command."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if _environment_error(err) is not None:
        return EXIT_ENVIRONMENT
    status = getattr(err, "exit_status", None)
    if isinstance(status, int):
        return status
    if isinstance(err, OSError):  # no such file, a folder where a file was expected: a path the user gave
        return EXIT_BAD_INPUT
    return EXIT_CHECK_FAILED  # an unexpected exception: a failure, not the input's fault


def _oserror_line(err: OSError) -> str:
    names = [str(n) for n in (err.filename, err.filename2) if n is not None]
    return ": ".join([*names, err.strerror or str(err)])


def one_line(err: BaseException, debug: bool = False) -> str:
    """The one-line message for ``err`` (without the ``error: `` prefix); ``debug``: the traceback was shown."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(err, OSError) and err.strerror:
        return _oserror_line(err)
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    if getattr(err, "exit_status", None) is not None or isinstance(err, OSError):
        return text or type(err).__name__  # our own errors name the file themselves
    env = _environment_error(err)
    if env is not None:
        return _oserror_line(env)
    hint = "" if debug else "; --debug shows the traceback"
    return f"internal error ({type(err).__name__}{': ' + text if text else ''}){hint}"


def report_failure(err: BaseException, debug: bool = False) -> int:
    """Print ``error: <one line>`` on stderr (after the traceback when ``debug``); return the exit status."""
    if debug:
        traceback.print_exception(err)
    click.echo(f"error: {one_line(err, debug)}", err=True)
    return exit_status_of(err)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta["deeplab_debug"] = True


class _Contract:
    """What ``ContractCommand`` and ``ContractGroup`` share: ``-h``, ``--debug``, the epilog, the wrapper."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = kwargs.setdefault("context_settings", {})
        settings.setdefault("help_option_names", ["-h", "--help"])
        kwargs.setdefault("epilog", EXIT_STATUS_HELP)
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, callback=_set_debug,
                                        help="On failure, print the traceback before the one-line error."))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except BaseException as err:  # noqa: BLE001  (the wrapper: every failure becomes one line)
            raise click.exceptions.Exit(report_failure(err, ctx.meta.get("deeplab_debug", False))) from None

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        """Run the command; exit with its status (``standalone_mode=False``: return the status instead)."""
        standalone = extra.pop("standalone_mode", True)
        try:
            status = super().main(args, prog_name, standalone_mode=False, **extra)
            status = status if isinstance(status, int) else EXIT_OK
        except click.ClickException as exc:  # usage errors: one line, not click's four
            click.echo(f"error: {exc.format_message()}", err=True)
            status = EXIT_BAD_INPUT if isinstance(exc, click.UsageError) else exc.exit_code
        except click.Abort:  # Ctrl-C while click parsed the command line
            click.echo("error: interrupted (Ctrl-C)", err=True)
            status = EXIT_INTERRUPTED
        if not standalone:
            return status
        sys.exit(status)


class ContractCommand(_Contract, click.Command):
    """A click command that follows the exit-code contract (see the module docstring)."""


class ContractGroup(_Contract, click.Group):
    """A click group that follows the contract; its ``@group.command`` subcommands are ``ContractCommand``."""

    command_class = ContractCommand
