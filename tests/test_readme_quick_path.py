"""The README's "First steps" block, run line by line in a fresh clone, in the order written.

The clone is ``git clone`` of this checkout (committed files only, as a new user gets them); its
``.venv`` is this test's own environment (linked, so ``make demo`` finds it set up instead of
installing from the network). Each line's exit status must be 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- quick-path:"


def quick_path_lines(readme: str) -> list[str]:
    """The shell lines of the fenced block after the quick-path marker, comments removed."""
    after = readme[readme.index(MARKER):]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block is not None, "no ```bash block after the quick-path marker"
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_the_quick_path_block_is_what_a_reader_sees():
    lines = quick_path_lines((ROOT / "README.md").read_text(encoding="utf-8"))
    assert lines[0] == "make demo" and lines[1] == "source .venv/bin/activate"
    assert all(not line.startswith("#") for line in lines) and len(lines) == 6


@pytest.mark.slow
def test_every_readme_quick_path_command_succeeds_in_a_fresh_clone(tmp_path):
    venv = Path(sys.prefix)
    if not (venv / ".installed").is_file() or shutil.which("git") is None or shutil.which("make") is None:
        pytest.fail(f"needs git, make and the environment `make setup` made ({venv}/.installed)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(venv)
    os.utime(clone / "pyproject.toml", (0, 0))  # older than .venv/.installed: make sees the set-up done
    lines = quick_path_lines((clone / "README.md").read_text(encoding="utf-8"))
    script = "\n".join(f"{line}\necho \"quick-path-status $?\"" for line in lines)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DEEPLAB_", "GITHUB_", "VIRTUAL_ENV")) and k != "COLUMNS"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != venv / "bin")
    done = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=3600)
    statuses = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("quick-path-status ")]
    report = "\n".join(f"{code}  {line}" for code, line in zip(statuses, lines))
    assert statuses == [0] * len(lines), f"{report}\n--- stderr tail:\n{done.stderr[-3000:]}"
    assert (clone / "out" / "parity" / "class_iou.png").is_file() and (clone / "out" / "history.png").is_file()
    assert (clone / "runs" / "shapes" / "model.pth").is_file()
