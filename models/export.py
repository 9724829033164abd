"""Deployment formats: ONNX (dynamic batch, height and width, MSC included), TorchScript, a plain
state_dict; each written atomically and, for ONNX and TorchScript, checked against the PyTorch
model before it is put in place.

* ONNX: ``torch.onnx.export(dynamo=True)`` at opset ``ONNX_OPSET``. Caffe's ``Interp`` is
  bilinear with aligned corners; ONNX ``Resize`` has ``coordinate_transformation_mode =
  "align_corners"`` from opset 11 (opset 10 only resizes asymmetrically, which is not Caffe's
  arithmetic), so every opset the exporter offers (18 and later) resizes exactly. The MSC
  pyramid sizes (``models.interp.interp_length``) are computed in the graph from the input's
  shape, so one file serves every input size. Checked with onnxruntime (``check_onnx``).
* TorchScript: ``torch.jit.trace``; the traced sizes stay symbolic. Checked by loading the
  file back (``check_torchscript``).
* state_dict: ``torch.save`` of ``{key: tensor}`` only (no config, no metadata).

Input of every format: float32 ``N x 3 x H x W``, BGR 0-255 minus the mean; output: the model's
logits (``N x n_classes x h x w``, the MSC max-fused map for an MSC model).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplab_caffe.models.files import naming, new_temp, oserror_in, publish

__all__ = ["ONNX_OPSET", "FORMATS", "ExportError", "OutputCheck", "write_atomic", "export_onnx", "export_torchscript",
           "save_state_dict", "check_onnx", "check_torchscript", "verification_input"]

#: Resize with align_corners exists from opset 11; the dynamo exporter's first opset is 18
ONNX_OPSET = 18
FORMATS = ("onnx", "torchscript", "state_dict")
#: smallest input side the exported ONNX graph accepts (the stem, pool and the 0.5x pyramid stay non-empty)
MIN_SIDE = 33


class ExportError(RuntimeError):
    """The exporter (``torch.onnx.export`` / ``torch.jit.trace``) failed; one line saying why."""


def _one_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


@dataclass(frozen=True)
class OutputCheck:
    """One input size run through the exported file and through PyTorch: ``max_rel`` is
    max|exported - pytorch| / max|pytorch| of the logits."""

    size: tuple[int, int]
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool

    def to_dict(self) -> dict:
        return {"size": list(self.size), "shape": list(self.shape), "max_abs": self.max_abs,
                "max_rel": self.max_rel, "ok": self.ok}


def write_atomic(path: str | Path, write: Callable[[Path], None], check: Callable[[Path], bool] | None = None) -> bool:
    """Call ``write(tmp)`` on a hidden temporary beside ``path`` (``models.files.new_temp``: the name
    ``remove_stale_temps`` finds after a killed run), then ``check(tmp)``; rename it to ``path`` only
    when the check passes (or there is none). Returns whether it did; the temporary never stays
    behind. A failed write (disk full, permission), even one the writer wrapped in its own error,
    is an ``OSError`` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = new_temp(path)
        os.close(fd)
        write(tmp)
        if check is not None and not check(tmp):
            return False
        publish(tmp, path)
        return True
    except Exception as err:
        cause = oserror_in(err)
        if cause is not None:
            raise naming(cause, path) from err
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}.data").unlink(missing_ok=True)  # ONNX external data, if the exporter wrote any


