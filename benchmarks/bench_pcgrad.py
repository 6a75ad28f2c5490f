"""Cost of a PCGrad step (and of its control) against a plain training step.

    python benchmarks/bench_pcgrad.py [--classes 4 10] [--image-size 128] [--batch-size 32]
                                      [--rounds 7] [--backbone trifire] [--threads 1]
                                      [--device cpu] [--precision auto|bf16|fp32]

For each class count C it builds the baseline head on --backbone (fixed seed) and one batch that
holds every class, then times three csba.step.TrainStep modes on that batch, interleaved in each
round so machine drift hits all three alike (median over --rounds, after one warm-up each):

  plain:          mode "loss": one backward of the class-weighted cross-entropy (baseline);
  pcgrad_control: mode "class_sum": one backward of the sum of per-class mean losses;
  pcgrad:         mode "pcgrad": one backward per class present, then PCGrad's projection.

It prints seconds per step and the ratios to plain. PCGrad's cost grows with the classes in a
batch (C backward passes through a retained graph plus O(C^2) dot products over all parameters),
so C = 10 shows where it goes. On the CPU it uses one thread (--threads 0: torch's default), as
a protocol worker of ``--jobs 2`` on a 2-core machine does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from csba.losses import make_loss
from csba.models import create_model
from csba.step import TrainStep
from csba.train import resolve_precision

MODES = {"plain": "loss", "pcgrad_control": "class_sum", "pcgrad": "pcgrad"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(
    num_classes: int, backbone: str, batch: int, size: int, device: torch.device, bf16: bool
) -> dict[str, TrainStep]:
    """One TrainStep per mode, each on its own copy of the same initial model."""
    torch.manual_seed(0)
    init = create_model("baseline", num_classes, backbone=backbone).state_dict()
    counts = torch.arange(num_classes, 0, -1).float()  # imbalanced, as the protocol's weights
    weight = (counts.sum() / (num_classes * counts)).to(device)
    steps = {}
    for name, mode in MODES.items():
        model = create_model("baseline", num_classes, backbone=backbone)
        model.load_state_dict(init)
        model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        steps[name] = TrainStep(
            model, make_loss("ce", weight), opt, device, bf16=bf16, graph=False, mode=mode,
            task_generator=gen,
        )  # fmt: skip
    return steps


def measure(steps: dict[str, TrainStep], x, y, device, rounds: int) -> dict[str, float]:
    """Median seconds per step of each mode, the modes interleaved within each round."""
    for step in steps.values():  # warm-up (allocator, kernels)
        step(x, y)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # no fixed position
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            steps[name](x, y)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--backbone", default="trifire")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = resolve_precision(args.precision, device) == "bf16"  # as csba.train chooses
    print(
        f"{args.backbone}, baseline head, {args.image_size} px, batch {args.batch_size}, "
        f"{'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} thread(s), {device}"
    )
    print(f"{'C':>3} {'plain s':>8} {'control s':>9} {'pcgrad s':>9} {'control/plain':>13} "
          f"{'pcgrad/plain':>12}")  # fmt: skip
    out = {}
    for c in args.classes:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
        y = torch.arange(args.batch_size) % c  # every class present: PCGrad's worst case
        x, y = x.to(device), y.to(device)
        steps = make_steps(c, args.backbone, args.batch_size, args.image_size, device, bf16)
        t = measure(steps, x, y, device, args.rounds)
        out[c] = t
        print(
            f"{c:>3} {t['plain']:>8.3f} {t['pcgrad_control']:>9.3f} {t['pcgrad']:>9.3f} "
            f"{t['pcgrad_control'] / t['plain']:>13.2f} {t['pcgrad'] / t['plain']:>12.2f}"
        )
    return out


if __name__ == "__main__":
    main()
