"""Memory bounds for the hostile-input corpus: run a command under an address-space limit.

- ``vm_peak(command, *args)``: the peak virtual memory (bytes, ``VmPeak``) of a good run of an
  installed command: the console script is run by this interpreter with an exit hook that reads
  ``/proc/self/status``, so the figure is that of the command's own process.
- ``run_limited(limit, command, *args)``: run the installed command with ``RLIMIT_AS`` set to
  ``limit`` bytes in the child (``preexec_fn``); returns ``CompletedProcess``.

Why ``RLIMIT_AS`` at the good run's ``VmPeak`` + 1 GiB: torch maps a few GB of address space it
never touches (libraries, thread stacks, allocator arenas), so an absolute cap would measure torch,
not the file. ``VmPeak`` of a good run over the same kind of input includes all of that; a
malformed file that makes the command allocate more than 1 GiB beyond it fails the allocation
(``MemoryError`` / torch's "can't allocate memory"), which the test sees as an internal error
(exit 1) instead of the one-line exit 2 it asserts. ``RLIMIT_AS`` counts every mapping, so no
large allocation escapes it (``RLIMIT_DATA`` would miss file-backed and shared ones). The limit
is checked by the kernel at allocation time: no timer, no sampling.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from hostile import command_path

#: how much above a good run's peak a malformed file may take the command (the issue's bound)
HEADROOM = 1 << 30

_MEASURE = """
import atexit, runpy, sys
out, script = sys.argv[1], sys.argv[2]

def _peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmPeak:"))
    with open(out, "w") as f:
        f.write(kib)

atexit.register(_peak)
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def vm_peak(command: str, *args: str, cwd: str | Path | None = None) -> int:
    """``VmPeak`` (bytes) of a run of ``command args`` that must succeed (exit 0)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "vmpeak"
        result = subprocess.run([sys.executable, "-c", _MEASURE, str(out), command_path(command), *map(str, args)],
                                cwd=cwd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"the baseline run of {command} failed:\n{result.stderr[-3000:]}"
        return int(out.read_text()) * 1024


def run_limited(limit: int, command: str, *args: str, cwd: str | Path | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed ``command`` with its address space limited to ``limit`` bytes."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([command_path(command), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, env=dict(os.environ))
