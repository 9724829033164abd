#!/usr/bin/env python
"""Training and evaluation throughput of DeepLab v2 (ResNet-101, ASPP) on this machine.

Measures iterations/s and images/s of one training step (forward, MSC loss, backward, SGD
step with the recipe's parameter groups; frozen BN) at crop 321 and of evaluation forward
passes at 513, on synthetic data (no dataset needed). Each variant is compared with a
baseline measured in the same run:

* CUDA: fp32 (baseline) vs bf16 autocast vs bf16 autocast + channels_last;
* CPU: batch 1 (baseline) vs batch 2 (images/s ratio).

``--model tiny`` uses a small DeepLab (one block per stage, 8 stem channels) for a quick run.
Not a test: numbers depend on the machine. Usage::

    python scripts/bench_train_eval.py                      # ResNet-101, auto device
    python scripts/bench_train_eval.py --model tiny --iters 5
    python scripts/bench_train_eval.py --no-msc --json out/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


from deeplab_caffe.parity.train.config import load_config  # noqa: E402
from deeplab_caffe.parity.train.loop import _TrainNet, build_train_model  # noqa: E402
from deeplab_caffe.parity.train.loss import segmentation_loss  # noqa: E402
from deeplab_caffe.parity.train.solver import build_optimizer  # noqa: E402

TINY = ["model.n_blocks=[1, 1, 1, 1]", "model.stem_channels=8", "model.aspp_rates=[1, 2]"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _variants(device: torch.device, batch: int) -> list[dict[str, Any]]:
    if device.type == "cuda":
        out = [{"name": "fp32", "batch": batch, "amp": False, "channels_last": False}]
        if torch.cuda.is_bf16_supported():
            out += [{"name": "bf16 autocast", "batch": batch, "amp": True, "channels_last": False},
                    {"name": "bf16 + channels_last", "batch": batch, "amp": True, "channels_last": True}]
        return out
    return [{"name": "batch 1", "batch": 1, "amp": False, "channels_last": False},
            {"name": "batch 2", "batch": 2, "amp": False, "channels_last": False}]


def bench_train(config: dict, device: torch.device, variant: dict, crop: int, iters: int,
                warmup: int) -> dict[str, float]:
    """Seconds per training iteration (one forward/backward/step of ``variant['batch']``)."""
    model = build_train_model(config).to(device)
    if variant["channels_last"]:
        model.to(memory_format=torch.channels_last)
    model.train()
    net = _TrainNet(model)
    optimizer = build_optimizer(model, config)  # the recipe's update (Caffe's SGD)
    gen = torch.Generator().manual_seed(0)
    n = variant["batch"]
    x = (torch.rand(n, 3, crop, crop, generator=gen) * 255 - 120).to(device)
    if variant["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, config["model"]["n_classes"], (n, crop, crop), generator=gen).to(device)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if variant["amp"]
                else contextlib.nullcontext())
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            outputs = net(x)
        loss = segmentation_loss(outputs, y, label_resize=config["loss"]["label_resize"])
        loss.backward()
        optimizer.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    s = sorted(times)[len(times) // 2]  # median
    return {"s_per_iter": s, "it_per_s": 1.0 / s, "images_per_s": n / s}


def bench_eval(config: dict, device: torch.device, variant: dict, size: int, iters: int,
               warmup: int) -> dict[str, float]:
    """Seconds per evaluation forward pass of ``variant['batch']`` images at ``size``."""
    model = build_train_model(config).to(device).eval()
    if variant["channels_last"]:
        model.to(memory_format=torch.channels_last)
    n = variant["batch"]
    x = (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 255 - 120).to(device)
    if variant["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if variant["amp"]
                else contextlib.nullcontext())
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            _sync(device)
            t0 = time.perf_counter()
            with autocast:
                model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    s = sorted(times)[len(times) // 2]
    return {"s_per_iter": s, "it_per_s": 1.0 / s, "images_per_s": n / s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["resnet101", "tiny"], default="resnet101")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--crop", type=int, default=321, help="training crop (default 321)")
    parser.add_argument("--eval-size", type=int, default=513, help="evaluation input (default 513)")
    parser.add_argument("--batch", type=int, default=5, help="CUDA training batch (CPU: 1 vs 2)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-msc", action="store_true", help="single-scale model (default: MSC)")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    overrides = ["model.init_checkpoint=null", f"model.msc={'false' if args.no_msc else 'true'}"]
    if args.model == "tiny":
        overrides += TINY
    config = load_config("voc12", overrides)
    what = (f"DeepLab v2 {args.model} ({'MSC' if not args.no_msc else 'single scale'}), "
            f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
            f"({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(what)
    results: dict[str, Any] = {"setup": what, "train": {}, "eval": {}}
    for kind, fn, size in (("train", bench_train, args.crop), ("eval", bench_eval, args.eval_size)):
        if kind == "eval" and args.skip_eval:
            continue
        baseline = None
        print(f"\n{kind} at {size} x {size} (median of {args.iters} after {args.warmup} warm-up):")
        print(f"  {'variant':<24}{'batch':>6}{'it/s':>10}{'images/s':>11}{'vs baseline':>13}")
        for variant in _variants(device, args.batch):
            r = fn(config, device, variant, size, args.iters, args.warmup)
            baseline = baseline or r
            ratio = r["images_per_s"] / baseline["images_per_s"]
            r["images_per_s_ratio"] = ratio
            results[kind][variant["name"]] = {**variant, **r}
            print(f"  {variant['name']:<24}{variant['batch']:>6}{r['it_per_s']:>10.3f}"
                  f"{r['images_per_s']:>11.3f}{ratio:>12.2f}x")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
