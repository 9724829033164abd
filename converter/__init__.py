"""Reading DeepLab Caffe files and mapping them onto the PyTorch DeepLab v2 (see docs/architecture.md)."""

from deeplab_caffe.converter.conversion import Conversion, convert
from deeplab_caffe.converter.errors import CaffeFileError, ConversionError
from deeplab_caffe.converter.read import CaffeLayer, read_caffemodel, read_caffemodel_layers, read_prototxt

__all__ = ["CaffeFileError", "CaffeLayer", "Conversion", "ConversionError", "convert", "read_caffemodel", "read_caffemodel_layers",
           "read_prototxt"]
