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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from google.protobuf import text_format
from skimage import data as skdata

from deeplab_caffe import models
from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.mapping import caffe_output_module
from deeplab_caffe.converter.progress import StepProgress
from deeplab_caffe.converter.read import CaffeLayer, read_caffemodel
from deeplab_caffe.converter.topology import WEIGHT_TYPES, Topology
from deeplab_caffe.converter.write import write_caffemodel

DEEPLAB_MEAN_BGR = models.VOC_MEAN_BGR
#: the real photos (``skimage.data``) that deeplab-convert --verify and the suite's forward rows use
VERIFICATION_IMAGES = ("astronaut", "coffee", "chelsea")
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
    rtol: float  # tolerance of the final output
    layer_rtol: float | None = None  # of intermediate layers (None: rtol)
    rows: list[LayerComparison] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)

    @property
    def first_divergent(self) -> str | None:
        """The first layer (graph order, first input) whose relative error exceeds its tolerance."""
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
            "reference": self.reference, "rtol": self.rtol, "layer_rtol": self.layer_rtol or self.rtol,
            "inputs": self.inputs,
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
        module = (caffe_output_module(graph.canonical(layer.name), layer.type, vgg=graph.family == "vgg")
                  if branch is not None else None)
        if module is not None:
            points.append((layer.name, module, branch))
    return points


def _forward_with_hooks(
    model: torch.nn.Module, x: np.ndarray, points: list[tuple[str, str, int]],
    on_output: Callable[[int, str, str, torch.Tensor], None],
) -> np.ndarray:
    """Run ``model`` on ``x`` once; call ``on_output(point index, layer, module, output)`` as each
    point's module call returns. Returns the final output (float32 numpy)."""
    wanted: dict[str, dict[int, tuple[int, str]]] = {}
    for i, (layer, module, call) in enumerate(points):
        wanted.setdefault(module, {})[call] = (i, layer)
    calls: dict[str, int] = {}
    handles = []
    for path, by_call in wanted.items():
        def hook(_module, _inputs, output, path=path, by_call=by_call):
            index = calls.get(path, 0)
            calls[path] = index + 1
            if index in by_call:
                on_output(*by_call[index], path, output.detach())
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()
    finally:
        for handle in handles:
            handle.remove()


