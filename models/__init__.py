"""PyTorch networks that match Caffe DeepLab exactly, built from a plain config dict.

``build_model(config)`` is the one entry; see ``docs/architecture.md`` for the config layout
and the module names the converter maps Caffe layers onto.
"""

from .build import build_model
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .config import (COCOSTUFF_MEAN_BGR, DEFAULT_MSC_SCALES, IMAGENET_MEAN_BGR, MSC_CAFFE_SUFFIXES, MSC_RESIZES,
                     VOC_MEAN_BGR, default_config, default_v3_config, default_vgg_config, output_stride, scale_name,
                     smallest_input_size, accepts_input_size, validate_config)
from .deeplab_v2 import ASPP, MSC, DeepLabV2
from .deeplab_v3 import DeepLabV3, DeepLabV3Plus, InputSizeError
from .inference import InferenceModel, optimize_for_inference
from .interp import CaffeInterp, caffe_interp, caffe_interp_layer, caffe_interp_size
from .resnet import score_map_size
from .vgg import DeepLabVGG

__all__ = [
    "build_model",
    "default_config",
    "smallest_input_size",
    "output_stride",
    "accepts_input_size",
    "InputSizeError",
    "validate_config",
    "default_v3_config",
    "default_vgg_config",
    "DeepLabVGG",
    "DeepLabV2",
    "DeepLabV3",
    "DeepLabV3Plus",
    "MSC",
    "ASPP",
    "caffe_interp",
    "caffe_interp_size",
    "optimize_for_inference",
    "InferenceModel",
    "score_map_size",
    "caffe_interp_layer",
    "CaffeInterp",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "CheckpointError",
    "VOC_MEAN_BGR",
    "COCOSTUFF_MEAN_BGR",
    "IMAGENET_MEAN_BGR",
    "DEFAULT_MSC_SCALES",
    "MSC_CAFFE_SUFFIXES",
    "MSC_RESIZES",
    "scale_name",
]
