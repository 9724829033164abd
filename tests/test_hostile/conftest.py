"""The hostile-input corpus: the installed commands run as a user runs them, in a subprocess.

Every case asserts the exit status of the contract (0 ok, 1 check failed, 2 bad input, 3 environment,
130 Ctrl-C) and, for a failure, exactly one ``error: ...`` line on stderr and no traceback. Helpers
(``cli``, ``assert_one_error``, ``start_stalled_save``) are in ``hostile.py`` (``from hostile import ...``).

Fixtures:

- ``tiny_caffe``: a small DeepLab-ResNet MSC caffemodel + prototxt (official topology, seeded weights).
- ``run_on_tmpfs(argv, size, mount_dir, read_only=False)``: run ``argv`` with a real, tiny tmpfs
  mounted at ``mount_dir`` inside a private mount namespace (``unshare -rm``: no root, nothing left
  mounted); returns ``(CompletedProcess, names left in mount_dir)``. Skips where the kernel refuses
  unprivileged mount namespaces (``tmpfs_available`` is False); the failing-writer cases still run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from deeplab_caffe import models
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab


def pytest_configure(config):
    """A test run started as a background job (``make test &`` in a script) inherits SIGINT
    ignored, and so would every command these tests start: the Ctrl-C cases would then time out
    or see the command finish. Give the run Python's SIGINT handler back, so the commands start
    with SIGINT's default action, as under a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_caffe(tmp_path_factory):
    """A small DeepLab-ResNet MSC (21 classes) as a binary caffemodel and its prototxt."""
    config = models.default_config(21, n_blocks=(1, 1, 2, 1), aspp_rates=(2, 4, 6, 8), msc=True, stem_channels=8)
    return make_synthetic_deeplab(tmp_path_factory.mktemp("tiny_caffe"), config, seed=3)


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tempfile.mkdtemp(prefix="tmpfs-probe-")
    try:
        return subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", probe],
                              capture_output=True).returncode == 0
    finally:
        os.rmdir(probe)


@pytest.fixture(scope="session")
def tmpfs_available() -> bool:
    return _can_mount_tmpfs()


@pytest.fixture
def run_on_tmpfs(tmpfs_available):
    """Run a command with a real tiny tmpfs (full disk, or read-only) at a folder; see the module docstring."""
    if not tmpfs_available:
        pytest.skip("this kernel refuses unprivileged mount namespaces (unshare -rm); the failing-writer "
                    "cases cover the same code")

    def run(argv: list[str], size: str, mount_dir: Path, read_only: bool = False, cwd: Path | None = None):
        mount_dir.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        script = 'mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; shift 2; "$@" >/dev/null; echo "rc=$?"; ls -A "$MOUNT_DIR"'
        result = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", options, str(mount_dir), *argv],
                                capture_output=True, text=True, cwd=cwd, timeout=300,
                                env={**os.environ, "MOUNT_DIR": str(mount_dir)})
        assert result.returncode == 0 and result.stdout.startswith("rc="), result.stderr
        lines = result.stdout.splitlines()
        return subprocess.CompletedProcess(argv, int(lines[0][3:]), "", result.stderr), lines[1:]

    return run
