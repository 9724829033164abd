"""Forward parity: run the converted model and a Caffe reference on the same input, layer by layer.

References: OpenCV 4.x's Caffe importer (``cv2.dnn.readNetFromCaffe``, an independent
implementation of Caffe's layers), or a dict of blobs dumped from real Caffe (``data`` = the
input, other keys = Caffe layer names). Each compared layer reports its max absolute error and
its relative error ``max|ours - ref| / max|ref|``; the first layer (in graph order) above the
tolerance is named as the first divergence.

Inputs follow Caffe's convention: float32 ``N x 3 x H x W``, BGR, 0-255 minus the DeepLab mean.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

import models
from caffe_proto import caffe_pb2
from converter.errors import ConversionError
from converter.mapping import caffe_output_module
from converter.read import read_caffemodel
from converter.topology import WEIGHT_TYPES, Topology
from converter.write import write_caffemodel

DEEPLAB_MEAN_BGR = (104.008, 116.669, 122.675)
FINAL = "(model output)"


def caffe_input(image_bgr: np.ndarray, mean_bgr: tuple[float, float, float] = DEEPLAB_MEAN_BGR) -> np.ndarray:
    """uint8 ``H x W x 3`` BGR image -> float32 ``1 x 3 x H x W`` blob minus the mean (Caffe's input)."""
    blob = image_bgr.astype(np.float32) - np.asarray(mean_bgr, dtype=np.float32)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


@dataclass
class LayerComparison:
    """One compared blob: Caffe layer, the PyTorch module standing for it, and the errors."""

    layer: str
    module: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class ForwardReport:
    """Layer-by-layer comparison of one or more inputs against a reference."""

    reference: str
    rtol: float
    rows: list[LayerComparison] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)

    @property
    def first_divergent(self) -> str | None:
        """The first layer (graph order, first input) whose relative error exceeds rtol."""
        return next((row.layer for row in self.rows if not row.ok), None)

    @property
    def max_rel(self) -> float:
        """Largest relative error of the final output over all inputs."""
        finals = [row.max_rel for row in self.rows if row.layer == FINAL]
        return max(finals) if finals else float("nan")

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.ok for row in self.rows)

    def to_dict(self) -> dict:
        return {
            "reference": self.reference, "rtol": self.rtol, "inputs": self.inputs,
            "passed": self.passed, "first_divergent": self.first_divergent, "max_rel": self.max_rel,
            "layers_compared": len(self.rows),
            "worst": sorted(({"layer": r.layer, "max_rel": r.max_rel} for r in self.rows),
                            key=lambda r: -r["max_rel"])[:5],
            "rows": [r.__dict__ | {"shape": list(r.shape)} for r in self.rows],
        }


def comparison_points(graph: Topology) -> list[tuple[str, str, int]]:
    """``(caffe layer, module path, call index)`` for every layer with a PyTorch counterpart.

    The call index says which forward pass of a shared module it is (MSC: 0 = 1x, then the
    scales in pyramid order); an MSC copy compares against its 1x layer's module, later call.
    """
    points = []
    for layer in graph.layers:
        branch = graph.branch[layer.name]
        module = caffe_output_module(graph.canonical(layer.name), layer.type) if branch is not None else None
        if module is not None:
            points.append((layer.name, module, branch))
    return points