def pytorch_outputs(
    model: torch.nn.Module, x: np.ndarray, points: list[tuple[str, str, int]]
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``x`` once, capturing each point's module output (and the final output)."""
    captured: dict[str, np.ndarray] = {}

    def keep(_i: int, layer: str, _module: str, output: torch.Tensor) -> None:
        captured[layer] = output.float().cpu().numpy().copy()

    captured[FINAL] = _forward_with_hooks(model, x, points, keep)
    return captured


def compare_arrays(layer: str, module: str, ours: np.ndarray, reference: np.ndarray, rtol: float) -> LayerComparison:
    """One row: max |ours - reference| and that over max |reference| (inf for a shape mismatch)."""
    b = np.asarray(reference, dtype=np.float32)
    if ours.shape != b.shape:
        return LayerComparison(layer, module, tuple(b.shape), float("inf"), float("inf"), False)
    max_abs = float(np.max(np.abs(ours - b))) if ours.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return LayerComparison(layer, module, tuple(b.shape), max_abs, max_rel, max_rel <= rtol)


def compare_forward(
    model: torch.nn.Module, x: np.ndarray, points: list[tuple[str, str, int]],
    reference: Callable[[str], np.ndarray | None], final_layer: str, rtol: float, layer_rtol: float | None = None,
) -> list[LayerComparison]:
    """Run ``model`` on ``x`` once and compare each point's output inside its forward hook.

    ``reference(layer)`` gives the Caffe output of a layer (None: not available, the row is
    left out). Nothing is kept beyond the rows, so memory does not grow with the net's depth.
    Rows come in ``points`` order (judged by ``layer_rtol``, default ``rtol``), then the final
    output (``FINAL``) against ``final_layer`` (judged by ``rtol``).
    """
    rows: dict[int, LayerComparison] = {}

    def compare(i: int, layer: str, module: str, output: torch.Tensor) -> None:
        ref = reference(layer)
        if ref is not None:
            rows[i] = compare_arrays(layer, module, output.float().cpu().numpy(), ref, layer_rtol or rtol)

    final = _forward_with_hooks(model, x, points, compare)
    ordered = [rows[i] for i in sorted(rows)]
    ref = reference(final_layer)
    if ref is not None:
        ordered.append(compare_arrays(FINAL, "model", final, ref, rtol))
    return ordered


def _deploy_layer(layer: CaffeLayer, graph: Topology, input_hw: tuple[int, int],
                  final_size: tuple[int, int]) -> caffe_pb2.LayerParameter:
    """A model layer as OpenCV 4 takes it: no blobs, phase rules or param specs, and Interp with
    an explicit height/width (pyramid: Caffe's arithmetic on ``input_hw``; score maps: the 1x
    map's ``final_size``), since OpenCV has no ``shrink_factor``."""
    p = layer.params
    if not isinstance(p, caffe_pb2.LayerParameter):
        raise ConversionError(None, f"layer {layer.name}: old-style (V1) graphs cannot be handed to OpenCV here")
    out = caffe_pb2.LayerParameter()
    out.CopyFrom(p)
    for name in ("blobs", "include", "exclude", "param"):
        out.ClearField(name)
    if layer.type == "Interp":
        ip = out.interp_param
        if any(layer is q for q in graph.pyramid):
            h, w = models.caffe_interp_size(*input_hw, height=ip.height, width=ip.width, zoom=ip.zoom_factor,
                                            shrink=ip.shrink_factor, pad_beg=ip.pad_beg, pad_end=ip.pad_end)
        else:
            h, w = final_size
        out.ClearField("interp_param")
        out.interp_param.height, out.interp_param.width = int(h), int(w)
    return out


def deploy_net(graph: Topology, input_shape: tuple[int, int, int, int], final_size: tuple[int, int]) -> caffe_pb2.NetParameter:
    """A deploy NetParameter for OpenCV from an analysed DeepLab graph (train, test or deploy).

    Only the model's layers are kept (no data, label, loss or Split layers; bottoms resolved),
    each as ``_deploy_layer`` writes it, and the image blob becomes an input of ``input_shape``.
    """
    net = caffe_pb2.NetParameter(name="deeplab_deploy")
    net.input.append(graph.input)
    net.input_shape.add().dim.extend(input_shape)
    for layer in graph.layers:
        net.layer.append(_deploy_layer(layer, graph, tuple(input_shape[2:]), final_size))
    return net


class OpenCVReference:
    """OpenCV's output of every model layer, computed chunk by chunk as the comparison asks.

    The model layers run in execution order (the 1x net, each MSC branch in pyramid order, then
    the fusion) as a series of small OpenCV nets of ``chunk`` layers. A chunk reads the blobs it
    needs from earlier chunks' OpenCV outputs (fed as inputs named ``<blob>__input``), so the
    whole computation is OpenCV's; only the outputs of ``keep`` (the layers to compare) not yet
    handed out and the blobs later chunks read are held. ``get(layer)`` hands each output out
    once (the final layer's stays). 16 layers a chunk keeps ResNet-101 MSC at 321 px under
    3 GB in all (``scripts/bench_verify.py``).
    """

    def __init__(self, graph: Topology, blobs: dict[str, list[np.ndarray]], x: np.ndarray,
                 final_size: tuple[int, int], folder: Path, keep: set[str], chunk: int = 16,
                 on_layers: Callable[[int], None] = lambda n: None) -> None:
        rank = {None: len(graph.pyramid) + 1}
        order = sorted(graph.layers, key=lambda layer: (rank.get(graph.branch[layer.name], graph.branch[layer.name]),))
        self.graph, self.blobs, self.folder = graph, blobs, folder
        self.input_hw, self.final_size = tuple(x.shape[2:]), final_size
        self.chunks = [order[i:i + chunk] for i in range(0, len(order), chunk)]
        self.values: dict[str, np.ndarray] = {graph.input: x}
        self.last_read = {b: i for i, part in enumerate(self.chunks) for layer in part for b in layer.params.bottom}
        self.pending: dict[str, np.ndarray] = {}
        self.keep = keep | {graph.output}
        self.done = 0
        self.on_layers = on_layers  # told how many layers each chunk ran (progress)

    def get(self, layer: str) -> np.ndarray | None:
        while layer not in self.pending and self.done < len(self.chunks):
            self._run(self.chunks[self.done])
            self.done += 1
        return self.pending.get(layer) if layer == self.graph.output else self.pending.pop(layer, None)

    def _run(self, part: list[CaffeLayer]) -> None:
        net = caffe_pb2.NetParameter(name="deeplab_chunk")
        written: set[str] = set()
        feeds: dict[str, np.ndarray] = {}
        weights = caffe_pb2.NetParameter()
        slim: dict[str, list[np.ndarray]] = {}
        for layer in part:
            out = _deploy_layer(layer, self.graph, self.input_hw, self.final_size)
            for i, bottom in enumerate(out.bottom):
                if bottom not in written:
                    feeds[f"{bottom}__input"] = self.values[bottom]
                    out.bottom[i] = f"{bottom}__input"
            written.update(out.top)
            net.layer.append(out)
            arrays = self.blobs.get(layer.name) or self.blobs.get(self.graph.canonical(layer.name))
            if layer.type in WEIGHT_TYPES and arrays:
                weights.layer.add(name=layer.name, type=layer.type)
                slim[layer.name] = arrays
        for name, value in feeds.items():
            net.input.append(name)
            net.input_shape.add().dim.extend(value.shape)
        prototxt, caffemodel = self.folder / "chunk.prototxt", self.folder / "chunk.caffemodel"
        prototxt.write_text(text_format.MessageToString(net))
        write_caffemodel(caffemodel, weights, slim)
        cv_net = _opencv_net(prototxt, caffemodel)
        for name, value in feeds.items():
            cv_net.setInput(np.ascontiguousarray(value, dtype=np.float32), name)
        last_writer = {top: layer.name for layer in part for top in layer.params.top}  # in-place: the last wins
        carried = {blob: name for blob, name in last_writer.items() if self.last_read.get(blob, -1) > self.done}
        names = list(dict.fromkeys([layer.name for layer in part if layer.name in self.keep] + list(carried.values())))
        outputs = dict(zip(names, (np.asarray(o) for o in cv_net.forward(names))))
        del cv_net
        for blob, name in carried.items():
            self.values[blob] = outputs[name]
        for blob in [b for b, last in self.last_read.items() if last <= self.done and b in self.values]:
            del self.values[blob]
        self.pending.update((name, out) for name, out in outputs.items() if name in self.keep)
        self.on_layers(len(part))


def verification_images(names: tuple[str, ...], size: int) -> dict:
    """Real photos shipped with scikit-image, as uint8 BGR ``size x size`` images."""
    images = {}
    for name in names:
        rgb = getattr(skdata, name)()
        if rgb.ndim == 2:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
        images[name] = cv2.resize(rgb[:, :, :3], (size, size), interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()
    return images


def _opencv_net(prototxt: Path, caffemodel: Path):
    """OpenCV's net of a deploy prototxt and weights: its own CPU backend, no layer fusion (so
    every Caffe layer's output can be read)."""
    try:
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    except cv2.error as err:
        raise ConversionError(caffemodel, f"OpenCV could not load the graph: {str(err).strip().splitlines()[-1]}") from None
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableFusion(False)
    return net


def opencv_outputs(prototxt: Path, caffemodel: Path, x: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
    """Run OpenCV's Caffe importer on ``x``; return the outputs of ``layers`` (by layer name)."""
    net = _opencv_net(prototxt, caffemodel)
    net.setInput(x)
    names = list(dict.fromkeys(layers))
    outputs = net.forward(names)
    return {name: np.asarray(out) for name, out in zip(names, outputs)}


def opencv_available() -> str | None:
    """OpenCV's version when a 4.x with the Caffe importer is installed, else None."""
    version = cv2.__version__
    return version if version.startswith("4.") and hasattr(cv2.dnn, "readNetFromCaffe") else None


def verify_with_opencv(
    model: torch.nn.Module, graph: Topology, caffemodel: str | Path, images: dict[str, np.ndarray],
    *, rtol: float = 1e-5, layer_rtol: float | None = None, layer_by_layer: bool = True, progress: bool = False,
) -> ForwardReport:
    """Compare ``model`` with OpenCV's run of the same Caffe graph and weights on each image.

    ``images``: {name: uint8 H x W x 3 BGR}. OpenCV runs the graph's model layers chunk by
    chunk (``OpenCVReference``) while the model's hooks compare each layer as it is computed,
    so memory stays bounded. Returns a report whose rows cover every mapped layer (or only the
    final output when ``layer_by_layer`` is False) for each image in turn. ``progress``: a bar on
    a terminal, plain lines in a log (``converter.progress``), counting OpenCV layers run.
    """
    version = opencv_available()
    if version is None:
        raise ConversionError(None, "forward verification needs opencv-python-headless 4.x (pip install 'opencv-python-headless<5')")
    report = ForwardReport(reference=f"OpenCV {version} readNetFromCaffe", rtol=rtol, layer_rtol=layer_rtol)
    points = comparison_points(graph) if layer_by_layer else []
    blobs = read_caffemodel(caffemodel)
    with (tempfile.TemporaryDirectory(prefix="deeplab-verify-") as tmp,
          StepProgress("verify", len(images) * len(graph.layers), enabled=progress) as bar):
        for name, image in images.items():
            x = caffe_input(image)
            final_size = models.score_map_size(model.config, x.shape[2:])
            reference = OpenCVReference(graph, blobs, x, final_size, Path(tmp), {layer for layer, _, _ in points},
                                        on_layers=bar.advance)
            report.rows.extend(compare_forward(model, x, points, reference.get, graph.output, rtol, layer_rtol))
            report.inputs.append(name)
    return report


def verify_with_reference(
    model: torch.nn.Module, graph: Topology, reference: dict[str, np.ndarray], *, rtol: float = 1e-5,
    layer_rtol: float | None = None, final_layer: str | None = None, name: str = "dump",
) -> ForwardReport:
    """Compare ``model`` with blobs dumped from real Caffe: ``reference["data"]`` is the input,
    other keys are Caffe layer names (the final layer, e.g. ``fc_fusion``, included)."""
    if "data" not in reference:
        raise ConversionError(None, "reference blobs have no 'data' input")
    x = np.ascontiguousarray(reference["data"], dtype=np.float32)
    report = ForwardReport(reference=f"Caffe blob dump ({name})", rtol=rtol, layer_rtol=layer_rtol, inputs=[name])
    report.rows = compare_forward(model, x, comparison_points(graph), reference.get, final_layer or graph.output, rtol,
                                  layer_rtol)
    return report


def post_process(graph: Topology, scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the graph's post-processing (``graph.post_processing``) on the model's output
    ``scores`` (``N x C x h x w``, the output layer's blob) as Caffe does: each Interp with
    Caffe's arithmetic and aligned corners (``models.interp.caffe_interp_layer``), each ArgMax
    over the class axis as a float index map ``N x 1 x H x W``. Returns the blobs by top name;
    layers that evaluate or write (SegAccuracy, MatWrite, DenseCRF, ...) are not run."""
    output = next(layer for layer in graph.layers if layer.name == graph.output)
    blobs = {top: scores for top in output.params.top}
    for layer in graph.post_processing:
        bottoms = [blobs.get(b) for b in layer.params.bottom]
        if any(b is None for b in bottoms):
            continue
        if layer.type == "Interp":
            p = layer.params.interp_param
            blobs[layer.params.top[0]] = models.interp.caffe_interp_layer(
                bottoms[0], height=p.height, width=p.width, zoom=p.zoom_factor, shrink=p.shrink_factor,
                pad_beg=p.pad_beg, pad_end=p.pad_end)
        elif layer.type == "ArgMax" and layer.params.argmax_param.axis == 1 and layer.params.argmax_param.top_k == 1 \
                and not layer.params.argmax_param.out_max_val:
            blobs[layer.params.top[0]] = bottoms[0].argmax(dim=1, keepdim=True).to(bottoms[0].dtype)
    return blobs
