"""Detectron2's DeepLab v3 / v3+ checkpoints (``projects/DeepLab``) onto our v3 / v3+ models.

The file is a pickle of ``{"model": {name: numpy array}, ...}`` (the model zoo's ``.pkl``),
names as Detectron2's modules give them: ``backbone.stem.conv{1,2,3}`` (the R103 "deeplab"
stem), ``backbone.res{S}.{i}.conv{1,2,3}`` / ``.shortcut`` with the norm under ``.norm``,
``sem_seg_head.aspp.*`` (v3) or ``sem_seg_head.decoder.res5.project_conv.*`` (v3+: the ASPP)
and ``sem_seg_head.decoder.res2.{project_conv,fuse_conv}`` (the v3+ decoder), and
``sem_seg_head.predictor``. It is read with a restricted unpickler (numpy arrays, dicts and
plain values only: no code runs), whichever pickle protocol wrote it: protocol 5 (Python 3.14's
default) stores arrays through numpy's ``_frombuffer``, which is allowed like ``_reconstruct``.

Structure (stem, blocks, widths, head and decoder widths, separable convs, classes) comes from
the tensors' shapes; what the weights cannot tell comes from the published Cityscapes configs
(``deeplab_v3[_plus]_R_103_os16_mg124_poly_90k_bs16.yaml``) and can be overridden with
``Detectron2Options``: the stride on the 3x3 conv, output stride 16 (res5 dilation 2 with
multi-grid 1, 2, 4), ASPP rates 6, 12, 18 with dropout 0.1, image pooling over the training
crop (512 x 1024 / 16 = 32 x 64 window, stride 1, no norm, half-pixel resize back; features
the window does not tile are refused, as Detectron2's ``ASPP`` refuses them), the RGB input
normalised by the config's ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``. The caller subtracts the mean
(as BGR; the model divides by the std) and upsamples the logits as Detectron2 does:
``scale_factor`` = the output stride, ``align_corners=False``, cropped to the image (evaluation's
``scale_factor_crop``).

``pixel_mean`` / ``pixel_std`` in the file (the model zoo's 2020 files hold them: the buffers were
persistent until Detectron2 3c0509e, 2021-02-25) are not used, as Detectron2 @ 02b5c4e does not use
them: ``SemanticSegmentor`` registers both as non-persistent buffers filled from the config
(``modeling/meta_arch/semantic_seg.py``), so loading a file that has them reports them as
unexpected keys and keeps the config's values (``checkpoint/detection_checkpoint.py``). The
report says whether the file's values equal the config's.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_caffe import models
from deeplab_caffe.models.config import block_ids
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.foreign.rules import ForeignFormat, KeyMapping, Rule
from deeplab_caffe.models.bounds import FileBoundError, check_tree_size

__all__ = ["Detectron2Options", "DETECTRON2", "detectron2_format", "read_detectron2_pkl", "detectron2_config", "detectron2_mapping",
           "PIXEL_MEAN_RGB", "PIXEL_STD_RGB"]

#: the published configs' ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` (RGB, 0-255: ``INPUT.FORMAT: RGB``)
PIXEL_MEAN_RGB = (123.675, 116.280, 103.530)
PIXEL_STD_RGB = (58.395, 57.120, 57.375)

_ASPP_PREFIXES = ("sem_seg_head.aspp", "sem_seg_head.decoder.res5.project_conv")
_DECODER = "sem_seg_head.decoder.res2"
_BLOCK_CONVS = (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c"), ("shortcut", "branch1"))


def _conv_norm(foreign: str, ours: str) -> tuple[Rule, ...]:
    """A Detectron2 ``Conv2d`` with its ``norm`` child onto one of our ``ConvBN``."""
    return (Rule(f"{foreign}.weight", f"{ours}.conv.weight"), Rule(f"{foreign}.norm.{{p}}", f"{ours}.bn.{{p}}"))


def _separable(foreign: str, ours: str) -> tuple[Rule, ...]:
    return _conv_norm(f"{foreign}.depthwise", f"{ours}.depthwise") + _conv_norm(f"{foreign}.pointwise",
                                                                                 f"{ours}.pointwise")


def _rules(aspp_prefixes: tuple[str, ...]) -> tuple[Rule, ...]:
    rules = [*_conv_norm("backbone.stem.conv{n:[123]}", "backbone.stem.conv{n}")]
    for theirs, ours in _BLOCK_CONVS:
        rules += _conv_norm(f"backbone.res{{s}}.{{b:ordinal0}}.{theirs}", f"backbone.res{{s}}.{{b}}.{ours}")
    for prefix in aspp_prefixes:
        rules += [Rule(f"{prefix}.convs.4.1.{{p:weight|bias}}", "aspp.pooling.{p}"),  # avg pool, conv (no norm)
                  *_separable(f"{prefix}.convs.{{i:\\d+}}", "aspp.convs.{i}"),
                  *_conv_norm(f"{prefix}.convs.{{i:\\d+}}", "aspp.convs.{i}"),
                  *_conv_norm(f"{prefix}.project", "aspp.project")]
    rules += [*_conv_norm(f"{_DECODER}.project_conv", "decoder.reduce"),
              *_separable(f"{_DECODER}.fuse_conv", "decoder.fuse.0"),
              *_conv_norm(f"{_DECODER}.fuse_conv.{{i:\\d+}}", "decoder.fuse.{i}"),
              Rule("sem_seg_head.predictor.{p:weight|bias}", "classifier.{p}")]
    return tuple(rules)


def detectron2_mapping(plus: bool | None = None) -> KeyMapping:
    """The key rules from Detectron2's DeepLab names to ours (data; see the module doc). The
    ASPP lives under ``sem_seg_head.aspp`` (v3) or ``sem_seg_head.decoder.res5.project_conv``
    (v3+): ``plus=None`` reads both; writing back (``export_state_dict``) needs the one."""
    prefixes = _ASPP_PREFIXES if plus is None else (_ASPP_PREFIXES[1] if plus else _ASPP_PREFIXES[0],)
    return KeyMapping(
        name="detectron2",
        rules=_rules(prefixes),
        outside=((r"pixel_(mean|std)", "not used, as Detectron2 does not use it: the config's PIXEL_MEAN/PIXEL_STD "
                                        "normalise the input (see the notes)"),),
    )


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dicts and plain values; refuses every other class."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        return super().find_class(module, name)


def read_detectron2_pkl(path: Path) -> dict[str, Any]:
    """The ``"model"`` dict of a Detectron2 ``.pkl`` (``{name: numpy array}``), in file order.

    Raises ``ConversionError`` for a missing or unreadable file, a pickle holding anything but
    arrays and plain values, one whose containers expand beyond the file's size (shared lists),
    one without a ``"model"`` dict, or a ``"model"`` entry that is not a numeric array."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "no such file")
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f, encoding="latin1").load()
    except Exception as err:  # pickle, EOF and numpy errors alike
        first = (str(err).strip().splitlines() or [""])[0]
        raise ConversionError(path, f"not a readable Detectron2 .pkl ({type(err).__name__}: {first[:200]})") from err
    try:  # shared lists cost a few bytes each in a pickle: bound the tree before anything walks it
        check_tree_size(path, "the pickle", data)
    except FileBoundError as err:
        raise ConversionError(path, err.problem) from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConversionError(path, "not a Detectron2 checkpoint (no 'model' dict of arrays)")
    for key, value in data["model"].items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            what = f"a {value.dtype} array" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
            raise ConversionError(path, f"model[{key!r}] is {what}, not a numeric array")
    return dict(data["model"])


