"""The house rules, read from the source with ``ast`` (nothing is imported): functions fit on a
screen, the packages import each other without cycles and only in the allowed directions, and
no module outside ``parity.commands`` imports a command module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("caffe_proto", "converter", "models", "parity")
#: the one installed namespace: repository folder ``models/`` is imported as ``deeplab_caffe.models``
NAMESPACE = "deeplab_caffe"
GENERATED = {"caffe_proto/caffe_pb2.py"}
MAX_FUNCTION_LINES = 80
#: package -> top-level packages it must not import (docs: DESIGN.md, "Boundaries")
FORBIDDEN = {"models": {"converter", "parity"}, "converter": {"parity"}, "caffe_proto": {"converter", "models", "parity"}}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in GENERATED:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The repository modules ``name`` imports (anywhere in the file), each as the most specific
    module that exists: ``from parity.train import distributed`` -> ``parity.train.distributed``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            target = target.removeprefix(f"{NAMESPACE}.")
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _functions():
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(ROOT)} {node.name}", node.end_lineno - node.lineno + 1


def test_the_layout_is_found() -> None:
    assert {"parity.train.loop", "parity.evaluation.evaluate", "parity.suite.runner", "parity.data.datasets",
            "parity.commands.parity", "converter.mapping", "models.deeplab_v2"} <= set(MODULES)


def test_no_function_is_longer_than_a_screen() -> None:
    long = sorted((lines, where) for where, lines in _functions()
                  if lines > MAX_FUNCTION_LINES)
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def _bare_imports(path: Path) -> list[str]:
    """Imports of a repository package by its folder name (``import models``), which resolve to
    whatever ``models`` is first on ``sys.path``, not to this project."""
    bare = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        bare += [name for name in names if name.split(".")[0] in PACKAGES]
    return bare


def test_everything_imports_through_the_one_namespace() -> None:
    files = [*MODULES.values(), *(ROOT / "scripts").glob("*.py"), *(ROOT / "tests").rglob("*.py"),
             *ROOT.glob("*.py")]
    wrong = sorted((str(path.relative_to(ROOT)), name) for path in files for name in _bare_imports(path))
    assert not wrong, f"imports that bypass {NAMESPACE}: {wrong}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_boundaries(package: str) -> None:
    wrong = sorted((name, target) for name, targets in GRAPH.items() if name.split(".")[0] == package
                   for target in targets if target.split(".")[0] in FORBIDDEN[package])
    assert not wrong, f"{package} imports what it must not: {wrong}"


def test_only_commands_import_commands() -> None:
    wrong = sorted((name, target) for name, targets in GRAPH.items()
                   if not name.startswith("parity.commands")
                   for target in targets if target.startswith("parity.commands")
                   or target == "converter.cli")
    assert not wrong, f"command modules imported by library code: {wrong}"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py") if not p.name.startswith("_")))
def test_every_script_imports_and_answers_help(script: str) -> None:
    """Scripts are not imported by the library, so a moved module would break them silently."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
    assert "usage:" in result.stdout
