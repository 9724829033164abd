"""An independent, functional re-implementation of Detectron2's DeepLab v3 / v3+ inference
(``projects/DeepLab``, ``modeling/backbone/resnet.py``, ``layers/aspp.py``) that runs straight
from a state dict in Detectron2's names, and a writer of random checkpoints in that layout.

Written from Detectron2's semantics, not from our models: RGB input ``(x - PIXEL_MEAN) /
PIXEL_STD``; the "deeplab" stem (3x3/2, 3x3, 3x3, each Conv-BN-ReLU, max pool 3/2/1 floor);
bottlenecks with the stride on the 3x3 conv (``STRIDE_IN_1X1: False``) and a shortcut conv when
the channel count changes; the first block strided unless the stage is dilated; res5 dilations
``RES5_DILATION * multi_grid``; ASPP (1x1, three atrous 3x3, image pooling = AvgPool(kernel,
stride 1) + 1x1 conv with bias and ReLU, no norm, resized with ``align_corners=False``) ->
1x1 project -> dropout; the v3+ decoder ``cat([project_conv(res2), up(y)])`` + two 3x3 (or
one 5x5 depthwise-separable) fuse convs; predictor; ``F.interpolate(scale_factor=stride)``.

Read at Detectron2 @ 02b5c4e (facebookresearch/detectron2):
- ``detectron2/layers/aspp.py``: ``ASPP.forward`` raises ``ValueError`` when the input's height or
  width is not divisible by ``pool_kernel_size`` (``size[i] % pool_kernel_size[i]``);
- ``projects/DeepLab/deeplab/semantic_seg.py``: the heads' inference output is
  ``F.interpolate(y, scale_factor=common_stride, mode="bilinear", align_corners=False)``;
- ``detectron2/modeling/meta_arch/semantic_seg.py``: ``SemanticSegmentor`` normalises with its
  ``pixel_mean`` / ``pixel_std`` buffers, registered non-persistent from ``cfg.MODEL.PIXEL_MEAN`` /
  ``PIXEL_STD`` (a checkpoint's entries are not loaded into them), pads to the backbone's
  ``size_divisibility`` (0 for the DeepLab ResNet: no padding for one image) and calls
  ``sem_seg_postprocess``;
- ``detectron2/modeling/postprocessing.py``: ``sem_seg_postprocess`` crops
  ``result[:, :img_h, :img_w]`` and resizes that to the output size with ``align_corners=False``
  (the image's own size here: an identity).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MEAN_RGB = (123.675, 116.280, 103.530)
STD_RGB = (58.395, 57.120, 57.375)
ASPP_V3 = "sem_seg_head.aspp"
ASPP_V3PLUS = "sem_seg_head.decoder.res5.project_conv"


def _t(sd: dict, key: str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(sd[key]), dtype=torch.float64)


def conv(sd: dict, name: str, x: torch.Tensor, *, stride: int = 1, padding: int = 0, dilation: int = 1,
         groups: int = 1, norm: bool = True, relu: bool = True) -> torch.Tensor:
    """Detectron2's ``Conv2d(..., norm=BN, activation=relu)`` in eval mode, float64."""
    bias = _t(sd, f"{name}.bias") if f"{name}.bias" in sd else None
    y = F.conv2d(x, _t(sd, f"{name}.weight"), bias, stride, padding, dilation, groups)
    if norm:
        y = F.batch_norm(y, _t(sd, f"{name}.norm.running_mean"), _t(sd, f"{name}.norm.running_var"),
                         _t(sd, f"{name}.norm.weight"), _t(sd, f"{name}.norm.bias"), False, 0.0, 1e-5)
    return F.relu(y) if relu else y


def separable(sd: dict, name: str, x: torch.Tensor, kernel: int, padding: int, dilation: int = 1) -> torch.Tensor:
    """``DepthwiseSeparableConv2d`` with norm and ReLU on both convs."""
    y = conv(sd, f"{name}.depthwise", x, padding=padding, dilation=dilation, groups=x.shape[1])
    return conv(sd, f"{name}.pointwise", y)


