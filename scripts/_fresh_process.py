"""For the benchmarks: run measuring code in a fresh Python process and read its JSON result.

A fresh process per measurement keeps each one's peak memory and start-up its own.
"""

from __future__ import annotations

import json
import subprocess
import sys


def run_fresh(code: str, *args: str, what: str) -> dict:
    """Run ``python -c code args...``; return the JSON object its last stdout line holds, or exit
    naming ``what`` with the end of its stderr."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{what} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
