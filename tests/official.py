"""The official DeepLab prototxts in ../shared/data/official, instantiated as their run scripts do."""

from __future__ import annotations

import os
import re
from pathlib import Path

#: ``../shared/data/official`` beside the checkout; ``DEEPLAB_OFFICIAL_DIR`` points elsewhere (a git
#: worktree whose parent folder has no ``shared``)
OFFICIAL = Path(os.environ.get("DEEPLAB_OFFICIAL_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "official")
MSC_TRAIN = "cocostuff_deeplabv2_resnet101_train.prototxt"
DEPLOY = "deeplabv2_resnet101_deploy.prototxt"


def official_text(name: str, **values: str) -> str:
    """The prototxt text with ``${VAR}`` filled from ``values``; unset variables become empty,
    as ``sed "$(eval echo $(cat sub.sed))"`` in the COCO-Stuff run script leaves them."""
    text = (OFFICIAL / name).read_text()
    return re.sub(r"\$\{([A-Z_]+)\}", lambda m: str(values.get(m[1], "")), text)


def official_prototxt(folder: Path, name: str, **values: str) -> Path:
    """``official_text`` written to ``folder`` (same file name); returns the path."""
    path = Path(folder) / name
    path.write_text(official_text(name, **values))
    return path


def commented_out_after(text: str, marker: str) -> str:
    """The lines after the first line holding ``marker`` that are comments, each with one ``#``
    taken off: the layers a copy of an official test net keeps commented out (ArgMax, MatWrite,
    DenseCRF, ...), made live, to append to a graph (a doubly commented line stays a comment)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    return "\n".join(line[1:] for line in lines[start:] if line.startswith("#")) + "\n"
