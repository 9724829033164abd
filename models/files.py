"""Output files written whole or not at all, and what a killed run left behind.

A file is written to a hidden temporary ``.<name>.<random>.tmp`` in the target's folder, flushed
to disk, then renamed over the target, so a reader never sees half a file. A run killed with
``kill -9`` leaves only that hidden temporary behind; ``remove_stale_temps`` deletes it on the next
run. Write errors name the target, not the temporary (``OSError.filename``). Writers that need a
path rather than a handle (ONNX, TorchScript) use ``new_temp`` / ``publish``; intermediate files of
one output (``deeplab-convert --dataset synthetic``'s caffemodel) go to ``temporary_folder``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temp_path_pattern(path: str | Path) -> str:
    """The glob of the temporaries a write of ``path`` makes in ``path``'s folder."""
    return f".{Path(path).name}.*.tmp"


def remove_stale_temps(paths: Iterable[str | Path]) -> list[Path]:
    """Delete the temporaries (files, or folders from ``temporary_folder``) that killed writes of
    ``paths`` left behind; return those deleted."""
    removed = []
    for path in map(Path, paths):
        if path.parent.is_dir():
            for stale in path.parent.glob(temp_path_pattern(path)):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def new_temp(path: str | Path) -> tuple[int, Path]:
    """An open descriptor and the path of a new hidden temporary beside ``path`` (folder created if
    missing), named so that ``remove_stale_temps([path])`` finds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return fd, Path(tmp)


def publish(tmp: str | Path, path: str | Path) -> None:
    """Give a finished temporary ordinary permissions (mkstemp makes 0600) and rename it over ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def oserror_in(err: BaseException) -> OSError | None:
    """The first ``OSError`` in ``err``'s chain (itself, its cause or the exception it interrupted):
    torch's zip writer answers a failed write (disk full) with a ``RuntimeError`` raised while
    handling the ``OSError``."""
    seen: list[BaseException] = []
    while err is not None and all(err is not s for s in seen):
        if isinstance(err, OSError):
            return err
        seen.append(err)
        err = err.__cause__ or err.__context__
    return None


def naming(err: OSError, path: str | Path) -> OSError:
    """``err`` as an ``OSError`` naming ``path`` (the target, not the temporary that failed)."""
    return OSError(err.errno, err.strerror or str(err), str(path))


@contextmanager
def temporary_folder(path: str | Path) -> Iterator[Path]:
    """A hidden folder beside ``path`` for intermediate files of its write, removed when the block
    ends (however it ends); a killed run's folder goes with ``remove_stale_temps([path])``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle whose contents become ``path`` when the block ends without an error.

    The handle writes a hidden temporary in ``path``'s folder (created if missing); at the end it
    is flushed, fsynced and renamed over ``path``. On any error or Ctrl-C the temporary is removed;
    an ``OSError`` (disk full, permission) is re-raised naming ``path``, not the temporary. Writing
    through a Python file object also makes a full disk an ``OSError`` where torch's own file writer
    raises an opaque ``RuntimeError``.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = new_temp(path)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        publish(tmp, path)
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise naming(err, path) from err
    except BaseException:  # Ctrl-C, or the caller's own error: no temporary left
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` whole or not at all (``atomic_output``)."""
    with atomic_output(path) as handle:
        handle.write(payload)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """UTF-8 text version of ``write_bytes_atomic``."""
    return write_bytes_atomic(path, text.encode("utf-8"))
