"""Benchmark: the unfused model against ``models.optimize_for_inference``, side by side.

Each (size, single scale or MSC, variant) runs in its own fresh process, the variants taking
turns round after round, on the same ResNet-101 checkpoint (random weights, BatchNorm
statistics far from the identity) and the same input. Variants:

- ``eager``: ``load_checkpoint`` as it is (the baseline; what the parity tools run);
- ``fused``: ``optimize_for_inference(model, inplace=True)``: BN folded, in-place activations,
  channels_last;
- ``fused-nchw``: the same without channels_last (what channels_last adds);
- ``bf16``: fused under bf16 autocast (opt-in: not within 1e-5; argmax agreement reported);
- ``compiled`` (``--compile``): fused under ``torch.compile`` (its first call, the cold
  compile, is reported apart).

Per cell: the median seconds per forward (images/s on CUDA), the ratio to eager, the
arithmetic rate (the convolutions' multiply-adds x 2, counted by hooks on eager's warm-up
forward, divided by the median time) and its share of this machine's reference convolution
rate, the peak memory of the forwards (CPU: VmHWM after a reset once the model is ready; CUDA:
max allocated), the max relative difference to eager's output, the argmax agreement, and
``ready``: seconds from calling ``load_checkpoint`` to a model ready for its first forward
(``optimize_for_inference`` included; ``import torch`` not).

The reference rate is measured in the same run, in fresh processes between the variants: the
network's most frequent convolution (res4's 3x3, 256 -> 256 channels, dilation 2, on the 65 x 65
map of a 513 input, channels_last, no bias), alone, repeated. It is the rate this machine's
convolution library reaches on this network's own work; a forward cannot be much faster than its
operations divided by it.

    python scripts/bench_inference.py [--sizes 321 513] [--rounds 2] [--repeat 3] [--compile] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _fresh_process import run_fresh

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("eager", "fused", "fused-nchw", "bf16")

_CHILD = r"""
import json, sys, time
import numpy as np, torch
from deeplab_caffe import models
path, size, msc, variant, repeat, device, ref_path = sys.argv[1:8]
size, msc, repeat = int(size), msc == "msc", int(repeat)
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
x = torch.from_numpy(np.random.default_rng(0).normal(0, 60, (1, 3, size, size)).astype(np.float32)).to(device)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sync()
start = time.perf_counter()
model = models.load_checkpoint(path, map_location=device)
model = model if msc else model.base
if variant != "eager":
    model = models.optimize_for_inference(model, channels_last=variant != "fused-nchw", bf16=variant == "bf16",
                                          compile=variant == "compiled", inplace=True)
sync(); ready = time.perf_counter() - start
flops = []
def count(conv, inputs, output):
    flops.append(2 * conv.weight[0].numel() * output.numel())  # multiply-adds x 2 (bias adds left out)
hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)] if variant == "eager" else []
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
with torch.no_grad():
    start = time.perf_counter(); out = model(x); sync(); first = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM: the forwards' peak from here
    times = []
    for _ in range(repeat):
        start = time.perf_counter(); out = model(x); sync(); times.append(time.perf_counter() - start)
peak = torch.cuda.max_memory_allocated() if device == "cuda" else status("VmHWM")
out = out.float().cpu().numpy()
if variant == "eager":
    np.save(ref_path, out)
ref = np.load(ref_path)
rel = float(np.abs(out - ref).max() / np.abs(ref).max())
agree = float((out.argmax(1) == ref.argmax(1)).mean())
print(json.dumps({{"times": times, "first": first, "peak": peak, "rel": rel, "agree": agree, "ready": ready,
                  "flops": sum(flops)}}))
"""

_REFERENCE_CONV = r"""
import json, sys, time
import torch
device, repeat = sys.argv[1], int(sys.argv[2])
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
torch.backends.cudnn.allow_tf32 = False
x = torch.randn(1, 256, 65, 65, device=device).contiguous(memory_format=torch.channels_last)
w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last) * 0.02
times = []
with torch.no_grad():
    for i in range(repeat + 1):
        sync(); start = time.perf_counter(); torch.nn.functional.conv2d(x, w, None, 1, 2, 2); sync()
        times.append(time.perf_counter() - start)