def pytorch_outputs(
    model: torch.nn.Module, x: np.ndarray, points: list[tuple[str, str, int]]
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``x`` once, capturing each point's module output (and the final output)."""
    wanted: dict[str, dict[int, str]] = {}
    for layer, module, call in points:
        wanted.setdefault(module, {})[call] = layer
    captured: dict[str, np.ndarray] = {}
    calls: dict[str, int] = {}
    handles = []
    for path, by_call in wanted.items():
        def hook(_module, _inputs, output, path=path, by_call=by_call):
            index = calls.get(path, 0)
            calls[path] = index + 1
            if index in by_call:
                captured[by_call[index]] = output.detach().float().cpu().numpy().copy()
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            captured[FINAL] = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
    finally:
        for handle in handles:
            handle.remove()
    return captured


def compare_outputs(
    ours: dict[str, np.ndarray], reference: dict[str, np.ndarray], order: list[tuple[str, str]], rtol: float,
    report: ForwardReport,
) -> None:
    """Append one row per ``(layer, module)`` of ``order`` present in both dicts to ``report``."""
    for layer, module in order:
        if layer not in ours or layer not in reference:
            continue
        a, b = ours[layer], np.asarray(reference[layer], dtype=np.float32)
        if a.shape != b.shape:
            report.rows.append(LayerComparison(layer, module, tuple(b.shape), float("inf"), float("inf"), False))
            continue
        max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        report.rows.append(LayerComparison(layer, module, tuple(b.shape), max_abs, max_rel, max_rel <= rtol))


def deploy_net(graph: Topology, input_shape: tuple[int, int, int, int], final_size: tuple[int, int]) -> caffe_pb2.NetParameter:
    """A deploy NetParameter for OpenCV from an analysed DeepLab graph (train, test or deploy).

    Only the model's layers are kept (no data, label, loss or Split layers; bottoms resolved)
    and the image blob becomes an input of ``input_shape``. OpenCV 4 has no ``shrink_factor``,
    so the pyramid Interps get the explicit height/width of Caffe's arithmetic and the MSC
    score-map Interps the 1x score map size ``final_size``. Only new-style layers are written.
    """
    net = caffe_pb2.NetParameter(name="deeplab_deploy")
    net.input.append(graph.input)
    net.input_shape.add().dim.extend(input_shape)
    pyramid = {layer.name for layer in graph.pyramid}
    for layer in graph.layers:
        p = layer.params
        if not isinstance(p, caffe_pb2.LayerParameter):
            raise ConversionError(None, f"layer {layer.name}: old-style (V1) graphs cannot be handed to OpenCV here")
        out = net.layer.add()
        out.CopyFrom(p)
        for name in ("blobs", "include", "exclude", "param"):
            out.ClearField(name)
        if layer.type == "Interp":
            ip = out.interp_param
            if layer.name in pyramid:
                h, w = models.caffe_interp_size(input_shape[2], input_shape[3], height=ip.height, width=ip.width,
                                                zoom=ip.zoom_factor, shrink=ip.shrink_factor,
                                                pad_beg=ip.pad_beg, pad_end=ip.pad_end)
            else:
                h, w = final_size
            out.ClearField("interp_param")
            out.interp_param.height, out.interp_param.width = int(h), int(w)
    return net


def opencv_outputs(prototxt: Path, caffemodel: Path, x: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
    """Run OpenCV's Caffe importer on ``x``; return the outputs of ``layers`` (by layer name)."""
    import cv2

    try:
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    except cv2.error as err:
        raise ConversionError(caffemodel, f"OpenCV could not load the model: {str(err).strip().splitlines()[-1]}") from None
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableFusion(False)
    net.setInput(x)
    names = list(dict.fromkeys(layers))
    outputs = net.forward(names)
    return {name: np.asarray(out) for name, out in zip(names, outputs)}


def opencv_available() -> str | None:
    """OpenCV's version when a 4.x with the Caffe importer is installed, else None."""
    try:
        import cv2
    except ImportError:
        return None
    version = cv2.__version__
    return version if version.startswith("4.") and hasattr(cv2.dnn, "readNetFromCaffe") else None


def verify_with_opencv(
    model: torch.nn.Module, graph: Topology, caffemodel: str | Path, images: dict[str, np.ndarray],
    *, rtol: float = 1e-5, layer_by_layer: bool = True,
) -> ForwardReport:
    """Compare ``model`` with OpenCV's run of the same Caffe graph and weights on each image.

    ``images``: {name: uint8 H x W x 3 BGR}. The graph is rewritten as an OpenCV deploy net
    (see ``deploy_net``). Returns a report whose rows cover every mapped layer (or only the
    final output when ``layer_by_layer`` is False) for each image in turn.
    """
    version = opencv_available()
    if version is None:
        raise ConversionError(None, "forward verification needs opencv-python-headless 4.x (pip install 'opencv-python-headless<5')")
    caffemodel = Path(caffemodel)
    report = ForwardReport(reference=f"OpenCV {version} readNetFromCaffe", rtol=rtol)
    points = comparison_points(graph) if layer_by_layer else []
    final = graph.output
    with tempfile.TemporaryDirectory(prefix="deeplab-verify-") as tmp:
        weights = _weights_for_opencv(graph, caffemodel, Path(tmp))
        for name, image in images.items():
            x = caffe_input(image)
            ours = pytorch_outputs(model, x, points)
            net = deploy_net(graph, tuple(x.shape), tuple(ours[FINAL].shape[-2:]))
            prototxt = Path(tmp) / "deploy.prototxt"
            prototxt.write_text(text_format.MessageToString(net))
            ref = opencv_outputs(prototxt, weights, x, [layer for layer, _, _ in points] + [final])
            ref[FINAL] = ref[final]
            report.inputs.append(name)
            compare_outputs(ours, ref, [(layer, module) for layer, module, _ in points] + [(FINAL, "model")], rtol, report)
    return report


def verify_with_reference(
    model: torch.nn.Module, graph: Topology, reference: dict[str, np.ndarray], *, rtol: float = 1e-5,
    final_layer: str | None = None, name: str = "dump",
) -> ForwardReport:
    """Compare ``model`` with blobs dumped from real Caffe: ``reference["data"]`` is the input,
    other keys are Caffe layer names (the final layer, e.g. ``fc_fusion``, included)."""
    if "data" not in reference:
        raise ConversionError(None, "reference blobs have no 'data' input")
    x = np.ascontiguousarray(reference["data"], dtype=np.float32)
    points = comparison_points(graph)
    ours = pytorch_outputs(model, x, points)
    ref = dict(reference)
    final = final_layer or graph.output
    if final in ref:
        ref[FINAL] = ref[final]
    report = ForwardReport(reference=f"Caffe blob dump ({name})", rtol=rtol, inputs=[name])
    compare_outputs(ours, ref, [(layer, module) for layer, module, _ in points] + [(FINAL, "model")], rtol, report)
    return report


def _weights_for_opencv(graph: Topology, caffemodel: Path, folder: Path) -> Path:
    """The weights as OpenCV reads them: a binary caffemodel of the model's weight layers only.

    Each layer keeps its name, type and blobs (all that OpenCV takes from the weights file), so
    fork-only fields (MatWrite, SegAccuracy) and data layers cannot upset OpenCV's schema; HDF5
    weights become binary, and MSC copies whose blobs the file leaves out get their 1x layer's.
    """
    blobs = read_caffemodel(caffemodel)
    net = caffe_pb2.NetParameter()
    slim: dict[str, list[np.ndarray]] = {}
    for layer in graph.layers:
        if layer.type in WEIGHT_TYPES:
            arrays = blobs.get(layer.name) or blobs.get(graph.canonical(layer.name))
            if arrays:
                net.layer.add(name=layer.name, type=layer.type)
                slim[layer.name] = arrays
    path = folder / "weights.caffemodel"
    write_caffemodel(path, net, slim)
    return path
