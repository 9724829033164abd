"""Other ports' checkpoints onto our models: key rules as data (``rules``), one module per port.

``FORMATS`` names each importable layout (``deeplab-convert --from NAME``);
``rules.import_checkpoint(path, FORMATS[name])`` runs an import.
"""

from deeplab_caffe.converter.foreign.rules import (ForeignFormat, ImportResult, KeyMapping, KeyRecord, Rule,
                                                   export_state_dict, import_checkpoint, map_state_dict)
from deeplab_caffe.converter.foreign import deeplabv3_pytorch, detectron2, seed_port

#: layout name -> ForeignFormat (``deeplab-convert --from NAME``); one entry per port's module
FORMATS: dict[str, ForeignFormat] = {fmt.name: fmt for fmt in (
    seed_port.FORMAT, detectron2.DETECTRON2, deeplabv3_pytorch.DEEPLABV3_PYTORCH)}

__all__ = ["FORMATS", "ForeignFormat", "ImportResult", "KeyMapping", "KeyRecord", "Rule", "export_state_dict",
           "import_checkpoint", "map_state_dict"]

