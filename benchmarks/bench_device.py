"""Throughput and model FLOP utilisation (MFU) of the training step, on CUDA or the CPU.

Counts forward+backward FLOPs of one batch with ``torch.utils.flop_counter.FlopCounterMode``,
times the full step (bf16 autocast + channels_last + Adam) and reports images/s and
MFU = FLOPs / time / peak. Peak: ``--peak-tflops`` or, on CUDA, a table of dense bf16 peaks
(H100 SXM 989, H100 PCIe 756, H200 989, A100 312 TFLOP/s).

    python benchmarks/bench_device.py --image-size 224 --batch 128          # on the GPU machine
    python benchmarks/bench_device.py --image-size 64 --batch 32 --steps 3  # quick CPU check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, uninstalled
from torch.utils.flop_counter import FlopCounterMode

from csba.models import create_model

PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
}


def guess_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in name:
            return peak
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["baseline", "csba", "class_heads"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    peak = args.peak_tflops or guess_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, {args.image_size} px, batch {args.batch}, bf16 + channels_last, "
        f"peak {peak or 'unknown'} TFLOP/s"
    )
    print(f"{'variant':<12} {'GFLOP/img':>9} {'img/s':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for variant in args.variants:
        model = create_model(variant, args.classes).to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, args.classes, (args.batch,), device=device)

        def step(model=model, opt=opt, x=x, y=y):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(x)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        with FlopCounterMode(display=False) as fc:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(x)
            torch.nn.functional.cross_entropy(out.float(), y).backward()
        flops = fc.get_total_flops()  # forward + backward of one batch
        opt.zero_grad(set_to_none=True)
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / args.steps
        tflops = flops / dt / 1e12
        mfu = f"{100 * tflops / peak:5.1f}%" if peak else "   -"
        print(
            f"{variant:<12} {flops / args.batch / 1e9:9.2f} {args.batch / dt:9.1f} "
            f"{tflops:8.2f} {mfu:>6}",
            flush=True,
        )


if __name__ == "__main__":
    main()