def backbone(sd: dict, x: torch.Tensor, res5_multi_grid=(1, 2, 4), res4_dilation=1, res5_dilation=2) -> dict:
    x = conv(sd, "backbone.stem.conv1", x, stride=2, padding=1)
    x = conv(sd, "backbone.stem.conv2", x, padding=1)
    x = conv(sd, "backbone.stem.conv3", x, padding=1)
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    features = {}
    for idx, stage in enumerate(("res2", "res3", "res4", "res5")):
        dilation = {"res4": res4_dilation, "res5": res5_dilation}.get(stage, 1)
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        i = 0
        while f"backbone.{stage}.{i}.conv1.weight" in sd:
            name = f"backbone.{stage}.{i}"
            d = dilation * res5_multi_grid[i] if stage == "res5" else dilation
            s = first_stride if i == 0 else 1
            out = conv(sd, f"{name}.conv1", x)
            out = conv(sd, f"{name}.conv2", out, stride=s, padding=d, dilation=d)
            out = conv(sd, f"{name}.conv3", out, relu=False)
            short = conv(sd, f"{name}.shortcut", x, stride=s, relu=False) if f"{name}.shortcut.weight" in sd else x
            x = F.relu(out + short)
            i += 1
        features[stage] = x
    return features


def aspp(sd: dict, prefix: str, x: torch.Tensor, dilations=(6, 12, 18), pool_kernel=None) -> torch.Tensor:
    size = x.shape[-2:]
    res = [conv(sd, f"{prefix}.convs.0", x)]
    for j, d in enumerate(dilations, start=1):
        if f"{prefix}.convs.{j}.depthwise.weight" in sd:
            res.append(separable(sd, f"{prefix}.convs.{j}", x, 3, d, d))
        else:
            res.append(conv(sd, f"{prefix}.convs.{j}", x, padding=d, dilation=d))
    if pool_kernel is not None and (size[0] % pool_kernel[0] or size[1] % pool_kernel[1]):
        raise ValueError(f"pool_kernel_size {tuple(pool_kernel)} does not divide the input size {tuple(size)}")
    pooled = F.adaptive_avg_pool2d(x, 1) if pool_kernel is None else F.avg_pool2d(x, pool_kernel, stride=1)
    pooled = conv(sd, f"{prefix}.convs.4.1", pooled, norm=False)
    res.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
    return conv(sd, f"{prefix}.project", torch.cat(res, dim=1))  # dropout: identity in eval


