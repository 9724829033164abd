"""converter.foreign.rules: key templates, strict accounting, one-line errors, the inverse mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deeplab_caffe import models
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.foreign.rules import (ImportResult, KeyMapping, Rule, export_state_dict,
                                                   map_state_dict)
from deeplab_caffe.converter.report import import_report, write_report

# A toy layout with torchvision-like 0-based block numbers and an optimizer entry to account for.
TOY = KeyMapping(
    name="toy",
    rules=(
        Rule("stem.conv.weight", "backbone.stem.conv1.conv.weight"),
        Rule("stem.bn.{p}", "backbone.stem.conv1.bn.{p}"),
        Rule("layer{s}.{b:ordinal0}.{branch:branch1|branch2[abc]}.{leaf:conv|bn}.{p}",
             "backbone.res{s}.{b}.{branch}.{leaf}.{p}"),
        Rule("head.{i:\\d+}.{p:weight|bias}", "classifier.branches.{i}.{p}"),
    ),
    outside=((r"optimizer\..*", "optimizer state, not the model"),),
)


@pytest.fixture(scope="module")
def model():
    config = models.default_config(5, n_blocks=(1, 4, 1, 1), aspp_rates=(2, 4), stem_channels=4)
    torch.manual_seed(0)
    return models.build_model(config).eval()


def toy_layout(model) -> dict[str, np.ndarray]:
    """The toy layout written by hand, independently of the rules: blocks numbered 0, 1, ..."""
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[:2] == ["backbone", "stem"]:
            name = "stem." + ".".join(parts[3:])
        elif parts[0] == "backbone":
            stage = parts[1]
            block = list(getattr(model.backbone, stage).keys()).index(parts[2])
            name = f"layer{stage[3:]}.{block}." + ".".join(parts[3:])
        else:
            name = "head." + ".".join(parts[2:])
        out[name] = value.numpy().copy()
    return out


def test_every_key_is_mapped_and_the_model_loads(model):
    foreign = toy_layout(model) | {"optimizer.step": np.array(3)}
    state, records, filled = map_state_dict(foreign, TOY, model, "toy.pth")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert {r.status for r in records} == {"mapped", "outside"}
    assert [r.target for r in records if r.status == "outside"] == ["optimizer state, not the model"]
    assert filled["backbone.res3.b2.branch2b.conv.weight"] == "layer3.2.branch2b.conv.weight"


def test_block_numbers_resolve_to_caffe_block_ids(model):
    foreign = toy_layout(model)
    _, _, filled = map_state_dict(foreign, TOY, model, "toy.pth")
    assert filled["backbone.res3.b1.branch2a.conv.weight"] == "layer3.1.branch2a.conv.weight"
    assert filled["backbone.res2.a.branch1.bn.running_var"] == "layer2.0.branch1.bn.running_var"


def test_export_inverts_the_rules(model):
    foreign = toy_layout(model)
    written = export_state_dict(model.state_dict(), TOY, model)
    assert written.keys() == foreign.keys()
    assert all(np.array_equal(written[k].numpy(), v) for k, v in foreign.items())


def test_absent_bookkeeping_is_filled_with_zeros(model):
    foreign = {k: v for k, v in toy_layout(model).items() if not k.endswith("num_batches_tracked")}
    state, _, filled = map_state_dict(foreign, TOY, model, "toy.pth")
    assert int(state["backbone.stem.conv1.bn.num_batches_tracked"]) == 0
    assert filled["backbone.stem.conv1.bn.num_batches_tracked"].startswith("(absent")


@pytest.mark.parametrize("edit, fragments", [
    (lambda d: d.pop("layer3.2.branch2b.conv.weight"),
     ["toy.pth: missing key layer3.2.branch2b.conv.weight for the model's backbone.res3.b2.branch2b.conv.weight"]),
    (lambda d: d.__setitem__("layer2.0.branch2a.conv.weight", np.zeros((4, 4, 3, 3), np.float32)),
     ["toy.pth: key layer2.0.branch2a.conv.weight: shape (4, 4, 3, 3) but the model's", "is (4, 4, 1, 1)"]),
    (lambda d: d.__setitem__("fc.weight", np.zeros(3, np.float32)), ["key fc.weight: no toy rule maps it"]),
    (lambda d: d.__setitem__("layer3.7.branch2a.conv.weight", np.zeros(3, np.float32)),
     ["key layer3.7.branch2a.conv.weight: its block number is beyond the model's blocks"]),
    (lambda d: d.__setitem__("head.0.weight", np.full(d["head.0.weight"].shape, np.nan, np.float32)),
     ["key head.0.weight", "NaN or Inf"]),
    (lambda d: d.__setitem__("head.1.bias", "five"), ["key head.1.bias holds a str"]),
])
def test_bad_files_give_one_line_errors_naming_the_key(model, edit, fragments):
    foreign = toy_layout(model)
    edit(foreign)
    with pytest.raises(ConversionError) as err:
        map_state_dict(foreign, TOY, model, "toy.pth")
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_two_keys_filling_one_tensor_are_refused(model):
    twice = KeyMapping("twice", TOY.rules + (Rule("copy.{p}", "backbone.stem.conv1.bn.{p}"),))
    foreign = toy_layout(model) | {"copy.bias": toy_layout(model)["stem.bn.bias"]}
    with pytest.raises(ConversionError, match="key copy.bias maps to backbone.stem.conv1.bn.bias, already filled from "
                                              "stem.bn.bias"):
        map_state_dict(foreign, twice, model, "toy.pth")


def test_templates_must_name_the_same_fields(model):
    with pytest.raises(ValueError, match="name different fields"):
        map_state_dict({}, KeyMapping("bad", (Rule("a.{x}", "b.{y}"),)), model, "toy.pth")


def test_the_report_accounts_for_every_key(model, tmp_path):
    source = tmp_path / "toy.pth"
    torch.save({}, source)
    foreign = toy_layout(model) | {"optimizer.step": np.array(3)}
    state, records, filled = map_state_dict(foreign, TOY, model, source)
    result = ImportResult("toy", source, "0" * 64, model, model.config, state, records, filled, notes=["a convention"])
    report = import_report(result)
    assert report["accounting"]["keys"] == len(foreign) == report["accounting"]["mapped"] + 1
    assert report["accounting"]["pytorch_tensors"] == len(model.state_dict())
    write_report(report, tmp_path / "r.json", tmp_path / "r.md")
    assert json.loads((tmp_path / "r.json").read_text())["kind"] == "foreign-import"
    markdown = (tmp_path / "r.md").read_text()
    assert "| `optimizer.step` | scalar | int64 | outside | `optimizer state, not the model` |" in markdown
    assert "- a convention" in markdown