print(json.dumps({"flops": 2 * w[0].numel() * 256 * 65 * 65, "times": times[1:]}))
"""


def make_checkpoint(folder: Path) -> Path:
    """ResNet-101 MSC (21 classes) with seeded weights and non-trivial BatchNorm statistics."""
    import torch
    from torch import nn

    from deeplab_caffe import models

    torch.manual_seed(0)
    model = models.build_model(models.default_config(21, msc=True)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0, 0.1)
    return models.save_checkpoint(folder / "resnet101_msc.pth", model, model.config, {})


def measure(path: Path, size: int, msc: str, variant: str, repeat: int, device: str, ref: Path) -> dict:
    return run_fresh(_CHILD.format(repo=str(REPO)), str(path), str(size), msc, variant, str(repeat), device, str(ref),
                     what=f"{variant} at {size} ({msc})")


def reference_rate(device: str) -> float:
    """GFLOP/s of the reference convolution (see the module docstring), median of 60, in a
    fresh process."""
    run = run_fresh(_REFERENCE_CONV, device, "60", what="the reference convolution")
    return run["flops"] / statistics.median(run["times"]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[321, 513])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of alternating fresh processes")
    parser.add_argument("--repeat", type=int, default=3, help="timed forwards per process (after one warm-up)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="eager is always run")
    parser.add_argument("--msc", nargs="+", choices=["single", "msc"], default=["single", "msc"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    variants = ("eager", *[v for v in args.variants if v != "eager"]) + (("compiled",) if args.compile else ())
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(Path(tmp))
        print(f"ResNet-101 DeepLab v2, {args.device}, {args.rounds} rounds x {args.repeat} forwards per process")
        print(f"{'input':>14} {'variant':>11} {'s/forward':>10} {'images/s':>9} {'vs eager':>9} {'GFLOP/s':>8} "
              f"{'of ref':>7} {'peak MiB':>9} {'max rel':>9} {'argmax':>7} {'ready s':>8}")
        rates: list[float] = []
        for size in args.sizes:
            for msc in args.msc:
                ref = Path(tmp) / f"ref_{size}_{msc}.npy"
                runs: dict[str, list[dict]] = {v: [] for v in variants}
                for r in range(args.rounds):
                    order = ["eager"] + [v for v in variants[r % len(variants):] + variants[:r % len(variants)] if v != "eager"]
                    for variant in order:  # eager first each round: it writes the reference output
                        runs[variant].append(measure(path, size, msc, variant, args.repeat, args.device, ref))
                        rates.append(reference_rate(args.device))
                base = statistics.median(t for run in runs["eager"] for t in run["times"])
                flops = runs["eager"][0]["flops"]
                rate = statistics.median(rates)
                for variant in variants:
                    median = statistics.median(t for run in runs[variant] for t in run["times"])
                    peak = max(run["peak"] for run in runs[variant]) / 2**20
                    extra = f"  (first call {max(run['first'] for run in runs[variant]):.1f} s)" if variant == "compiled" else ""
                    ready = statistics.median(run["ready"] for run in runs[variant])
                    gflops = flops / median / 1e9
                    print(f"{f'{size} {msc}':>14} {variant:>11} {median:10.3f} {1 / median:9.2f} {base / median:8.2f}x "
                          f"{gflops:8.0f} {gflops / rate:6.0%} {peak:9.0f} {runs[variant][-1]['rel']:9.1e} "
                          f"{runs[variant][-1]['agree']:7.4f} {ready:8.2f}{extra}", flush=True)
                print(f"{f'{size} {msc}':>14} {'reference':>11}: {flops / 1e9:.0f} GFLOP per forward; the reference "
                      f"convolution ran at {rate:.0f} GFLOP/s (median of {len(rates)} fresh processes), so a forward "
                      f"takes at least about {flops / rate / 1e9:.3f} s at that rate", flush=True)


if __name__ == "__main__":
    main()
