"""An independent, small re-implementation of the seed port's (kazuto1011/deeplab-pytorch) DeepLab v2
MSC, written for the tests from its documented layout and conventions, not from this package:

* module names: ``base.layer1.conv1.{conv,bn}`` + ``base.layer1.pool``; ``base.layer{2-5}.block{k}``
  with ``reduce`` (1x1, carries the stride), ``conv3x3`` (dilated), ``increase`` (1x1) and, in
  the first block, ``shortcut``, each a Sequential ``conv`` / ``bn`` (/ ReLU); ``base.aspp.c{i}``;
* BatchNorm eps 1e-5; max pool 3/2 pad 1 with ceil mode; output stride 8 (res4 dilation 2, res5 4);
* MSC: the input resized by ``F.interpolate(scale_factor=s, align_corners=False)`` for s in
  0.5, 0.75, every score map resized to the 1x map's size with ``align_corners=False``, max fused.
  Under torch < 1.6 (``torch_pre16``; the port's 2019 runs) ``F.interpolate(scale_factor=s)``
  computed the size ``floor(H * s)`` and then resized *to that size* (the kernel's scale
  recomputed as ``H / floor(H * s)``), which is what this reference does then.

Its test loop (``main.py test`` @ 4219467): ``libs/datasets/base.py`` reads the image with
``cv2.imread(...).astype(np.float32)`` and does ``image -= self.mean_bgr`` (``np.array`` of the
config's floats: float64, so numpy computes in float64 and stores float32), transposes to CHW;
the MSC logits are resized to the label with ``F.interpolate(align_corners=False)``, softmaxed,
argmaxed; ``libs/utils/metric.py`` bins labels in ``[0, n_class)`` into a confusion matrix and
computes PA, mean accuracy (nanmean), mean IoU (nanmean over classes present in the labels) and
FWIoU. Training (``main.py train``): every MSC output (1x, 0.5x, 0.75x, max) against the label
resized by ``PIL.Image.resize((H, W), NEAREST)`` of the float label, ``nn.CrossEntropyLoss
(ignore_index)`` summed over the outputs.

``width`` scales the port's channel plan (64 * 2**i) down so that the tests run in seconds.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, dilation: int = 1,
            relu: bool = True) -> nn.Sequential:
    layers = [("conv", nn.Conv2d(cin, cout, k, stride, pad, dilation, bias=False)), ("bn", nn.BatchNorm2d(cout, eps=1e-5))]
    if relu:
        layers.append(("relu", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int, first: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.reduce = conv_bn(cin, mid, 1, stride)
        self.conv3x3 = conv_bn(mid, mid, 3, 1, dilation, dilation)
        self.increase = conv_bn(mid, cout, 1, relu=False)
        self.shortcut = conv_bn(cin, cout, 1, stride, relu=False) if first else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


def res_layer(n: int, cin: int, cout: int, stride: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict((f"block{i + 1}", Block(cin if i == 0 else cout, cout, stride if i == 0 else 1, dilation,
                                                        i == 0)) for i in range(n)))


class ASPP(nn.Module):
    def __init__(self, cin: int, n_classes: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        for i, r in enumerate(rates):
            setattr(self, f"c{i}", nn.Conv2d(cin, n_classes, 3, 1, r, r, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.children())


def deeplab_v2(n_classes: int, n_blocks: tuple[int, int, int, int], width: int = 64,
               rates: tuple[int, ...] = (6, 12, 18, 24)) -> nn.Sequential:
    ch = [width * 2**p for p in range(6)]
    stem = nn.Sequential(OrderedDict(conv1=conv_bn(3, ch[0], 7, 2, 3), pool=nn.MaxPool2d(3, 2, 1, ceil_mode=True)))
    return nn.Sequential(OrderedDict(
        layer1=stem,
        layer2=res_layer(n_blocks[0], ch[0], ch[2], 1, 1),
        layer3=res_layer(n_blocks[1], ch[2], ch[3], 2, 1),
        layer4=res_layer(n_blocks[2], ch[3], ch[4], 1, 2),
        layer5=res_layer(n_blocks[3], ch[4], ch[5], 1, 4),
        aspp=ASPP(ch[5], n_classes, rates),
    ))


class MSC(nn.Module):
    def __init__(self, base: nn.Module, scales: tuple[float, ...] = (0.5, 0.75), torch_pre16: bool = False) -> None:
        super().__init__()
        self.base, self.scales, self.torch_pre16 = base, scales, torch_pre16

    def _scaled(self, x: torch.Tensor, s: float) -> torch.Tensor:
        if self.torch_pre16:
            size = [int(n * s) for n in x.shape[-2:]]
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The training outputs: 1x, each scale's own map, their max (1x size)."""
        full = self.base(x)
        pyramid = [self.base(self._scaled(x, s)) for s in self.scales]
        maps = [full] + [F.interpolate(m, size=full.shape[-2:], mode="bilinear", align_corners=False)
                         for m in pyramid]
        return [full, *pyramid, torch.stack(maps).max(dim=0).values]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[-1]