def forward(sd: dict, image_rgb: torch.Tensor, pool_kernel=None, res5_multi_grid=(1, 2, 4), *,
            mean_rgb=MEAN_RGB, std_rgb=STD_RGB) -> torch.Tensor:
    """Detectron2's head output for ``N x 3 x H x W`` RGB 0-255 (float64): logits upsampled by
    ``scale_factor=common_stride``, ``ceil``-ish ``H / stride * stride`` tall (use ``postprocess``).
    ``mean_rgb`` / ``std_rgb``: the config's PIXEL_MEAN / PIXEL_STD (the file's entries never
    reach the model)."""
    mean = torch.tensor(mean_rgb, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(std_rgb, dtype=torch.float64).view(1, 3, 1, 1)
    features = backbone(sd, (image_rgb - mean) / std, res5_multi_grid)
    if f"{ASPP_V3}.convs.0.weight" in sd:
        y = aspp(sd, ASPP_V3, features["res5"], pool_kernel=pool_kernel)
        common_stride = 16
    else:
        y = aspp(sd, ASPP_V3PLUS, features["res5"], pool_kernel=pool_kernel)
        low = conv(sd, "sem_seg_head.decoder.res2.project_conv", features["res2"])
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = torch.cat([low, y], dim=1)
        fuse = "sem_seg_head.decoder.res2.fuse_conv"
        if f"{fuse}.depthwise.weight" in sd:
            y = separable(sd, fuse, y, 5, 2)
        else:
            y = conv(sd, f"{fuse}.1", conv(sd, f"{fuse}.0", y, padding=1), padding=1)
        common_stride = 4
    y = conv(sd, "sem_seg_head.predictor", y, norm=False, relu=False)
    return F.interpolate(y, scale_factor=common_stride, mode="bilinear", align_corners=False)


def postprocess(result: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """``sem_seg_postprocess`` of one ``C x h x w`` head output for an unresized ``image_size``
    input: the top-left crop, resized (``align_corners=False``) to the same size."""
    cropped = result[:, : image_size[0], : image_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(cropped, size=image_size, mode="bilinear", align_corners=False)[0]


def inference(sd: dict, image_rgb: torch.Tensor, pool_kernel=None, **kwargs) -> torch.Tensor:
    """``SemanticSegmentor`` in eval mode on one ``1 x 3 x H x W`` RGB image: ``1 x C x H x W``."""
    return postprocess(forward(sd, image_rgb, pool_kernel, **kwargs)[0], tuple(image_rgb.shape[-2:]))[None]


def _conv_norm(sd: dict, rng: np.random.Generator, name: str, cout: int, cin: int, k: int, norm: bool = True,
               bias: bool = False) -> None:
    sd[f"{name}.weight"] = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    if bias:
        sd[f"{name}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    if norm:
        sd[f"{name}.norm.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        sd[f"{name}.norm.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        sd[f"{name}.norm.running_mean"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        sd[f"{name}.norm.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)


def _separable_keys(sd, rng, name, cout, cin, k):
    _conv_norm(sd, rng, f"{name}.depthwise", cin, 1, k)
    _conv_norm(sd, rng, f"{name}.pointwise", cout, cin, 1)


def random_state(seed: int = 0, *, plus: bool = True, blocks=(1, 2, 2, 3), stem_out: int = 8, res2_out: int = 16,
                 bottleneck: int = 4, aspp_channels: int = 8, project_channels: int = 4, convs_dim: int = 8,
                 n_classes: int = 3, separable_convs: bool = False) -> dict[str, np.ndarray]:
    """A Detectron2 DeepLab state dict (names, shapes as ``build_resnet_deeplab_backbone`` and
    the heads create them), random float32 values; widths double per stage as Detectron2's."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    _conv_norm(sd, rng, "backbone.stem.conv1", stem_out // 2, 3, 3)
    _conv_norm(sd, rng, "backbone.stem.conv2", stem_out // 2, stem_out // 2, 3)
    _conv_norm(sd, rng, "backbone.stem.conv3", stem_out, stem_out // 2, 3)
    cin, cout, mid = stem_out, res2_out, bottleneck
    for stage, n in zip(("res2", "res3", "res4", "res5"), blocks):
        for i in range(n):
            name, block_in = f"backbone.{stage}.{i}", cin if i == 0 else cout
            if block_in != cout:
                _conv_norm(sd, rng, f"{name}.shortcut", cout, block_in, 1)
            _conv_norm(sd, rng, f"{name}.conv1", mid, block_in, 1)
            _conv_norm(sd, rng, f"{name}.conv2", mid, mid, 3)
            _conv_norm(sd, rng, f"{name}.conv3", cout, mid, 1)
        cin, cout, mid = cout, cout * 2, mid * 2
    prefix = ASPP_V3PLUS if plus else ASPP_V3
    _conv_norm(sd, rng, f"{prefix}.convs.0", aspp_channels, cin, 1)
    for j in (1, 2, 3):
        if separable_convs:
            _separable_keys(sd, rng, f"{prefix}.convs.{j}", aspp_channels, cin, 3)
        else:
            _conv_norm(sd, rng, f"{prefix}.convs.{j}", aspp_channels, cin, 3)
    _conv_norm(sd, rng, f"{prefix}.convs.4.1", aspp_channels, cin, 1, norm=False, bias=True)
    _conv_norm(sd, rng, f"{prefix}.project", aspp_channels, 5 * aspp_channels, 1)
    head_out = aspp_channels
    if plus:
        dec = "sem_seg_head.decoder.res2"
        _conv_norm(sd, rng, f"{dec}.project_conv", project_channels, res2_out, 1)
        if separable_convs:
            _separable_keys(sd, rng, f"{dec}.fuse_conv", convs_dim, project_channels + aspp_channels, 5)
        else:
            _conv_norm(sd, rng, f"{dec}.fuse_conv.0", convs_dim, project_channels + aspp_channels, 3)
            _conv_norm(sd, rng, f"{dec}.fuse_conv.1", convs_dim, convs_dim, 3)
        head_out = convs_dim
    _conv_norm(sd, rng, "sem_seg_head.predictor", n_classes, head_out, 1, norm=False, bias=True)
    return sd


def write_pkl(path: Path, state: dict[str, np.ndarray], protocol: int = 4, **extra) -> Path:
    """A model-zoo style ``.pkl``: ``{"model": state, "__author__": ..., **extra}``, pickled with
    ``protocol`` (4: Python 3.8-3.13's default; 5, Python 3.14's, stores numpy arrays for numpy's ``_frombuffer``)."""
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo", **extra}, f, protocol=protocol)
    return path
