"""Benchmark: the unfused model against ``models.optimize_for_inference``, side by side.

Each (size, single scale or MSC, variant) runs in its own fresh process, the variants taking
turns round after round, on the same ResNet-101 checkpoint (random weights, BatchNorm
statistics far from the identity) and the same input. Variants:

- ``eager``: ``load_checkpoint`` as it is (the baseline; what the parity tools run);
- ``fused``: ``optimize_for_inference(model)``: BN folded, in-place activations, channels_last;
- ``fused-nchw``: the same without channels_last (what channels_last adds);
- ``bf16``: fused under bf16 autocast (opt-in: not within 1e-5; argmax agreement reported);
- ``compiled`` (``--compile``): fused under ``torch.compile`` (its first call, the cold
  compile, is reported apart).

Per cell: the median seconds per forward (images/s on CUDA), the ratio to eager, the peak
memory of the forwards (CPU: VmHWM after a reset once the model is ready; CUDA: max allocated),
the max relative difference to eager's output and the argmax agreement.

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
model = models.load_checkpoint(path, map_location=device)
model = model if msc else model.base
if variant != "eager":
    model = models.optimize_for_inference(model, channels_last=variant != "fused-nchw", bf16=variant == "bf16",
                                          compile=variant == "compiled")
x = torch.from_numpy(np.random.default_rng(0).normal(0, 60, (1, 3, size, size)).astype(np.float32)).to(device)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
with torch.no_grad():
    start = time.perf_counter(); out = model(x); sync(); first = time.perf_counter() - start
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
print(json.dumps({{"times": times, "first": first, "peak": peak, "rel": rel, "agree": agree}}))
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
        print(f"{'input':>14} {'variant':>11} {'s/forward':>10} {'images/s':>9} {'vs eager':>9} {'peak MiB':>9} "
              f"{'max rel':>9} {'argmax':>7}")
        for size in args.sizes:
            for msc in args.msc:
                ref = Path(tmp) / f"ref_{size}_{msc}.npy"
                runs: dict[str, list[dict]] = {v: [] for v in variants}
                for r in range(args.rounds):
                    order = ["eager"] + [v for v in variants[r % len(variants):] + variants[:r % len(variants)] if v != "eager"]
                    for variant in order:  # eager first each round: it writes the reference output
                        runs[variant].append(measure(path, size, msc, variant, args.repeat, args.device, ref))
                base = statistics.median(t for run in runs["eager"] for t in run["times"])
                for variant in variants:
                    median = statistics.median(t for run in runs[variant] for t in run["times"])
                    peak = max(run["peak"] for run in runs[variant]) / 2**20
                    extra = f"  (first call {max(run['first'] for run in runs[variant]):.1f} s)" if variant == "compiled" else ""
                    print(f"{f'{size} {msc}':>14} {variant:>11} {median:10.3f} {1 / median:9.2f} {base / median:8.2f}x "
                          f"{peak:9.0f} {runs[variant][-1]['rel']:9.1e} {runs[variant][-1]['agree']:7.4f}{extra}",
                          flush=True)


if __name__ == "__main__":
    main()
