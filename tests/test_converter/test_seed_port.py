"""The seed port's (deeplab-pytorch) checkpoints: converted with every key accounted for, the converted
model matching an independent re-implementation of the port's forward (``tests/seed_port_reference``)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe import models
from deeplab_caffe.converter.cli import main
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.foreign import FORMATS, export_state_dict, import_checkpoint
from seed_port_reference import seeded_port_model

SEED_PORT = FORMATS["deeplab-pytorch"]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    """The reference model and the .pth it saved (as the port saves: a plain state_dict)."""
    model = seeded_port_model(n_classes=5, n_blocks=(1, 4, 2, 1), width=4)
    path = tmp_path_factory.mktemp("port") / "deeplabv2_resnet101_msc-tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_every_key_is_mapped(port):
    model, path = port
    result = import_checkpoint(path, SEED_PORT)
    assert [r.key for r in result.records] == list(model.state_dict())
    assert {r.status for r in result.records} == {"mapped"}
    assert set(result.filled) == set(result.model.state_dict())
    assert result.filled["backbone.res3.b2.branch2b.bn.running_var"] == "base.layer3.block3.conv3x3.bn.running_var"
    assert result.filled["classifier.branches.3.bias"] == "base.aspp.c3.bias"
    config = result.config
    assert [len(s["blocks"]) for s in config["stages"]] == [1, 4, 2, 1]
    assert config["n_classes"] == 5 and config["msc"]["resize"] == "deeplab-pytorch"
    assert [b["dilation"] for b in config["classifier"]["branches"]] == [6, 12, 18, 24]


@pytest.mark.parametrize("size", [(67, 67), (81, 59)])
def test_converted_model_matches_the_port_forward(port, size):
    reference, path = port
    converted = import_checkpoint(path, SEED_PORT).model
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        ref, out = reference(x), converted(x)
        assert out.shape == ref.shape
        assert rel_error(out, ref) <= 1e-5
        assert rel_error(converted.base(x), reference.base(x)) <= 1e-5


def test_caffe_resize_is_not_the_port_protocol(port):
    """The resize option matters: the same weights under Caffe's Interp give another output."""
    reference, path = port
    result = import_checkpoint(path, SEED_PORT)
    caffe_config = json.loads(json.dumps(result.config))
    del caffe_config["msc"]["resize"]
    caffe_model = models.build_model(caffe_config, init=False)
    caffe_model.load_state_dict(result.state_dict)
    x = torch.randn(1, 3, 67, 67, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        assert rel_error(caffe_model.eval()(x), reference(x)) > 1e-3


def test_export_layout_loads_into_the_port_strictly(port):
    reference, path = port
    result = import_checkpoint(path, SEED_PORT)
    written = export_state_dict(result.model.state_dict(), SEED_PORT.mapping, result.model)
    fresh = seeded_port_model(n_classes=5, n_blocks=(1, 4, 2, 1), width=4, seed=5)
    fresh.load_state_dict(written, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in reference.state_dict().items())


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_writes_checkpoint_and_report(port, tmp_path):
    reference, path = port
    out = tmp_path / "port.pth"
    result = invoke("--from", "deeplab-pytorch", str(path), "--output", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "port.report.json").read_text())
    assert report["accounting"]["keys"] == report["accounting"]["mapped"] == len(reference.state_dict())
    assert report["accounting"]["unaccounted"] == 0 and report["source"]["format"] == "deeplab-pytorch"
    assert "| `base.aspp.c0.weight` | 5x128x3x3 | float32 | mapped | `classifier.branches.0.weight` |" in \
        (tmp_path / "port.report.md").read_text()
    model = models.load_checkpoint(out)
    assert model.metadata["source_format"] == "deeplab-pytorch"
    x = torch.randn(1, 3, 73, 73)
    with torch.no_grad():
        assert rel_error(model(x), reference(x)) <= 1e-5


def _edited(path, tmp_path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    out = tmp_path / "edited.pth"
    torch.save(state, out)
    return out


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s.pop("base.layer3.block2.conv3x3.conv.weight"),
     "missing key base.layer3.block2.conv3x3.conv.weight for the model's backbone.res3.b1.branch2b.conv.weight"),
    (lambda s: s.__setitem__("base.layer4.block1.increase.bn.weight", torch.ones(3)),
     "key base.layer4.block1.increase.bn.weight: shape (3,) but the model's backbone.res4.a.branch2c.bn.weight is (64,)"),
    (lambda s: s.__setitem__("base.fc.weight", torch.ones(3)), "key base.fc.weight: no deeplab-pytorch rule maps it"),
    (lambda s: s.pop("base.aspp.c3.weight"), "3 ASPP branches, the port's DeepLab v2 has 4"),
    (lambda s: s.__setitem__("epoch", 3), "key 'epoch' holds a int, not a tensor"),
])
def test_malformed_files_give_one_line_errors(port, tmp_path, edit, fragment):
    bad = _edited(port[1], tmp_path, edit)
    with pytest.raises(ConversionError, match="edited.pth: "):
        import_checkpoint(bad, SEED_PORT)
    result = invoke("--from", "deeplab-pytorch", str(bad), "--output", str(tmp_path / "out.pth"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], result.output
    assert fragment in lines[0]
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_not_a_checkpoint(tmp_path, content):
    bad = tmp_path / "bad.pth"
    if content is None:
        torch.save([torch.ones(2)], bad)
    else:
        bad.write_bytes(content)
    result = invoke("--from", "deeplab-pytorch", str(bad), "--output", str(tmp_path / "out.pth"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a"), result.output


@pytest.mark.parametrize("override, expected", [(None, "deeplab-pytorch"), ("caffe", "caffe")])
def test_eval_runs_the_port_protocol_unless_told_otherwise(tmp_path, override, expected):
    from deeplab_caffe.parity.commands.eval import eval_command

    path = tmp_path / "port4.pth"
    torch.save(seeded_port_model(n_classes=4, n_blocks=(1, 1, 1, 1), width=2).state_dict(), path)
    assert invoke("--from", "deeplab-pytorch", str(path), "--output", str(tmp_path / "ours.pth")).exit_code == 0
    args = ["--checkpoint", str(tmp_path / "ours.pth"), "--dataset", "shapes", "--max-images", "1", "--device", "cpu",
            "--output", str(tmp_path / "results.json"), "--no-progress"]
    result = CliRunner().invoke(eval_command, args + (["--msc-resize", override] if override else []))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "results.json").read_text())["msc_resize"] == expected
