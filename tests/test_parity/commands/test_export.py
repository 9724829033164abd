"""deeplab-export: ONNX run by onnxruntime within 1e-4 of PyTorch at several sizes, TorchScript loaded
back, plain and seed-port state_dicts, atomic writes, --force, one-line errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe import models
from deeplab_caffe.converter import convert
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab
from deeplab_caffe.models.export import verification_input, write_atomic
from deeplab_caffe.parity.commands.export import main
import foreign_detectron2 as d2
from deeplab_caffe.converter.foreign.detectron2 import Detectron2Options, detectron2_format
from deeplab_caffe.converter.foreign.rules import import_checkpoint
from seed_port_reference import seeded_port_model


def converted_fixture(folder, config: dict, seed: int = 0):
    """A fixture caffemodel with the official graph (as the smoke suite writes it), converted."""
    synthetic = make_synthetic_deeplab(folder, config, seed=seed, msc_copies=False)
    conversion = convert(synthetic.caffemodel_path, synthetic.prototxt_path)
    path = folder / "converted.pth"
    models.save_checkpoint(path, conversion.state_dict, conversion.config, {"source": "fixture"})
    return path


#: the tests' small DeepLab-ResNet MSC: the official graph's layers, one block per stage
TINY = {"n_blocks": (1, 1, 1, 1), "aspp_rates": (2, 4, 6, 8), "msc": True, "stem_channels": 8}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return converted_fixture(tmp_path_factory.mktemp("tiny"), models.default_config(21, **TINY), seed=3)


def invoke(*args: str):
    """deeplab-export with ``args``; exceptions propagate (a traceback would fail the test)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def onnxruntime_matches(onnx_path, checkpoint, shapes) -> list[float]:
    """The file run by onnxruntime vs the checkpoint's PyTorch model; max relative error per shape."""
    model = models.load_checkpoint(checkpoint)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    errors = []
    for n, h, w in shapes:
        x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h * w)) * 60
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {"image": x.numpy()})[0]
        assert out.shape == ref.shape
        errors.append(float(np.abs(out - ref).max() / np.abs(ref).max()))
    return errors


def converted_port(reference, folder) -> None:
    """The reference port model saved as the port saves it (``port.pth``), converted to ``ours.pth``."""
    from deeplab_caffe.converter.cli import main as convert_main

    torch.save(reference.state_dict(), folder / "port.pth")
    args = ["--from", "deeplab-pytorch", str(folder / "port.pth"), "--output", str(folder / "ours.pth")]
    assert CliRunner().invoke(convert_main, args).exit_code == 0


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    result = invoke("--checkpoint", str(tiny), "--format", "onnx", "--output", str(out), "--check-sizes", "65x65,81x59")
    return out, result


def test_onnx_export_runs_in_onnxruntime_at_any_size(tiny, tiny_onnx):
    out, result = tiny_onnx
    assert result.exit_code == 0, result.output
    assert "onnxruntime vs PyTorch at 81x59" in result.output
    errors = onnxruntime_matches(out, tiny, [(1, 97, 75), (2, 67, 67), (1, 129, 161)])
    assert max(errors) <= 1e-4, errors


def test_onnx_resizes_with_aligned_corners_like_caffe(tiny_onnx):
    graph = onnx.load(str(tiny_onnx[0])).graph
    modes = {attr.s.decode() for node in graph.node if node.op_type == "Resize" for attr in node.attribute
             if attr.name == "coordinate_transformation_mode"}
    assert modes == {"align_corners"}
    assert not list(tiny_onnx[0].parent.glob(".*"))  # no temporary file left


@pytest.mark.slow
def test_smoke_fixture_exports_to_onnx_within_1e4(tmp_path):
    """The smoke suite's fixture (DeepLab-ResNet-101 MSC, 21 classes, seed 0) end to end."""
    checkpoint = converted_fixture(tmp_path, models.default_config(21, msc=True), seed=0)
    out = tmp_path / "smoke.onnx"
    result = invoke("--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(out),
                    "--check-sizes", "161x161,129x97")
    assert result.exit_code == 0, result.output
    errors = onnxruntime_matches(out, checkpoint, [(1, 161, 161), (1, 113, 145)])
    assert max(errors) <= 1e-4, errors


@pytest.mark.slow
def test_a_check_that_fails_writes_nothing(tiny, tmp_path):
    out = tmp_path / "strict.onnx"
    result = invoke("--checkpoint", str(tiny), "--format", "onnx", "--output", str(out), "--check-sizes", "65x65",
                    "--rtol", "0")
    assert result.exit_code == 1
    assert "FAILED" in result.output and "not written" in result.output
    assert list(tmp_path.iterdir()) == []


def test_torchscript_loads_back_and_follows_the_input_size(tiny, tmp_path):
    out = tmp_path / "tiny.pt"
    result = invoke("--checkpoint", str(tiny), "--format", "torchscript", "--output", str(out),
                    "--check-sizes", "65x65,81x59")
    assert result.exit_code == 0, result.output
    loaded, model = torch.jit.load(str(out)), models.load_checkpoint(tiny)
    x = verification_input((113, 97), seed=4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), rtol=0, atol=1e-5 * float(model(x).abs().max()))


