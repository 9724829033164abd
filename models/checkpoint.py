"""Checkpoints: a state_dict together with the model config and a metadata record.

Two formats, chosen by the file suffix:

* ``.pth``: ``torch.save({"state_dict": ..., "config": ..., "metadata": ...})``, read back
  with ``torch.load(weights_only=True)``;
* ``.safetensors``: the tensors, with ``config`` and ``metadata`` as JSON strings in the header
  metadata (keys ``"config"`` and ``"metadata"``).

Writes are atomic (temporary file in the target directory, then ``os.replace``). Every problem
with a file raises ``CheckpointError`` (a ``ValueError``) with a one-line message naming it; a
file that declares more than it holds (a zero-stride tensor, config or metadata of shared
lists; ``models.bounds``) is refused so before anything uses it.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bounds import FileBoundError, check_tree_size
from .build import build_model
from .config import validate_config
from .files import atomic_output

__all__ = ["CheckpointError", "save_checkpoint", "read_checkpoint", "load_checkpoint", "SUFFIXES"]

SUFFIXES = (".pth", ".safetensors")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, malformed or does not match its config."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# torch's weights-only refusal wraps its one fact in advice to retry unsafely; keep only the fact.
_UNPICKLER_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _torch_load_weights_only(path: Path, device: torch.device) -> Any:
    """``torch.load(weights_only=True)``; a pickle that needs code to run is refused in one line."""
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": noise on top of the error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike
        facts = [line.strip() for line in str(err).splitlines()
                 if line.strip() and not line.strip().startswith(_UNPICKLER_BOILERPLATE)]
        if isinstance(err, pickle.UnpicklingError) and any("GLOBAL" in fact for fact in facts):
            blocked = next(fact for fact in facts if "GLOBAL" in fact).rstrip(".")
            raise CheckpointError(f"{path}: refused: the pickle would import code ({blocked}); this project only "
                                  f"loads checkpoints of tensors and plain containers") from err
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            problem = "empty file"
        elif head == b"PK\x03\x04":  # a zip archive; torch's first sentence says what broke, the rest is advice
            problem = f"truncated or corrupt zip archive: {_one_line(err).split('. ')[0]}"
        else:
            problem = "not a file torch.save wrote: neither its zip archive nor its legacy pickle"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({problem})") from err


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported checkpoint suffix {path.suffix!r} (use .pth or .safetensors)"
        )
    return suffix


def _json_roundtrip(path: Path, what: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {what} is not JSON-serialisable ({_one_line(err)})") from err


def _check_state_dict(path: Path, model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Raise ``CheckpointError`` unless ``state_dict`` has exactly ``model``'s keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
        raise CheckpointError(f"{path}: state_dict does not match its config: " + ", ".join(parts))
    for key, ref in expected.items():
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: state_dict[{key!r}] has shape {tuple(value.shape)}, "
                f"its config needs {tuple(ref.shape)}"
            )


def _meta_model(path: Path, config: dict[str, Any]) -> nn.Module:
    """Build the config's model on the meta device (no memory, no initialisation cost)."""
    try:
        validate_config(config)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    with torch.device("meta"):
        return build_model(config, init=False)


