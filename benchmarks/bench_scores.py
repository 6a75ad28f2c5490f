"""Cost of the per-example scores (csba.diagnostics.examples) against one batched float32 eval
forward+backward pass over the same images.

    python benchmarks/bench_scores.py [--run checkpoints/elpv/csba-s0] [--images 0]
                                      [--rounds 3] [--threads 1] [--chunk 16]

With the run's weights and dataset (ELPV at 128 px for the shipped runs), it times, interleaved
in each round so machine drift hits both alike (median over --rounds):

  pass:   one eval-mode float32 forward + backward (torch.autograd.grad of the summed
          cross-entropy) per batch of 64 over the images: what the Gradient Conflict Matrix
          already costs, and the unit the issue states the budget in;
  scores: csba.diagnostics.examples.example_scores over the same images against the class
          gradient sums (per-example gradients by torch.func in chunks of --chunk, their dot
          products with the C class sums, the leave-one-out cosines, the confidences).

The scores are the whole extra cost of ``diagnose`` with scores over ``diagnose --no-scores``
(the class sums are the matrix's own, computed once), so the ratio scores / pass is the number
to hold at most 3. --images N uses the first N training + test images (0: all of them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from csba.data import normalize
from csba.diagnostics.examples import example_scores
from csba.runs import load_run_and_data

BATCH = 64


def batches(bundle, limit: int):
    """(normalised images, labels) of the training then test split, in batches of 64."""
    left = limit or 10**12
    for split in ("train", "test"):
        images = bundle.split(split)
        for s in range(0, len(images), BATCH):
            n = min(BATCH, left)
            if n <= 0:
                return
            x = normalize(images.images[s : s + n], bundle.mean, bundle.std)
            yield x, images.labels[s : s + n]
            left -= n


def one_pass(model, data) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    for x, y in data:
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        torch.autograd.grad(loss, params)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="checkpoints/elpv/csba-s0")
    ap.add_argument("--images", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=16)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run, bundle = load_run_and_data(args.run)
    model = run.model.eval()
    data = list(batches(bundle, args.images))
    n = sum(len(y) for _, y in data)
    C = run.meta["num_classes"]
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sums = torch.randn(C, P)  # the cost does not depend on the values
    counts = np.full(C, 100)
    t_pass, t_scores = [], []
    for _ in range(args.rounds):
        t_pass.append(one_pass(model, data))
        t0 = time.perf_counter()
        example_scores(model, data, sums, counts, None, chunk=args.chunk)
        t_scores.append(time.perf_counter() - t0)
    mp, ms = statistics.median(t_pass), statistics.median(t_scores)
    print(
        f"run {args.run}: {n} images at {bundle.image_size} px, {P:,} parameters, "
        f"{torch.get_num_threads()} thread(s), chunk {args.chunk}, {args.rounds} rounds"
    )
    print(
        f"  forward+backward pass: {mp:8.2f} s   (rounds {', '.join(f'{t:.2f}' for t in t_pass)})"
    )
    print(
        f"  per-example scores:    {ms:8.2f} s   (rounds {', '.join(f'{t:.2f}' for t in t_scores)})"
    )
    print(f"  ratio scores / pass:   {ms / mp:8.2f}x  (budget 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