@dataclass(frozen=True)
class Detectron2Options:
    """What a Detectron2 DeepLab config says and its weights do not (defaults: the published
    Cityscapes R103 configs). ``train_crop`` ``None`` means global image pooling; ``pixel_mean``
    / ``pixel_std`` are ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` (RGB, 0-255)."""

    stride_in_1x1: bool = False
    res4_dilation: int = 1
    res5_dilation: int = 2
    res5_multi_grid: tuple[int, ...] = (1, 2, 4)
    aspp_dilations: tuple[int, ...] = (6, 12, 18)
    aspp_dropout: float = 0.1
    train_crop: tuple[int, int] | None = (512, 1024)
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN_RGB
    pixel_std: tuple[float, float, float] = PIXEL_STD_RGB


def _shape(state: Mapping[str, Any], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(path, f"missing key {key} (not a Detectron2 DeepLab checkpoint?)")
    return tuple(np.shape(state[key]))


def _stem(state: Mapping[str, Any], path: Path) -> dict[str, Any]:
    conv1 = _shape(state, "backbone.stem.conv1.weight", path)
    stem: dict[str, Any] = {"channels": conv1[0], "conv_kernel": conv1[-1], "conv_stride": 2,
                            "conv_pad": conv1[-1] // 2, "pool_kernel": 3, "pool_stride": 2, "pool_pad": 1,
                            "pool_ceil": False}
    if "backbone.stem.conv3.weight" in state:  # the "deeplab" stem: three 3x3 convs
        stem["deep_channels"] = conv1[0]
        stem["channels"] = _shape(state, "backbone.stem.conv3.weight", path)[0]
    return stem


def _stages(state: Mapping[str, Any], path: Path, opts: Detectron2Options) -> list[dict[str, Any]]:
    stages = []
    for index, name in enumerate(("res2", "res3", "res4", "res5")):
        n = 0
        while f"backbone.{name}.{n}.conv1.weight" in state:
            n += 1
        if n == 0:
            raise ConversionError(path, f"missing key backbone.{name}.0.conv1.weight (not a DeepLab ResNet?)")
        dilation = {"res4": opts.res4_dilation, "res5": opts.res5_dilation}.get(name, 1)
        stage = {"name": name, "blocks": block_ids(n),
                 "mid_channels": _shape(state, f"backbone.{name}.0.conv1.weight", path)[0],
                 "out_channels": _shape(state, f"backbone.{name}.0.conv3.weight", path)[0],
                 "stride": 1 if index == 0 or dilation > 1 else 2, "dilation": dilation}
        if name == "res5":
            if len(opts.res5_multi_grid) != n:
                raise ConversionError(path, f"res5 has {n} blocks but the multi-grid {list(opts.res5_multi_grid)} "
                                            f"gives {len(opts.res5_multi_grid)} factors")
            stage["multi_grid"] = list(opts.res5_multi_grid)
        stages.append(stage)
    return stages


def _file_notes(state: Mapping[str, Any], opts: Detectron2Options) -> tuple[str, ...]:
    """What the file's own ``pixel_mean`` / ``pixel_std`` hold and that they are not used."""
    notes = []
    for key, used in (("pixel_mean", opts.pixel_mean), ("pixel_std", opts.pixel_std)):
        if key not in state:
            continue
        values = np.asarray(state[key], dtype=np.float64).ravel()
        same = values.shape == (3,) and bool(np.all(values == np.asarray(used, dtype=np.float64)))
        shown = ", ".join(f"{v:g}" for v in values[:3]) + (", ..." if values.size > 3 else "")
        notes.append(f"the file's {key} ({shown}) is not used, as Detectron2 @ 02b5c4e does not use it (a "
                     f"non-persistent buffer from the config); it {'equals' if same else 'DIFFERS from'} the "
                     f"config's {', '.join(f'{v:g}' for v in used)}, which is used")
    return tuple(notes)


def detectron2_config(state: Mapping[str, Any], path: str | Path = "<detectron2>",
                      options: Detectron2Options | None = None) -> dict[str, Any]:
    """Our v3 / v3+ config for a Detectron2 DeepLab state dict (see the module doc)."""
    path, opts = Path(path), options or Detectron2Options()
    aspp = next((p for p in _ASPP_PREFIXES if f"{p}.convs.0.weight" in state), None)
    if aspp is None:
        raise ConversionError(path, "missing key sem_seg_head.aspp.convs.0.weight (no DeepLab head)")
    stages = _stages(state, path, opts)
    output_stride = 4 * int(np.prod([s["stride"] for s in stages]))
    crop = opts.train_crop
    if crop is not None and (crop[0] % output_stride or crop[1] % output_stride):
        raise ConversionError(path, f"training crop {list(crop)} is not divisible by the output stride {output_stride}")
    head = {"channels": _shape(state, f"{aspp}.convs.0.weight", path)[0], "rates": list(opts.aspp_dilations),
            "image_pooling": True, "dropout": float(opts.aspp_dropout), "pooling_norm": False,
            "pooling_kernel": None if crop is None else [crop[0] // output_stride, crop[1] // output_stride],
            "separable": f"{aspp}.convs.1.depthwise.weight" in state}
    std_bgr = [float(v) for v in opts.pixel_std[::-1]]
    config: dict[str, Any] = {
        "arch": "deeplab_v3", "n_classes": _shape(state, "sem_seg_head.predictor.weight", path)[0],
        "in_channels": 3, "bn_eps": 1e-5, "stem": _stem(state, path), "stages": stages, "head": head,
        "msc": None, "freeze_bn": False, "stride_in_1x1": opts.stride_in_1x1, "input_std": std_bgr,
        "input_rgb": True, "align_corners": False,
    }
    if f"{_DECODER}.project_conv.weight" in state:
        separable = f"{_DECODER}.fuse_conv.depthwise.weight" in state
        fuse = f"{_DECODER}.fuse_conv.pointwise.weight" if separable else f"{_DECODER}.fuse_conv.0.weight"
        config["arch"] = "deeplab_v3plus"
        config["decoder"] = {"low_level_channels": _shape(state, f"{_DECODER}.project_conv.weight", path)[0],
                             "channels": _shape(state, fuse, path)[0], "low_level_first": True,
                             "separable": separable}
    try:
        models.validate_config(config)
    except ValueError as err:
        raise ConversionError(path, str(err)) from err
    return config


def _notes(opts: Detectron2Options) -> tuple[str, ...]:
    mean = ", ".join(f"{v:g}" for v in opts.pixel_mean[::-1])
    std = ", ".join(f"{v:g}" for v in opts.pixel_std[::-1])
    stride = 4 * 2 * (2 if opts.res4_dilation == 1 else 1) * (2 if opts.res5_dilation == 1 else 1)
    pooling = ("global" if opts.train_crop is None else
               f"over a {opts.train_crop[0] // stride} x {opts.train_crop[1] // stride} window (the "
               f"{opts.train_crop[0]} x {opts.train_crop[1]} crop / {stride}), stride 1")
    return (
        f"input: BGR, 0-255, minus the config's PIXEL_MEAN ({mean} as BGR; the caller subtracts it); the model "
        f"divides by its PIXEL_STD ({std} as BGR) and reverses the channels to RGB (config input_std, input_rgb); "
        "a pixel_mean/pixel_std stored in the file is not used, as Detectron2 does not use it",
        f"backbone: stride on the {'1x1' if opts.stride_in_1x1 else '3x3'} conv, floor-mode stem pool, output "
        f"stride {stride}, res5 multi-grid {tuple(opts.res5_multi_grid)}",
        f"ASPP: rates {tuple(opts.aspp_dilations)}, dropout {opts.aspp_dropout:g}, image pooling {pooling}, "
        "1x1 conv with bias and no norm, resized back with align_corners=False (inputs whose features the "
        "window does not tile are refused, as Detectron2's ASPP refuses them)",
        "v3+ decoder: [reduced res2, upsampled ASPP] (align_corners=False), two 3x3 convs",
        "output: logits at the head's stride; Detectron2 upsamples them by scale_factor = that stride "
        "(align_corners=False) and crops them to the image: evaluate with --upsample scale_factor_crop",
    )


def detectron2_format(options: Detectron2Options | None = None) -> ForeignFormat:
    """The ``ForeignFormat`` for Detectron2 DeepLab files under ``options`` (default: the
    published Cityscapes configs)."""
    description = "Detectron2 projects/DeepLab v3 / v3+ .pkl (model zoo Cityscapes R103)"
    opts = options or Detectron2Options()
    mean_bgr = (float(opts.pixel_mean[2]), float(opts.pixel_mean[1]), float(opts.pixel_mean[0]))
    return ForeignFormat("detectron2", description, read_detectron2_pkl, partial(detectron2_config, options=opts),
                         detectron2_mapping(), _notes(opts), mean_bgr=mean_bgr,
                         file_notes=partial(_file_notes, opts=opts))


DETECTRON2 = detectron2_format()