def save_checkpoint(
    path: str | os.PathLike[str],
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    config: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model_or_state_dict`` with ``config`` and ``metadata`` to ``path`` atomically.

    The suffix picks the format (``.pth`` or ``.safetensors``; anything else raises
    ``CheckpointError``). The config is validated and the state_dict must match it (keys and
    shapes); ``config`` and ``metadata`` must be JSON-serialisable. Tensors are saved on the CPU.
    The parent directory must exist. Returns the path written.
    """
    path = Path(path)
    suffix = _suffix(path)
    config = _json_roundtrip(path, "config", config)
    metadata = _json_roundtrip(path, "metadata", {} if metadata is None else metadata)
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata must be a dict, got {type(metadata).__name__}")
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    else:
        state = model_or_state_dict
    _check_state_dict(path, _meta_model(path, config), state)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    parent = path.parent
    if not parent.is_dir():
        raise CheckpointError(f"{path}: cannot write checkpoint: directory {parent} does not exist")
    try:
        with atomic_output(path) as f:
            if suffix == ".pth":
                torch.save({"state_dict": tensors, "config": config, "metadata": metadata}, f)
            else:
                from safetensors.torch import save

                # safetensors refuses tensors that share memory; clone so any state_dict works.
                f.write(save({k: v.clone() for k, v in tensors.items()},
                             metadata={"config": json.dumps(config), "metadata": json.dumps(metadata)}))
    except (OSError, RuntimeError) as err:
        # torch's zip writer may answer a failed write (disk full) with a RuntimeError while closing
        cause = err if isinstance(err, OSError) else err.__context__
        if isinstance(cause, OSError):
            problem = OSError(cause.errno, cause.strerror) if cause.errno else cause  # the path is already named
            raise CheckpointError(f"{path}: cannot write checkpoint ({_one_line(problem)})") from cause
        raise
    return path


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read ``(state_dict, config, metadata)`` from a ``.pth`` or ``.safetensors`` checkpoint
    written by :func:`save_checkpoint`, tensors on ``map_location``. The config is validated and
    the state_dict comes in the model's key order; it is not checked against the config
    (``load_checkpoint`` does that)."""
    state_dict, config, metadata, _ = _read(Path(path), map_location)
    return state_dict, config, metadata


def _hint(payload: Mapping[str, Any]) -> str:
    """What a ``.pth`` without our entries probably is, and which file or command to use instead."""
    if "model" in payload and "iteration" in payload and "optimizer" in payload:
        return ("; it is a deeplab-train training checkpoint (latest.pth / checkpoint_<N>.pth): "
                "give the model.pth the run wrote beside it")
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return ("; it is a bare state_dict, e.g. another port's file: convert it first with "
                "`deeplab-convert --from deeplab-pytorch|detectron2|deeplabv3-pytorch FILE --output converted.pth`")
    return ""


def _read(path: Path, map_location: str | torch.device) -> tuple[dict[str, torch.Tensor], dict, dict, nn.Module]:
    """``read_checkpoint``'s work, also returning the meta-device model it built for the key order."""
    suffix = _suffix(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    device = torch.device(map_location)
    if suffix == ".pth":
        payload = _torch_load_weights_only(path, device)
        try:  # zero strides, shared lists: before any shape in it is read
            check_tree_size(path, "checkpoint", payload)
        except FileBoundError as err:
            raise CheckpointError(str(err)) from None
        if not isinstance(payload, dict):
            raise CheckpointError(f"{path}: not a checkpoint (holds a {type(payload).__name__}, not a dict)")
        for key in ("state_dict", "config", "metadata"):
            if key not in payload:
                raise CheckpointError(f"{path}: not a checkpoint (no {key!r} entry){_hint(payload)}")
        state_dict, config, metadata = payload["state_dict"], payload["config"], payload["metadata"]
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f"{path}: 'state_dict' is a {type(state_dict).__name__}, not a dict")
        state_dict = dict(state_dict)
    else:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                header = f.metadata() or {}
                # clone: owned, allocator-aligned memory (kernels may round differently on
                # the file's less-aligned buffers), so outputs equal the saved model's exactly
                state_dict = {k: f.get_tensor(k).clone() for k in f.keys()}
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(err)})") from err
        for key in ("config", "metadata"):
            if key not in header:
                raise CheckpointError(f"{path}: not a checkpoint (no {key!r} in the safetensors header)")
        try:
            config = json.loads(header["config"])
            metadata = json.loads(header["metadata"])
        except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: arrays nested too deep
            raise CheckpointError(
                f"{path}: header config/metadata is not valid JSON ({_one_line(err)})"
            ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: 'config' is a {type(config).__name__}, not a dict")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: 'metadata' is a {type(metadata).__name__}, not a dict")
    # Same key order for both formats (safetensors stores keys sorted): the model's order first.
    model = _meta_model(path, config)
    order = model.state_dict().keys()
    state_dict = {**{k: state_dict[k] for k in order if k in state_dict}, **state_dict}
    return state_dict, config, metadata, model


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights strictly.

    Returns the model (``DeepLabV2`` or ``MSC``) on ``map_location``, in eval mode, with
    ``.config`` and ``.metadata`` attributes. Raises ``CheckpointError`` naming the file.
    """
    path = Path(path)
    state_dict, config, metadata, model = _read(path, map_location)  # one meta-device build, no init
    _check_state_dict(path, model, state_dict)
    try:
        # assign=True adopts the loaded tensors (the model was built on the meta device);
        # requires_grad flags (frozen BatchNorm) stay the model's own.
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: state_dict does not load ({_one_line(err)})") from err
    model.eval()
    model.config = config
    model.metadata = metadata
    return model
