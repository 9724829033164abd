"""Helpers of the hostile-input corpus (``tests/test_hostile``); its fixtures are in ``conftest.py``.

- ``cli(command, *args, cwd=..., env=..., timeout=...)``: run an installed console script
  (``deeplab-convert``, ``deeplab-parity``, ...) beside this interpreter; returns ``CompletedProcess``.
- ``assert_one_error(result, status, *fragments)``: the exit status, one stderr line holding the fragments.
- ``start_stalled_save(cwd, args, flag)``: start ``deeplab-convert`` whose checkpoint save writes a
  few bytes and then waits, so a test can kill or interrupt it mid-save once ``flag`` exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def command_path(command: str) -> str:
    """The installed console script ``command`` of this interpreter's environment."""
    path = BIN / command
    if not path.is_file():
        pytest.fail(f"{path} is not installed: pip install -e . in this environment", pytrace=False)
    return str(path)


def cli(command: str, *args: str, cwd: str | Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an installed command with ``args``; stdout and stderr captured as text."""
    return subprocess.run([command_path(command), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The non-blank lines the command wrote on stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_error(result: subprocess.CompletedProcess, status: int, *fragments: str) -> str:
    """``result`` exited with ``status`` and wrote one ``error: ...`` line holding every fragment; returns it."""
    lines = stderr_lines(result)
    assert result.returncode == status, f"exit {result.returncode}, expected {status}; stderr:\n{result.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


STALLED_SAVE = textwrap.dedent("""
    import sys, time, torch
    flag = sys.argv.pop(1)

    def stalled_save(obj, f, *args, **kwargs):  # half a checkpoint on disk, then a long write
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        open(flag, "w").close()
        time.sleep(120)

    torch.save = stalled_save
    from deeplab_caffe.converter.cli import main
    sys.argv[0] = "deeplab-convert"
    main()
""")


def start_stalled_save(cwd: Path, args: list[str], flag: Path) -> subprocess.Popen:
    """Start ``deeplab-convert args`` whose checkpoint write stalls after a few bytes; wait until it does."""
    proc = subprocess.Popen([sys.executable, "-c", STALLED_SAVE, str(flag), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"deeplab-convert did not reach its checkpoint save: {err[-2000:]}")
        time.sleep(0.1)
    return proc
