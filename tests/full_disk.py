"""A real full disk for the hostile tests: a small tmpfs, filled to the last byte.

Mounting needs root (CAP_SYS_ADMIN); where the mount is refused the caller skips with that
reason, and the failing-writer variant of the same test (``OSError(ENOSPC)`` raised by
``os.fsync``) still runs.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def full_tmpfs(mount_point: Path, size: str = "256k") -> Iterator[Path | None]:
    """Mount a ``size`` tmpfs at ``mount_point``, fill it with ``filler.bin`` until the kernel
    says ENOSPC, and yield ``mount_point`` (``None`` when the mount is refused); unmounted after."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                             capture_output=True).returncode == 0
    if not mounted:
        yield None
        return
    try:
        with open(mount_point / "filler.bin", "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def enospc(*_args: object, **_kwargs: object) -> None:
    """A stand-in for ``os.fsync`` that fails as a full disk does."""
    raise OSError(errno.ENOSPC, "No space left on device")
