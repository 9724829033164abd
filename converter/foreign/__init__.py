"""Other ports' checkpoints onto our models: key rules as data (``rules``), one module per port.

``FORMATS`` names each importable layout (``deeplab-convert --from NAME``);
``rules.import_checkpoint(path, FORMATS[name])`` runs an import.
"""

from deeplab_caffe.converter.foreign.rules import (ForeignFormat, ImportResult, KeyMapping, KeyRecord, Rule,
                                                   export_state_dict, import_checkpoint, map_state_dict)
from deeplab_caffe.converter.foreign import seed_port

#: layout name -> ForeignFormat (``deeplab-convert --from NAME``); one entry per port's module
FORMATS: dict[str, ForeignFormat] = {seed_port.FORMAT.name: seed_port.FORMAT}

__all__ = ["FORMATS", "ForeignFormat", "ImportResult", "KeyMapping", "KeyRecord", "Rule", "export_state_dict",
           "import_checkpoint", "map_state_dict"]

from deeplab_caffe.converter.foreign.detectron2 import DETECTRON2  # noqa: E402 (registers after FORMATS exists)

FORMATS[DETECTRON2.name] = DETECTRON2

from deeplab_caffe.converter.foreign.deeplabv3_pytorch import DEEPLABV3_PYTORCH  # noqa: E402

FORMATS[DEEPLABV3_PYTORCH.name] = DEEPLABV3_PYTORCH
