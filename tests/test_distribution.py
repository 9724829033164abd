"""How users get the project: ``torch.hub.load`` from a clone (installed or not), and a plain
``pip install`` of a fresh copy beside a user's own ``models.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe import models
from deeplab_caffe.converter.cli import main as convert_main
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab
from deeplab_caffe.models import load_checkpoint, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone would have them (tracked and new, not ignored:
    no ``.venv``, no egg-info), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _python_without_the_project(code: str, cwd: Path, extra_path: list[Path] = ()) -> dict:
    """Run ``code`` under ``python -S`` with only the dependencies' folders on the path (the
    editable install's finder is never activated); it prints one JSON line, returned here."""
    deps = [p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, [*extra_path, *deps])))
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by ``deeplab-convert`` from a synthetic DeepLab caffemodel."""
    folder = tmp_path_factory.mktemp("convert")
    config = models.default_config(5, n_blocks=(1, 1, 2, 1), aspp_rates=(2, 4), stem_channels=8)
    synthetic = make_synthetic_deeplab(folder, config, seed=7)
    out = folder / "tiny.pth"
    result = CliRunner().invoke(convert_main, ["--caffemodel", str(synthetic.caffemodel_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_torch_hub_loads_a_converted_checkpoint(converted: Path) -> None:
    model = torch.hub.load(str(ROOT), "deeplabv2_resnet101", source="local", checkpoint=str(converted))
    state, config, _ = read_checkpoint(converted)
    assert not model.training and model.config == config
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        assert torch.equal(model(x), load_checkpoint(converted)(x))


def test_torch_hub_needs_a_checkpoint_to_be_pretrained() -> None:
    with pytest.raises(ValueError, match="nothing is downloaded; convert the official weights"):
        torch.hub.load(str(ROOT), "deeplabv2_resnet101", source="local", pretrained=True)


def test_torch_hub_works_from_a_clone_that_is_not_installed(converted: Path, tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "deeplab-caffe")
    expected = read_checkpoint(converted)[0]
    torch.save(expected, tmp_path / "expected.pth")
    code = f"""
import importlib.util, json, torch
installed = importlib.util.find_spec("deeplab_caffe") is not None
model = torch.hub.load({str(clone)!r}, "deeplabv2_resnet101", source="local", checkpoint={str(converted)!r})
expected = torch.load({str(tmp_path / "expected.pth")!r}, weights_only=True)
import deeplab_caffe.models
print(json.dumps({{"installed_before": installed, "models_file": deeplab_caffe.models.__file__,
    "same": model.state_dict().keys() == expected.keys()
            and all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)}}))
"""
    seen = _python_without_the_project(code, cwd=tmp_path)
    assert seen == {"installed_before": False, "models_file": str(clone / "models" / "__init__.py"),
                    "same": True}


@pytest.mark.slow
def test_pip_install_beside_a_users_models_py_keeps_both_importable(converted: Path, tmp_path: Path) -> None:
    user = tmp_path / "research"
    clone = fresh_copy(user / "deeplab-caffe")
    (user / "models.py").write_text("def load_checkpoint(path):\n    return 'the user own models.py'\n")
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                          "--no-build-isolation", "--disable-pip-version-check", "--target", str(target),
                          str(clone)], cwd=user, capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    # nothing generic in site-packages: one package, its metadata and the console scripts
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "deeplab_caffe"]
    assert sorted(p.name for p in (target / "bin").iterdir()) == [
        "deeplab-convert", "deeplab-demo", "deeplab-export", "deeplab-parity", "deeplab-train"]
    code = f"""
import json, models
from deeplab_caffe.models import load_checkpoint
import deeplab_caffe.models, deeplab_caffe.parity.commands.train
from deeplab_caffe.parity.train.config import load_config  # package data: the shipped YAML
model = load_checkpoint({str(converted)!r})
print(json.dumps({{"user": models.load_checkpoint("x"), "user_file": models.__file__,
                   "ours": deeplab_caffe.models.__file__, "classes": model.config["n_classes"],
                   "recipe": load_config("shapes")["name"]}}))
"""
    seen = _python_without_the_project(code, cwd=user, extra_path=[target])
    assert seen == {"user": "the user own models.py", "user_file": str(user / "models.py"),
                    "ours": str(target / "deeplab_caffe" / "models" / "__init__.py"), "classes": 5,
                    "recipe": "deeplab_v2_shapes_smoke"}