def verification_input(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A seeded ``1 x 3 x H x W`` input in the models' range (0-255 minus a mean: -128..128)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, *size, generator=generator) * 256 - 128


def check_opset(opset: int) -> None:
    """Raise ``ValueError`` (bad input) for an opset below ``ONNX_OPSET`` or above the newest the
    installed ``onnx`` knows, before anything is exported: the exporter would otherwise keep
    opset 18 with a traceback on stderr and the file would claim nothing it holds."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not ONNX_OPSET <= opset <= newest:
        raise ValueError(f"--opset {opset}: the exporter writes opsets {ONNX_OPSET} to {newest} "
                         f"(the installed onnx {onnx.__version__})")


def written_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = ONNX_OPSET, example_size: tuple[int, int] = (65, 65),
                min_size: tuple[int, int] = (MIN_SIDE, MIN_SIDE)) -> None:
    """Write ``model`` (eval mode) to ``path`` as ONNX with dynamic batch, height and width
    (each side at least ``min_size``, pixels, and at least ``MIN_SIDE``); input ``image``, output
    ``logits``. ``example_size`` is the size traced. Raises ``ExportError``."""
    model = model.eval()
    dims = {0: torch.export.Dim("batch", min=1, max=1024),
            2: torch.export.Dim("height", min=max(MIN_SIDE, min_size[0]), max=16384),
            3: torch.export.Dim("width", min=max(MIN_SIDE, min_size[1]), max=16384)}
    example = verification_input(example_size).expand(2, -1, -1, -1).contiguous()  # batch 2: not specialised to 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, dynamic_shapes=(dims,),
                              input_names=["image"], output_names=["logits"], verbose=False, external_data=False)
    except OSError:
        raise  # disk full, permission: the environment, not the model
    except Exception as err:  # the exporter's many error types
        raise ExportError(f"ONNX export failed ({_one_line(err)})") from err
    got = written_opset(path)
    if got != opset:
        raise ExportError(f"the exporter wrote opset {got}, not the requested {opset}")


def export_torchscript(model: nn.Module, path: str | Path, *, example_size: tuple[int, int] = (65, 65)) -> None:
    """Write ``model`` (eval mode) to ``path`` as a traced TorchScript module (sizes traced, not
    fixed). Raises ``ExportError``."""
    model = model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, (verification_input(example_size),), check_trace=False)
            with open(path, "wb") as handle:  # a Python file: a full disk is an OSError, not a C++ abort
                torch.jit.save(traced, handle)
    except OSError:
        raise  # disk full, permission: the environment, not the model
    except Exception as err:
        raise ExportError(f"TorchScript trace failed ({_one_line(err)})") from err


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``torch.save`` a plain ``{key: tensor}`` (CPU, contiguous) to ``path``, through a Python file
    (a full disk then raises with the ``OSError`` in its chain, not torch's bare ``RuntimeError``)."""
    with open(path, "wb") as handle:
        torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, handle)


def _compare(run: Callable[[torch.Tensor], np.ndarray], model: nn.Module, sizes: Iterable[tuple[int, int]],
             rtol: float) -> list[OutputCheck]:
    checks = []
    for i, size in enumerate(sizes):
        x = verification_input(size, seed=i)
        with torch.no_grad():
            ref = model.eval()(x).double().numpy()
        out = np.asarray(run(x), dtype=np.float64)
        if out.shape != ref.shape:
            checks.append(OutputCheck(tuple(size), tuple(out.shape), float("inf"), float("inf"), False))
            continue
        max_abs = float(np.abs(out - ref).max())
        max_rel = max_abs / max(float(np.abs(ref).max()), 1e-30)
        checks.append(OutputCheck(tuple(size), tuple(out.shape), max_abs, max_rel, max_rel <= rtol))
    return checks


def check_onnx(path: str | Path, model: nn.Module, sizes: Iterable[tuple[int, int]], rtol: float = 1e-4) -> list[OutputCheck]:
    """Run the ONNX file in onnxruntime (CPU) and ``model`` in PyTorch on seeded inputs of each
    ``(H, W)`` in ``sizes``; one ``OutputCheck`` per size (ok when ``max_rel <= rtol``)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return _compare(lambda x: session.run(None, {name: x.numpy()})[0], model, sizes, rtol)


def check_torchscript(path: str | Path, model: nn.Module, sizes: Iterable[tuple[int, int]],
                      rtol: float = 1e-4) -> list[OutputCheck]:
    """Load the TorchScript file back and compare it with ``model`` as ``check_onnx`` does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit; it still loads
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return _compare(run, model, sizes, rtol)
