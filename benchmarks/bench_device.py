"""Throughput and model FLOP utilisation (MFU) of the training step, on CUDA or the CPU.

Counts forward+backward FLOPs of one batch with ``torch.utils.flop_counter.FlopCounterMode``,
times the full step (bf16 autocast + channels_last + Adam) and reports images/s and
MFU = FLOPs / time / peak. Peak: ``--peak-tflops`` or, on CUDA, a table of dense bf16 peaks
(H100 SXM 989, H100 PCIe 756, H200 989, A100 312 TFLOP/s).

Each ``--modes`` entry runs the same step another way, timed in the same process, and the table
gives its speed as a ratio to eager:

* ``eager``: plain PyTorch (what ``csba.train`` does on the CPU);
* ``compile``: ``torch.compile`` of the model (inductor kernels, fused elementwise ops);
* ``cudagraph`` (CUDA only): the whole step (forward, backward, Adam) captured once as a CUDA
  graph and replayed, so a step costs one launch instead of hundreds: ``csba.step.TrainStep``
  itself, as ``csba.train`` runs it on CUDA (capturable fused Adam with a tensor lr, autocast
  with ``cache_enabled=False``, as the CUDA-graph docs require);
* ``compile-cudagraph`` (CUDA only): ``torch.compile(mode="reduce-overhead")``.

The loss after the timed steps is printed for every mode, as a check that the step trains: all
start from the same weights and fit the same random batch, so the loss falls in every mode. Its
values differ between modes because their dropout draws differ (compiled code has its own RNG).

    python benchmarks/bench_device.py --image-size 224 --batch 128          # on the GPU machine
    python benchmarks/bench_device.py --image-size 64 --batch 32 --steps 3  # quick CPU check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, uninstalled
from torch.utils.flop_counter import FlopCounterMode

from csba.models import create_model
from csba.step import TrainStep

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


MODES = ("eager", "compile", "cudagraph", "compile-cudagraph")
WARMUP = 3  # eager steps before a capture (csba.step.TrainStep's default)
CUDA_ONLY = ("cudagraph", "compile-cudagraph")


def make_step(mode: str, model, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    """One training step in ``mode`` on the batch (x, y), as ``csba.train`` runs it.

    Returns ``(step, last, train_step)``: ``step()`` trains once, ``last["loss"]`` is the loss
    of the latest step and ``train_step`` the :class:`csba.step.TrainStep` (its
    ``graph_error`` says why a capture fell back to eager). The cudagraph mode captures at the
    ``WARMUP + 1``-th call, so callers warm up that many steps before timing.
    """
    cuda = device.type == "cuda"
    graphed = mode == "cudagraph"
    opt = torch.optim.Adam(
        model.parameters(),
        # as csba.train: a graph bakes a float lr in at capture, a tensor lr is read each replay
        lr=torch.tensor(1e-4, device=device) if graphed else 1e-4,
        fused=True if cuda else None,
        capturable=graphed,
    )
    net = model
    if mode == "compile":
        net = torch.compile(model)
    elif mode == "compile-cudagraph":
        net = torch.compile(model, mode="reduce-overhead")
    train_step = TrainStep(
        net,
        lambda logits, yb: F.cross_entropy(logits.float(), yb),
        opt,
        device,
        bf16=True,
        graph=graphed,
        warmup=WARMUP,
    )
    last = {"loss": torch.zeros((), device=device)}

    def step():
        if mode == "compile-cudagraph":
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: outputs recycle
        last["loss"] = train_step(x, y)

    return step, last, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["baseline", "csba", "class_heads"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=["eager", "cudagraph"],
        help="ways to run the step (CUDA-only ones are skipped on the CPU); default %(default)s",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    peak = args.peak_tflops or guess_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, {args.image_size} px, batch {args.batch}, bf16 + channels_last, "
        f"peak {peak or 'unknown'} TFLOP/s"
    )
    modes = [m for m in args.modes if device.type == "cuda" or m not in CUDA_ONLY]
    print(
        f"{'variant':<12} {'mode':<18} {'GFLOP/img':>9} {'img/s':>9} {'TFLOP/s':>8} {'MFU':>6} "
        f"{'x eager':>7} {'setup s':>7} {'loss':>8}"
    )
    for variant in args.variants:
        torch.manual_seed(0)
        init = create_model(variant, args.classes).state_dict()
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, args.classes, (args.batch,), device=device)
        model = create_model(variant, args.classes).to(device)
        with FlopCounterMode(display=False) as fc:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(x)
            F.cross_entropy(out.float(), y).backward()
        flops = fc.get_total_flops()  # forward + backward of one batch
        eager_dt = None
        for mode in modes:
            model = create_model(variant, args.classes)
            model.load_state_dict(init)
            model = model.to(device).to(memory_format=torch.channels_last).train()
            t = time.perf_counter()
            try:
                step, last, train_step = make_step(mode, model, x, y, device)
                for _ in range(WARMUP + 1):  # compilation, cuDNN autotuning, graph capture
                    step()
                sync(device)
            except Exception as e:  # report and go on: one failing mode must not hide the rest
                print(f"{variant:<12} {mode:<18} failed: {type(e).__name__}: {e}"[:300])
                continue
            if train_step.graph_error:  # fell back to eager: timing it would mislabel eager
                print(f"{variant:<12} {mode:<18} capture failed: {train_step.graph_error}"[:300])
                continue
            setup = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            dt = (time.perf_counter() - t) / args.steps
            eager_dt = dt if mode == "eager" else eager_dt
            ratio = f"{eager_dt / dt:7.2f}" if eager_dt else "      -"
            tflops = flops / dt / 1e12
            mfu = f"{100 * tflops / peak:5.1f}%" if peak else "   -"
            print(
                f"{variant:<12} {mode:<18} {flops / args.batch / 1e9:9.2f} "
                f"{args.batch / dt:9.1f} {tflops:8.2f} {mfu:>6} {ratio} {setup:7.1f} "
                f"{float(last['loss']):8.4f}",
                flush=True,
            )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