def test_plain_state_dict(tiny, tmp_path):
    out = tmp_path / "weights.pth"
    assert invoke("--checkpoint", str(tiny), "--format", "state_dict", "--output", str(out)).exit_code == 0
    state, model = torch.load(out, weights_only=True), models.load_checkpoint(tiny)
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_seed_port_layout_loads_into_the_port_strictly(tmp_path):
    reference = seeded_port_model(n_classes=5, n_blocks=(1, 4, 2, 1), width=4)
    converted_port(reference, tmp_path)
    out = tmp_path / "back.pth"
    result = invoke("--checkpoint", str(tmp_path / "ours.pth"), "--format", "state_dict", "--layout", "deeplab-pytorch",
                    "--output", str(out))
    assert result.exit_code == 0, result.output
    port = seeded_port_model(n_classes=5, n_blocks=(1, 4, 2, 1), width=4, seed=9)
    port.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = verification_input((67, 67))
    with torch.no_grad():
        assert torch.equal(port(x), reference(x))


@pytest.mark.slow
def test_port_protocol_exports_to_onnx(tmp_path):
    """The seed port's MSC resize (scale_factor, align_corners=False) in ONNX, against the
    reference re-implementation of the port run in PyTorch."""
    reference = seeded_port_model(n_classes=4, n_blocks=(1, 1, 1, 1), width=2)
    converted_port(reference, tmp_path)
    out = tmp_path / "port.onnx"
    result = invoke("--checkpoint", str(tmp_path / "ours.pth"), "--format", "onnx", "--output", str(out),
                    "--check-sizes", "65x65,81x59")
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = verification_input((97, 75), seed=2)
    with torch.no_grad():
        ref = reference(x).numpy()
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_a_windowed_pooling_model_exports_at_the_sizes_it_accepts(tmp_path):
    """Detectron2's image pooling averages a fixed window (its train crop / 16: 32 x 64 for the
    published models) that must tile the features (inputs of 497 x 1009 to 512 x 1024, then
    1009 x 2033 ...). The export traces, bounds and checks sizes the window tiles; here a 320 x 400
    crop: a 20 x 25 window, which the default 321 x 321 does not fit: 305 x 385 (20 x 25 features)
    and 625 x 785 (40 x 50) instead."""
    options = Detectron2Options(train_crop=(320, 400))
    result = import_checkpoint(d2.write_pkl(tmp_path / "m.pkl", d2.random_state(1)), detectron2_format(options))
    checkpoint = models.save_checkpoint(tmp_path / "d2.pth", result.model, result.config, {})
    assert result.config["head"]["pooling_kernel"] == [20, 25]
    assert models.smallest_input_size(result.config) == (305, 385)
    out = tmp_path / "d2.onnx"
    exported = invoke("--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(out))
    assert exported.exit_code == 0, exported.output
    assert "at 305x385:" in exported.output and "at 625x785:" in exported.output
    assert max(onnxruntime_matches(out, checkpoint, [(2, 320, 400)])) <= 1e-4
    with pytest.raises(ValueError, match="image-pooling window"):  # the model itself refuses a smaller input
        with torch.no_grad():
            models.load_checkpoint(checkpoint)(verification_input((320, 384)))
    refused = invoke("--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(tmp_path / "x.onnx"),
                     "--check-sizes", "321x100")
    _one_line_error(refused, 2, "321x100", "305x385")
    assert not (tmp_path / "x.onnx").exists()


def _one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_existing_output_is_refused_without_force(tiny, tmp_path):
    out = tmp_path / "weights.pth"
    out.write_bytes(b"keep me")
    _one_line_error(invoke("--checkpoint", str(tiny), "--format", "state_dict", "--output", str(out)), 2,
                    f"{out}: exists (pass --force to replace it)")
    assert out.read_bytes() == b"keep me"
    assert invoke("--checkpoint", str(tiny), "--format", "state_dict", "--output", str(out), "--force").exit_code == 0
    assert isinstance(torch.load(out, weights_only=True), dict)


def test_caffe_model_does_not_fit_the_port_layout(tiny, tmp_path):
    result = invoke("--checkpoint", str(tiny), "--format", "state_dict", "--layout", "deeplab-pytorch", "--output",
                    str(tmp_path / "x.pth"))
    _one_line_error(result, 2, "the port's DeepLab v2 cannot hold this model: its classifier differs")
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--format", "onnx", "--check-sizes", "65"], "--check-sizes takes HxW pairs"),
    (["--format", "onnx", "--check-sizes", "17x17"], "below the smallest side"),
    (["--format", "onnx", "--layout", "deeplab-pytorch"], "--layout deeplab-pytorch applies to --format state_dict only"),
    (["--format", "pickle"], "Invalid value for '--format'"),
])
def test_bad_options_are_one_line(tiny, tmp_path, args, fragment):
    _one_line_error(invoke("--checkpoint", str(tiny), "--output", str(tmp_path / "o"), *args), 2, fragment)


def test_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    _one_line_error(invoke("--checkpoint", str(bad), "--format", "onnx", "--output", str(tmp_path / "o.onnx")), 2,
                    str(bad))


def test_write_atomic_keeps_nothing_when_the_check_fails(tmp_path):
    out = tmp_path / "file.bin"
    assert not write_atomic(out, lambda tmp: tmp.write_bytes(b"x"), lambda tmp: False)
    assert list(tmp_path.iterdir()) == []
    assert write_atomic(out, lambda tmp: tmp.write_bytes(b"x"), lambda tmp: tmp.read_bytes() == b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_onnx_export_reports_its_steps_and_no_notices_about_optional_packages(tiny_onnx):
    _, result = tiny_onnx  # CliRunner: stderr is not a terminal, so plain lines
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("export: onnx of ") and lines[0].endswith("at 65x65, 81x59 (3 steps)")
    assert any(line.startswith("export: step 3/3, elapsed ") for line in lines)
    assert "torchvision" not in result.output
