"""The official DeepLab v2 graphs read with the DeepLab fork's own schema (``../shared/data/official/``).

The fork's ``caffe.proto`` (saved verbatim there) is compiled with grpcio-tools' protoc into a
descriptor set and loaded into a private descriptor pool, so its ``caffe.*`` messages
(ImageSegData's fields, ``seg_accuracy_param`` = 144, ``mat_write_param`` = 145 holding strings,
``interp_param`` = 143) live beside our own ``caffe_pb2`` without clashing. Files written with
these classes are independent of our schema.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from official import OFFICIAL, official_text

FORK_PROTO = OFFICIAL / "deeplab_fork_caffe.proto"

# What the COCO-Stuff run script sets (SOURCES.md), and the same graph's VOC form.
COCOSTUFF = {"EXP": "cocostuff", "NUM_LABELS": "182", "NET_ID": "deeplabv2_resnet101"}
VOC12 = {"EXP": "voc12", "NUM_LABELS": "21", "NET_ID": "deeplabv2_resnet101"}


def compile_fork_schema(out_dir: Path) -> SimpleNamespace:
    """The fork's message classes (``.NetParameter``, ``.LayerParameter``, ...), compiled into ``out_dir``."""
    from grpc_tools import protoc  # test extra

    out_dir.mkdir(parents=True, exist_ok=True)
    descriptors = out_dir / "deeplab_fork_caffe.desc"
    status = protoc.main(["protoc", f"--proto_path={FORK_PROTO.parent}", f"--descriptor_set_out={descriptors}",
                          str(FORK_PROTO)])
    if status != 0:
        raise RuntimeError(f"protoc failed on {FORK_PROTO} (exit {status})")
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes()).file:
        pool.Add(file)
    names = ("NetParameter", "LayerParameter", "BlobProto", "BlobShape", "NetStateRule")
    return SimpleNamespace(**{n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{n}"))
                              for n in names})


def official_net(name: str, message_class, variables: dict[str, str] | None = None):
    """The official prototxt ``name`` (``official.MSC_TRAIN``, ``official.DEPLOY``) parsed with
    ``message_class`` after the run script's substitution."""
    return text_format.Parse(official_text(name, **(variables or {})), message_class())


@pytest.fixture(scope="module")
def fork(tmp_path_factory) -> SimpleNamespace:
    """Fixture: the fork's schema compiled into a temporary folder (import it into a test module)."""
    return compile_fork_schema(tmp_path_factory.mktemp("fork_schema"))
