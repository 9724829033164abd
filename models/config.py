"""Model configuration: the plain, JSON-serialisable dict that ``build_model`` takes.

The layout is pinned in ``docs/architecture.md``. Optional keys beyond it:

* ``"freeze_bn"`` (bool, default ``True``): keep every BatchNorm in eval mode under
  ``model.train()`` with its affine parameters frozen (DeepLab v2's recipe). ``False`` lets a
  training stack update BN (and convert it with ``nn.SyncBatchNorm.convert_sync_batchnorm``).
* ``config["msc"]["resize"]`` (``MSC_RESIZES``, default ``"caffe"``): how MSC resizes its pyramid.
* a stage's ``"multi_grid"`` (list of ints, one per block): block ``i`` of the stage uses
  dilation ``stage["dilation"] * multi_grid[i]`` (DeepLab v3's multi-grid).

DeepLab v3 / v3+ (``"arch": "deeplab_v3"`` / ``"deeplab_v3plus"``, see ``default_v3_config``)
share ``stem``/``stages`` and replace ``"classifier"`` by
``"head": {"channels", "rates", "image_pooling", "dropout"}``; v3+ adds
``"decoder": {"low_level_channels", "channels"}`` (low-level features from ``res2``).

DeepLab-VGG16 (``"arch": "deeplab_vgg"``, ``models.vgg``, see ``default_vgg_config``):
``{"arch", "n_classes", "in_channels", "stages", "pool5a", "classifier", "msc"}`` where each of
the five stages is ``{"channels": [widths of its 3x3 convs], "pad", "dilation", "pool": POOL}``,
``"pool5a"`` is a POOL or None, POOL = ``{"kind": "max" | "ave", "kernel", "stride", "pad"}``,
``"classifier"`` = ``{"channels" (fc6/fc7 width), "dropout", "branches": [{"kernel",
"dilation", "pad"}]}`` and ``"msc"`` is None (the VGG graphs are single-scale).

Options that express other ports' networks exactly (all optional; the defaults keep the Caffe
DeepLab behaviour):

* ``"norm"``: ``"bn"`` (default) or ``"gn"`` (GroupNorm with ``"gn_groups"`` groups, default 32)
  in every ``ConvBN``; ``"weight_std"`` (bool): weight-standardised convolutions (``WSConv2d``);
* ``"stride_in_1x1"`` (bool, default ``True``): the stride on a block's 1x1 ``branch2a``
  (Caffe/MSRA) or, ``False``, on its 3x3 ``branch2b`` (torchvision, Detectron2);
* ``"input_std"`` (3 positive numbers, B, G, R): the input (BGR minus the mean) is divided by
  them; ``"input_rgb"`` (bool): its channels are then reversed for a network trained on RGB;
* ``"align_corners"`` (bool, default ``True``): the bilinear resizes inside v3/v3+ (image
  pooling, decoder) align corners (Caffe/TF) or use PyTorch's half-pixel rule (Detectron2);
* stem ``"deep_channels"`` (int): three 3x3 convs (``conv1`` to that width, ``conv2``, ``conv3``
  to ``channels``) instead of one; stem ``"pool_ceil"`` (bool, default ``True``);
* head ``"pooling_norm"`` (bool, default ``True``; ``False``: the image-pooling 1x1 conv has a
  bias and no norm), ``"pooling_kernel"`` ([kh, kw]: average over that window with stride 1,
  then resize, instead of global pooling), ``"separable"`` (depthwise-separable 3x3 branches);
* decoder ``"low_level_first"`` (bool: concatenate the reduced low-level features before the
  upsampled ASPP output) and ``"separable"`` (one 5x5 depthwise-separable fuse conv).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "default_config", "default_v3_config", "default_vgg_config", "validate_config", "block_ids", "scale_name",
    "smallest_input_size", "accepts_input_size", "output_stride", "ARCHS",
    "VOC_MEAN_BGR", "COCOSTUFF_MEAN_BGR", "IMAGENET_MEAN_BGR", "DEFAULT_MSC_SCALES", "MSC_CAFFE_SUFFIXES", "MSC_RESIZES",
]

ARCHS = ("deeplab_v2", "deeplab_v3", "deeplab_v3plus", "deeplab_vgg")
STAGE_NAMES = ("res2", "res3", "res4", "res5")
#: the mean pixel (B, G, R) the networks' input has subtracted: the VOC / COCO-init graphs' ...
VOC_MEAN_BGR: tuple[float, float, float] = (104.008, 116.669, 122.675)
#: ... the official COCO-Stuff DeepLab prototxts' ("adapted to COCO") ...
COCOSTUFF_MEAN_BGR: tuple[float, float, float] = (104.0, 114.1, 120.1)
#: ... and torchvision's ImageNet mean (RGB 123.675, 116.28, 103.53) in BGR order, which
#: Detectron2's DeepLab configs and DeepLabv3.pytorch subtract (their std is in the model config)
IMAGENET_MEAN_BGR: tuple[float, float, float] = (103.53, 116.28, 123.675)
#: the official MSC graphs' extra scales, in their pyramid order: 0.5x, then 0.75x
DEFAULT_MSC_SCALES = ({"shrink": 2, "zoom": 1}, {"shrink": 4, "zoom": 3})
#: (shrink, zoom) of an MSC scale -> the suffix of its copy's Caffe layer names (``conv1_res075``);
#: ``scale_name`` gives the PyTorch name of the same scale (``0.75x``)
MSC_CAFFE_SUFFIXES = {(4, 3): "res075", (2, 1): "res05"}
#: how MSC resizes its pyramid (``config["msc"]["resize"]``, optional, default ``"caffe"``): Caffe's
#: ``Interp`` (sizes by its arithmetic, corners aligned), or the seed port deeplab-pytorch's
#: ``F.interpolate(scale_factor=..., align_corners=False)``, to evaluate its weights as it did:
#: ``"deeplab-pytorch"`` with torch >= 1.6's meaning (source ``(y + 0.5) / scale - 0.5``),
#: ``"deeplab-pytorch-pre1.6"`` with the older one (the scale recomputed from the floored output
#: size: source ``(y + 0.5) * in / out - 0.5``), which the port's published rows ran under
MSC_RESIZES = ("caffe", "deeplab-pytorch", "deeplab-pytorch-pre1.6")

_COMMON_KEYS = {"arch", "n_classes", "in_channels", "bn_eps", "stem", "stages", "msc"}
_ARCH_KEYS = {
    "deeplab_v2": {"classifier"},
    "deeplab_v3": {"head"},
    "deeplab_v3plus": {"head", "decoder"},
}
_OPTIONAL_KEYS = {"freeze_bn", "norm", "gn_groups", "weight_std", "stride_in_1x1", "input_std",
                  "input_rgb", "align_corners"}
_HEAD_KEYS = {"channels", "rates", "image_pooling", "dropout"}
_HEAD_OPTIONAL_KEYS = {"pooling_norm", "pooling_kernel", "separable"}
_DECODER_KEYS = {"low_level_channels", "channels"}
_DECODER_OPTIONAL_KEYS = {"low_level_first", "separable"}
_STEM_KEYS = {"channels", "conv_kernel", "conv_stride", "conv_pad", "pool_kernel", "pool_stride",
              "pool_pad"}
_STEM_OPTIONAL_KEYS = {"deep_channels", "pool_ceil"}
_STAGE_KEYS = {"name", "blocks", "mid_channels", "out_channels", "stride", "dilation"}
_STAGE_OPTIONAL_KEYS = {"multi_grid"}
_BRANCH_KEYS = {"kernel", "dilation", "pad", "bias"}
_SCALE_KEYS = {"shrink", "zoom"}


def block_ids(n_blocks: int) -> list[str]:
    """Caffe block ids of a stage: ``a, b, c`` for at most 3 blocks, else ``a, b1, b2, ...``."""
    if n_blocks < 1:
        raise ValueError(f"a stage needs at least one block, got {n_blocks}")
    if n_blocks <= 3:
        return ["a", "b", "c"][:n_blocks]
    return ["a"] + [f"b{i}" for i in range(1, n_blocks)]


def scale_name(scale: dict[str, int]) -> str:
    """Name of an MSC scale as Caffe/the seed port writes it: ``{shrink 4, zoom 3}`` -> ``"0.75x"``."""
    return f"{scale['zoom'] / scale['shrink']:g}x"


def _feature_side(config: dict[str, Any], n: int) -> int:
    """The backbone's output side for an input side ``n`` (ResNet archs): the stem conv and pool
    (floor, or ceil mode dropping a last window that starts in the padding), then each stage's
    strided conv ``(n - 1) // stride + 1``."""
    stem = config["stem"]
    n = (n + 2 * stem["conv_pad"] - stem["conv_kernel"]) // stem["conv_stride"] + 1
    k, s, p = stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"]
    if stem.get("pool_ceil", True):
        pooled = -(-(n + 2 * p - k) // s) + 1
        n = pooled - 1 if p and (pooled - 1) * s >= n + p else pooled
    else:
        n = (n + 2 * p - k) // s + 1
    for stage in config["stages"]:
        n = (n - 1) // stage["stride"] + 1
    return n


def smallest_input_size(config: dict[str, Any]) -> tuple[int, int]:
    """``(H, W)``, pixels: the smallest input every network built from ``config`` accepts.
    ``(1, 1)`` unless the head averages over a fixed window (``head.pooling_kernel``,
    Detectron2's 32 x 64), whose height and width must divide the features' (Detectron2's
    ``ASPP`` check): then the smallest sides whose features are exactly the window. Sides up to
    ``stride - 1`` pixels larger give the same features; the next accepted ones give twice the
    window (at about twice the size)."""
    kernel = (config.get("head") or {}).get("pooling_kernel")
    if kernel is None:
        return 1, 1
    stride = config["stem"]["conv_stride"] * config["stem"]["pool_stride"] * math.prod(
        stage["stride"] for stage in config["stages"])
    sides = []
    for k in (int(kernel[0]), int(kernel[1])):
        n = max(1, (k - 1) * stride - stride)
        while _feature_side(config, n) < k:
            n += 1
        sides.append(n)
    return sides[0], sides[1]


def accepts_input_size(config: dict[str, Any], size: Sequence[int]) -> bool:
    """Whether a network built from ``config`` accepts an ``(H, W)`` input: always, unless the head
    averages over a fixed window, which must then divide the features on each side."""
    kernel = (config.get("head") or {}).get("pooling_kernel")
    return kernel is None or all(
        _feature_side(config, int(n)) % int(k) == 0 for n, k in zip(size, kernel))


def output_stride(config: dict[str, Any]) -> int:
    """The ratio of input to logits size (ResNet archs): the stem's and the stages' strides,
    up to ``res2`` for v3+ (its decoder's features). ``ValueError`` for ``deeplab_vgg``."""
    if config["arch"] == "deeplab_vgg":
        raise ValueError("output_stride: defined for the ResNet archs, not deeplab_vgg")
    stem = config["stem"]
    stages = config["stages"][:1] if config["arch"] == "deeplab_v3plus" else config["stages"]
    return int(stem["conv_stride"] * stem["pool_stride"] * math.prod(stage["stride"] for stage in stages))


def _stem(channels: int) -> dict[str, int]:
    return {"channels": channels, "conv_kernel": 7, "conv_stride": 2, "conv_pad": 3,
            "pool_kernel": 3, "pool_stride": 2, "pool_pad": 1}


def _stages(
    n_blocks: Sequence[int],
    stem_channels: int,
    widths: Sequence[int] | None,
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[dict[str, Any]]:
    n_blocks = list(n_blocks)
    if len(n_blocks) != 4:
        raise ValueError(f"n_blocks must give 4 stages (res2..res5), got {n_blocks}")
    if widths is None:
        mids = [stem_channels * 2**i for i in range(4)]
    else:
        mids = list(widths)
        if len(mids) != 4:
            raise ValueError(f"widths must give 4 mid-channel counts (res2..res5), got {mids}")
    return [
        {"name": name, "blocks": block_ids(n), "mid_channels": mid, "out_channels": 4 * mid,
         "stride": stride, "dilation": dilation}
        for name, n, mid, stride, dilation in zip(STAGE_NAMES, n_blocks, mids, strides, dilations)
    ]


def default_config(
    n_classes: int,
    n_blocks: Sequence[int] = (3, 4, 23, 3),
    aspp_rates: Sequence[int] | None = (6, 12, 18, 24),
    msc: bool = False,
    stem_channels: int = 64,
    widths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The official DeepLab v2 ResNet config (ResNet-101 with ASPP by default).

    ``aspp_rates=None`` gives the single 1x1 classifier of ``init.caffemodel``; ``msc=True``
    adds the 0.75x and 0.5x scales. ``stem_channels`` scales the whole net: stage ``i``
    (0 = res2) has ``mid = stem_channels * 2**i`` and ``out = 4 * mid`` channels, unless
    ``widths`` gives the four ``mid`` values explicitly (``out`` stays ``4 * mid``).
    """
    if aspp_rates is None:
        branches = [{"kernel": 1, "dilation": 1, "pad": 0, "bias": True}]
    else:
        branches = [{"kernel": 3, "dilation": r, "pad": r, "bias": True} for r in aspp_rates]
    config: dict[str, Any] = {
        "arch": "deeplab_v2",
        "n_classes": n_classes,
        "in_channels": 3,
        "bn_eps": 1e-5,
        "stem": _stem(stem_channels),
        "stages": _stages(n_blocks, stem_channels, widths, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
        "classifier": {"branches": branches},
        "msc": {"scales": [dict(s) for s in DEFAULT_MSC_SCALES]} if msc else None,
    }
    validate_config(config)
    return config


def default_v3_config(
    n_classes: int,
    plus: bool = False,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = (1, 2, 4),
    n_blocks: Sequence[int] = (3, 4, 23, 3),
    stem_channels: int = 64,
    widths: Sequence[int] | None = None,
    head_channels: int = 256,
    msc: bool = False,
) -> dict[str, Any]:
    """DeepLab v3 (``plus=False``) or v3+ config on the same Caffe-style ResNet backbone.

    ``output_stride`` 16 gives res4 stride 2 / res5 dilation 2 and ASPP rates (6, 12, 18);
    8 gives res4 dilation 2 / res5 dilation 4 and rates (12, 24, 36). ``multi_grid`` (one factor
    per res5 block, or None) multiplies res5's dilation per block. BatchNorm is trainable
    (``freeze_bn: false``), as v3's recipe fine-tunes it; set it to true for small batches.
    """
    if output_stride == 16:
        strides, dilations, rates = (1, 2, 2, 1), (1, 1, 1, 2), [6, 12, 18]
    elif output_stride == 8:
        strides, dilations, rates = (1, 2, 1, 1), (1, 1, 2, 4), [12, 24, 36]
    else:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    stages = _stages(n_blocks, stem_channels, widths, strides=strides, dilations=dilations)
    if multi_grid is not None:
        stages[3]["multi_grid"] = list(multi_grid)
    config: dict[str, Any] = {
        "arch": "deeplab_v3plus" if plus else "deeplab_v3",
        "n_classes": n_classes,
        "in_channels": 3,
        "bn_eps": 1e-5,
        "stem": _stem(stem_channels),
        "stages": stages,
        "head": {"channels": head_channels, "rates": rates, "image_pooling": True, "dropout": 0.1},
        "msc": {"scales": [dict(s) for s in DEFAULT_MSC_SCALES]} if msc else None,
        "freeze_bn": False,
    }
    if plus:
        config["decoder"] = {"low_level_channels": 48, "channels": head_channels}
    validate_config(config)
    return config


def _fail(key: str, problem: str) -> None:
    raise ValueError(f"invalid model config: {key} {problem}")


def _int(value: Any, key: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, f"must be an int, got {value!r}")
    if value < minimum:
        _fail(key, f"must be >= {minimum}, got {value}")


def _keys(obj: Any, key: str, required: set[str], optional: set[str] | None = None) -> None:
    optional = optional or set()
    if not isinstance(obj, dict):
        _fail(key, f"must be a dict, got {type(obj).__name__}")
    missing = sorted(required - obj.keys())
    if missing:
        _fail(f"{key}[{missing[0]!r}]", "is missing")
    unknown = sorted(set(obj) - required - optional)
    if unknown:
        _fail(f"{key}[{unknown[0]!r}]", "is not a known key")


def validate_config(config: dict[str, Any]) -> None:
    """Check a model config; raise ``ValueError`` naming the first bad key (e.g.
    ``config['stages'][2]['dilation']``). Returns ``None`` when the config is valid."""
    if not isinstance(config, dict):
        _fail("config", f"must be a dict, got {type(config).__name__}")
    arch = config.get("arch")
    if arch not in ARCHS:
        _fail("config['arch']", f"must be one of {list(ARCHS)}, got {arch!r}")
    if arch == "deeplab_vgg":
        _validate_vgg(config)
        return
    _keys(config, "config", _COMMON_KEYS | _ARCH_KEYS[arch], _OPTIONAL_KEYS)
    _int(config["n_classes"], "config['n_classes']", 1)
    _int(config["in_channels"], "config['in_channels']", 1)
    eps = config["bn_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        _fail("config['bn_eps']", f"must be a positive number, got {eps!r}")
    _validate_options(config)

    stem = config["stem"]
    _keys(stem, "config['stem']", _STEM_KEYS, _STEM_OPTIONAL_KEYS)
    for k in sorted(_STEM_KEYS):
        _int(stem[k], f"config['stem'][{k!r}]", 0 if k.endswith("pad") else 1)
    if "deep_channels" in stem:
        _int(stem["deep_channels"], "config['stem']['deep_channels']", 1)
    _bool(stem, "pool_ceil", "config['stem']")

    stages = config["stages"]
    if not isinstance(stages, list) or len(stages) != 4:
        _fail("config['stages']", "must be a list of 4 stages (res2..res5)")
    for i, stage in enumerate(stages):
        key = f"config['stages'][{i}]"
        _keys(stage, key, _STAGE_KEYS, _STAGE_OPTIONAL_KEYS)
        if stage["name"] != STAGE_NAMES[i]:
            _fail(f"{key}['name']", f"must be {STAGE_NAMES[i]!r}, got {stage['name']!r}")
        blocks = stage["blocks"]
        if not isinstance(blocks, list) or not blocks:
            _fail(f"{key}['blocks']", "must be a non-empty list of block ids")
        if blocks != block_ids(len(blocks)):
            _fail(f"{key}['blocks']", f"must be {block_ids(len(blocks))} (Caffe ids), got {blocks}")
        for k in ("mid_channels", "out_channels", "stride", "dilation"):
            _int(stage[k], f"{key}[{k!r}]", 1)
        if "multi_grid" in stage:
            grid = stage["multi_grid"]
            if not isinstance(grid, list) or len(grid) != len(blocks):
                _fail(f"{key}['multi_grid']", f"must be a list of {len(blocks)} ints (one per block)")
            for j, g in enumerate(grid):
                _int(g, f"{key}['multi_grid'][{j}]", 1)

    if arch == "deeplab_v2":
        _validate_v2_classifier(config)
    else:
        _validate_v3_head(config)
    _validate_msc(config)


def _bool(obj: dict[str, Any], key: str, where: str) -> None:
    if key in obj and not isinstance(obj[key], bool):
        _fail(f"{where}[{key!r}]", f"must be true or false, got {obj[key]!r}")


def _validate_options(config: dict[str, Any]) -> None:
    """The optional top-level keys (see the module docstring)."""
    for key in ("freeze_bn", "weight_std", "stride_in_1x1", "input_rgb", "align_corners"):
        _bool(config, key, "config")
    if config.get("norm", "bn") not in ("bn", "gn"):
        _fail("config['norm']", f"must be 'bn' or 'gn', got {config['norm']!r}")
    if "gn_groups" in config:
        _int(config["gn_groups"], "config['gn_groups']", 1)
    if "input_std" in config:
        std = config["input_std"]
        if (not isinstance(std, list) or len(std) != config["in_channels"]
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                           for v in std)):
            _fail("config['input_std']", f"must be a list of {config['in_channels']} positive numbers, got {std!r}")


def _validate_v3_head(config: dict[str, Any]) -> None:
    head = config["head"]
    _keys(head, "config['head']", _HEAD_KEYS, _HEAD_OPTIONAL_KEYS)
    for key in ("pooling_norm", "separable"):
        _bool(head, key, "config['head']")
    if head.get("pooling_kernel") is not None:
        kernel = head["pooling_kernel"]
        if not isinstance(kernel, list) or len(kernel) != 2:
            _fail("config['head']['pooling_kernel']", f"must be [height, width] or null, got {kernel!r}")
        for j, k in enumerate(kernel):
            _int(k, f"config['head']['pooling_kernel'][{j}]", 1)
        if config.get("msc"):
            _fail("config['head']['pooling_kernel']", "needs msc null: a pyramid's scaled inputs cannot all give "
                  "features that are multiples of the window")
    _int(head["channels"], "config['head']['channels']", 1)
    rates = head["rates"]
    if not isinstance(rates, list):
        _fail("config['head']['rates']", f"must be a list of ints, got {rates!r}")
    for j, r in enumerate(rates):
        _int(r, f"config['head']['rates'][{j}]", 1)
    if not isinstance(head["image_pooling"], bool):
        _fail("config['head']['image_pooling']", f"must be true or false, got {head['image_pooling']!r}")
    p = head["dropout"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        _fail("config['head']['dropout']", f"must be a probability in [0, 1), got {p!r}")
    if "decoder" in config:
        decoder = config["decoder"]
        _keys(decoder, "config['decoder']", _DECODER_KEYS, _DECODER_OPTIONAL_KEYS)
        for key in ("low_level_first", "separable"):
            _bool(decoder, key, "config['decoder']")
        _int(decoder["low_level_channels"], "config['decoder']['low_level_channels']", 1)
        _int(decoder["channels"], "config['decoder']['channels']", 1)


def _validate_v2_classifier(config: dict[str, Any]) -> None:
    branches = config["classifier"]
    _keys(branches, "config['classifier']", {"branches"})
    branches = branches["branches"]
    if not isinstance(branches, list) or not branches:
        _fail("config['classifier']['branches']", "must be a non-empty list")
    for i, branch in enumerate(branches):
        key = f"config['classifier']['branches'][{i}]"
        _keys(branch, key, _BRANCH_KEYS)
        _int(branch["kernel"], f"{key}['kernel']", 1)
        _int(branch["dilation"], f"{key}['dilation']", 1)
        _int(branch["pad"], f"{key}['pad']", 0)
        if not isinstance(branch["bias"], bool):
            _fail(f"{key}['bias']", f"must be true or false, got {branch['bias']!r}")


def _validate_msc(config: dict[str, Any]) -> None:
    msc = config["msc"]
    if msc is not None:
        _keys(msc, "config['msc']", {"scales"}, {"resize"})
        if msc.get("resize", "caffe") not in MSC_RESIZES:
            _fail("config['msc']['resize']", f"must be one of {list(MSC_RESIZES)}, got {msc['resize']!r}")
        scales = msc["scales"]
        if not isinstance(scales, list) or not scales:
            _fail("config['msc']['scales']", "must be a non-empty list")
        names = set()
        for i, scale in enumerate(scales):
            key = f"config['msc']['scales'][{i}]"
            _keys(scale, key, _SCALE_KEYS)
            _int(scale["shrink"], f"{key}['shrink']", 1)
            _int(scale["zoom"], f"{key}['zoom']", 1)
            name = scale_name(scale)
            if name in names or name in ("1x", "fused"):
                _fail(key, f"duplicates the scale {name!r}")
            names.add(name)



_VGG_KEYS = {"arch", "n_classes", "in_channels", "stages", "pool5a", "classifier", "msc"}
_POOL_KEYS = {"kind", "kernel", "stride", "pad"}


def default_vgg_config(n_classes: int, aspp: bool = False, width_divisor: int = 1) -> dict[str, Any]:
    """The official DeepLab-VGG16 configs: DeepLab v1 LargeFOV (``aspp=False``: ``pool5a``,
    one fc6 at dilation 12) or DeepLab v2 VGG16 ASPP-L (``aspp=True``: four branches at
    dilations 6/12/18/24, no ``pool5a``). Pool1-3 are 3x3 stride 2 pad 1, pool4/5 3x3 stride 1
    pad 1, conv5 dilation 2, fc6/fc7 1024 channels; ``width_divisor`` shrinks every width."""
    def pool(stride: int, kind: str = "max") -> dict[str, Any]:
        return {"kind": kind, "kernel": 3, "stride": stride, "pad": 1}

    widths = [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3]
    stages = [{"channels": [w // width_divisor for w in ws], "pad": 2 if s == 4 else 1, "dilation": 2 if s == 4 else 1,
               "pool": pool(2 if s < 3 else 1)} for s, ws in enumerate(widths)]
    rates = (6, 12, 18, 24) if aspp else (12,)
    config = {
        "arch": "deeplab_vgg", "n_classes": n_classes, "in_channels": 3, "stages": stages,
        "pool5a": None if aspp else pool(1, "ave"),
        "classifier": {"channels": 1024 // width_divisor, "dropout": 0.5,
                       "branches": [{"kernel": 3, "dilation": r, "pad": r} for r in rates]},
        "msc": None,
    }
    validate_config(config)
    return config


def _validate_pool(pool: Any, key: str) -> None:
    _keys(pool, key, _POOL_KEYS)
    if pool["kind"] not in ("max", "ave"):
        _fail(f"{key}['kind']", f"must be 'max' or 'ave', got {pool['kind']!r}")
    for k in ("kernel", "stride", "pad"):
        _int(pool[k], f"{key}[{k!r}]", 0 if k == "pad" else 1)


def _validate_vgg(config: dict[str, Any]) -> None:
    _keys(config, "config", _VGG_KEYS, _OPTIONAL_KEYS)
    _int(config["n_classes"], "config['n_classes']", 1)
    _int(config["in_channels"], "config['in_channels']", 1)
    stages = config["stages"]
    if not isinstance(stages, list) or len(stages) != 5:
        _fail("config['stages']", "must be a list of 5 stages (conv1..conv5)")
    for i, stage in enumerate(stages):
        key = f"config['stages'][{i}]"
        _keys(stage, key, {"channels", "pad", "dilation", "pool"})
        if not isinstance(stage["channels"], list) or not stage["channels"]:
            _fail(f"{key}['channels']", "must be a non-empty list of widths")
        for j, width in enumerate(stage["channels"]):
            _int(width, f"{key}['channels'][{j}]", 1)
        _int(stage["pad"], f"{key}['pad']", 0)
        _int(stage["dilation"], f"{key}['dilation']", 1)
        _validate_pool(stage["pool"], f"{key}['pool']")
    if config["pool5a"] is not None:
        _validate_pool(config["pool5a"], "config['pool5a']")
    head = config["classifier"]
    _keys(head, "config['classifier']", {"channels", "dropout", "branches"})
    _int(head["channels"], "config['classifier']['channels']", 1)
    p = head["dropout"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        _fail("config['classifier']['dropout']", f"must be a probability in [0, 1), got {p!r}")
    if not isinstance(head["branches"], list) or not head["branches"]:
        _fail("config['classifier']['branches']", "must be a non-empty list")
    for i, branch in enumerate(head["branches"]):
        key = f"config['classifier']['branches'][{i}]"
        _keys(branch, key, {"kernel", "dilation", "pad"})
        for k in ("kernel", "dilation", "pad"):
            _int(branch[k], f"{key}[{k!r}]", 0 if k == "pad" else 1)
    if config["msc"] is not None:
        _fail("config['msc']", "must be None for deeplab_vgg (the VGG graphs are single-scale)")