def seeded_port_model(n_classes: int = 5, n_blocks=(1, 4, 2, 1), width: int = 4, seed: int = 0,
                      torch_pre16: bool = False) -> MSC:
    """The reference with seeded weights and BatchNorm statistics far from 0/1, in eval mode."""
    torch.manual_seed(seed)
    model = MSC(deeplab_v2(n_classes, n_blocks, width), torch_pre16=torch_pre16)
    ranges = {"running_mean": (-0.5, 0.5), "running_var": (0.5, 2.0), "weight": (0.5, 1.5), "bias": (-0.3, 0.3)}
    with torch.no_grad():
        for key, tensor in model.state_dict().items():  # every BatchNorm tensor, by its name
            kind = key.rsplit(".", 1)[-1]
            if ".bn." in key and kind in ranges:
                tensor.uniform_(*ranges[kind])
            elif kind == "num_batches_tracked":
                tensor.fill_(20000)
    return model.eval()


def port_input(image_bgr: np.ndarray, mean_bgr: tuple[float, float, float]) -> np.ndarray:
    """``base.py``'s test input: float32 image, ``-=`` the float64 mean, CHW, float32."""
    image = image_bgr.astype(np.float32)
    image -= np.array(mean_bgr)
    return image.transpose(2, 0, 1).astype(np.float32)


def port_scores(gts: list[np.ndarray], preds: list[np.ndarray], n_class: int) -> tuple[np.ndarray, dict]:
    """``metric.py``: the confusion matrix (rows GT) and PA, MA, mIoU, FWIoU."""
    hist = np.zeros((n_class, n_class))
    for gt, pred in zip(gts, preds):
        gt, pred = gt.ravel(), pred.ravel()
        keep = (gt >= 0) & (gt < n_class)
        hist += np.bincount(n_class * gt[keep].astype(int) + pred[keep], minlength=n_class**2).reshape(n_class, n_class)
    diag = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"):
        iu = diag / (hist.sum(axis=1) + hist.sum(axis=0) - diag)
        freq = hist.sum(axis=1) / hist.sum()
        scores = {"Pixel Accuracy": diag.sum() / hist.sum(), "Mean Accuracy": np.nanmean(diag / hist.sum(axis=1)),
                  "Mean IoU": np.nanmean(iu[hist.sum(axis=1) > 0]),
                  "Frequency Weighted IoU": (freq[freq > 0] * iu[freq > 0]).sum()}
    return hist, scores


def port_test_loop(model: MSC, images_bgr: list[np.ndarray], labels: list[np.ndarray],
                   mean_bgr: tuple[float, float, float], n_class: int) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """``main.py test`` with batch 1: predictions, confusion matrix and scores."""
    preds = []
    with torch.no_grad():
        for image, label in zip(images_bgr, labels):
            logits = model(torch.from_numpy(port_input(image, mean_bgr))[None])
            logits = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)
            preds.append(torch.argmax(F.softmax(logits, dim=1), dim=1)[0].numpy())
    hist, scores = port_scores(labels, preds, n_class)
    return preds, hist, scores


def port_resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``main.py resize_labels``: each float label through ``PIL.Image.resize(size, NEAREST)``
    (PIL reads ``size`` as (width, height); the port passes (H, W))."""
    from PIL import Image

    return torch.LongTensor(np.stack([np.asarray(Image.fromarray(label.float().numpy()).resize(
        size, resample=Image.NEAREST)) for label in labels]))


def port_loss(model: MSC, images: torch.Tensor, labels: torch.Tensor, ignore_label: int = 255) -> torch.Tensor:
    """One ``main.py train`` iteration's loss (ITER_SIZE 1): the sum over the MSC outputs."""
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_label)
    total = torch.zeros(())
    for logit in model.outputs(images):
        _, _, h, w = logit.shape
        total = total + criterion(logit, port_resize_labels(labels, (h, w)))
    return total
