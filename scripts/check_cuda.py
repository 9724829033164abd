"""The CUDA paths, run on a GPU machine: converted model, bf16 inference, training, DDP (NCCL).

Not a test (CI has no GPU): a check to run where a GPU is lent, printing one JSON line per
step and exiting non-zero if a step fails its bound.

1. ``convert``: a synthetic DeepLab-ResNet-101 MSC caffemodel (official graph, 21 classes)
   converted on the CPU; its output at 321 px on CUDA fp32 (TF32 off) against the CPU's
   (bound: 1e-5 relative), CUDA bf16 autocast (max relative difference and argmax agreement,
   reported), and forwards per second at 513 px (fp32, bf16, bf16 + channels_last).
2. ``train``: the shapes smoke recipe on CUDA with bf16 autocast and channels_last (the real
   recipes' CUDA settings), from a converted synthetic caffemodel as the smoke-shapes row starts
   it (frozen BN needs calibrated statistics): the loss stays finite and the final mIoU is reported.
3. ``ddp``: the same recipe under ``torchrun --nproc_per_node 1`` (NCCL backend), 40 updates.

    python scripts/check_cuda.py [--out DIR]

The project must be importable as ``deeplab_caffe``: on a bare GPU machine install it first with
``pip install --no-deps --no-build-isolation --target /tmp/site . && export PYTHONPATH=/tmp/site``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

from deeplab_caffe import models  # noqa: E402
from deeplab_caffe.converter.verify import verification_images  # noqa: E402
from deeplab_caffe.converter.conversion import convert  # noqa: E402
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab  # noqa: E402
from deeplab_caffe.converter.verify import caffe_input  # noqa: E402

FAILED: list[str] = []


def emit(step: str, **values) -> None:
    print(json.dumps({"step": step, **values}), flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def per_second(fn, repeat: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return repeat / (time.perf_counter() - start)


def check_converted(folder: Path) -> None:
    synthetic = make_synthetic_deeplab(folder, models.default_config(21, msc=True), seed=0, msc_copies=False)
    model = convert(synthetic.caffemodel_path).model.eval()
    x = torch.from_numpy(caffe_input(verification_images(("astronaut",), 321)["astronaut"]))
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        cpu = model(x)
        model.cuda()
        fp32 = model(x.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x.cuda()).float().cpu()
        big = torch.randn(1, 3, 513, 513, device="cuda") * 50

        def fwd(channels_last: bool = False, amp: bool = False):
            m = model.to(memory_format=torch.channels_last) if channels_last else model
            inp = big.to(memory_format=torch.channels_last) if channels_last else big
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                return m(inp)

        speeds = {"fp32": per_second(fwd), "bf16": per_second(lambda: fwd(amp=True)),
                  "bf16_channels_last": per_second(lambda: fwd(True, True))}
    fp32_rel = rel(fp32, cpu)
    agree = float((bf16.argmax(1) == cpu.argmax(1)).float().mean())
    emit("convert", cuda_fp32_vs_cpu_max_rel=fp32_rel, bf16_vs_cpu_max_rel=rel(bf16, cpu), bf16_argmax_agreement=agree,
         msc_513_forwards_per_s={k: round(v, 2) for k, v in speeds.items()})
    if fp32_rel > 1e-5:
        FAILED.append(f"convert: CUDA fp32 differs from CPU by {fp32_rel:.2e}")


def shapes_init(folder: Path) -> Path:
    """The smoke-shapes row's init: its fixture (official topology, 91 classes, single classifier,
    the shapes backbone) written by converter.synthetic and converted."""
    config = models.default_config(91, n_blocks=(1, 1, 1, 1), aspp_rates=None, stem_channels=8)
    synthetic = make_synthetic_deeplab(folder, config, seed=0, msc_copies=False)
    conversion = convert(synthetic.caffemodel_path, n_classes=91)
    models.save_checkpoint(folder / "init.pth", conversion.state_dict, conversion.config, {"source": "fixture"})
    return folder / "init.pth"


def run(step: str, command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
    emit(step, returncode=result.returncode, seconds=round(time.perf_counter() - start, 1), tail=tail)
    if result.returncode:
        FAILED.append(f"{step}: exit {result.returncode}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="check-cuda-")))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    emit("environment", torch=torch.__version__, device=torch.cuda.get_device_name(0))
    check_converted(args.out / "convert")
    cuda = ["--device", "cuda", "--no-progress", "solver.amp=true", "solver.channels_last=true",
            f"model.init_checkpoint={shapes_init(args.out / 'init')}"]
    run("train", [sys.executable, "-m", "deeplab_caffe.parity.commands.train", "--config", "shapes",
                  "--workdir", str(args.out / "train"), *cuda])
    run("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
                "deeplab_caffe.parity.commands.train", "--config", "shapes", "--workdir", str(args.out / "ddp"), "--max-iters", "40", *cuda])
    if FAILED:
        sys.exit("; ".join(FAILED))


if __name__ == "__main__":
    main()
