"""Regenerate caffe_proto/caffe_pb2.py from caffe_proto/caffe.proto.

Uses the protoc bundled with grpcio-tools (a test extra), so no system protoc is
needed. `tests/test_caffe_proto.py` runs the same generation into a temporary
folder and checks the committed file is identical.

    python scripts/generate_caffe_pb2.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "caffe_proto"


def generate(out_dir: Path) -> Path:
    """Run protoc on caffe.proto, writing caffe_pb2.py into `out_dir`; return its path."""
    from grpc_tools import protoc  # test extra: grpcio-tools

    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        ["protoc", f"--proto_path={PROTO_DIR}", f"--python_out={out_dir}", str(PROTO_DIR / "caffe.proto")]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR / 'caffe.proto'} (exit {status})")
    return out_dir / "caffe_pb2.py"


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    path = generate(PROTO_DIR)
    print(f"wrote {path.relative_to(REPO)}")
