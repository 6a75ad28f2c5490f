"""Cost of the Gradient Conflict Matrix against one backward pass and a per-class backward loop.

    python benchmarks/bench_gcm.py [--classes 4 10] [--images 128] [--image-size 64]
                                   [--batch-size 32] [--repeats 3] [--device cpu] [--threads 1]

For each C, on a csba model (fixed seed, BatchNorm statistics moved off their initial values)
and the same images, it times (median of --repeats runs, after one warm-up):

  (a) pass:   one eval-mode forward+backward over the images in batches of --batch-size;
  (b) matrix: csba.diagnostics.gradient_conflict_matrix (class-pure chunks, layer groups on);
  (c) loop:   the multi-task-library way: per batch, one forward, then for each class present a
              separate backward of that class's loss (retain_graph), summed per class.

and prints matrix / pass (about 1 is the goal) and loop / matrix (the saving).

On the CPU it uses one thread by default (--threads 0: torch's default): with several threads
on a machine shared with other jobs, OpenMP oversubscription made single timings swing by 10x or
more, while the ratios, which are what this measures, do not need the extra threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from csba.diagnostics import gradient_conflict_matrix
from csba.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, repeats: int, fn, *args, **kwargs) -> float:
    """Median wall time in seconds of fn(*args, **kwargs) over repeats, after a warm-up."""
    fn(*args, **kwargs)  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_pass(model, x, y, batch_size: int) -> None:
    """(a) One eval-mode forward+backward over all images, mixed-class batches."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for s in range(0, x.shape[0], batch_size):
        loss = F.cross_entropy(model(x[s : s + batch_size]), y[s : s + batch_size], reduction="sum")
        torch.autograd.grad(loss, params)


def per_class_loop(model, x, y, batch_size: int, num_classes: int) -> torch.Tensor:
    """(c) Per batch: one forward, one backward per class present; per-class gradient sums."""
    params = [p for p in model.parameters() if p.requires_grad]
    sums = torch.zeros(num_classes, sum(p.numel() for p in params), device=x.device)
    model.eval()
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        per_example = F.cross_entropy(model(xb), yb, reduction="none")
        present = torch.unique(yb).tolist()
        for n, c in enumerate(present):
            g = torch.autograd.grad(
                per_example[yb == c].sum(), params, retain_graph=n < len(present) - 1
            )
            sums[c] += torch.cat([t.reshape(-1) for t in g])
    return sums


def bench_one(
    num_classes: int, args: argparse.Namespace, device: torch.device
) -> tuple[float, float, float]:
    """Median seconds of (a) one pass, (b) the matrix, (c) the per-class loop at C classes."""
    torch.manual_seed(args.seed)
    model = create_model("csba", num_classes).to(device)
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics off their initial values
        model(torch.randn(16, 3, args.image_size, args.image_size, device=device))
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.images, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, num_classes, (args.images,), generator=g).to(device)
    bs, reps = args.batch_size, args.repeats
    t_pass = _timed(device, reps, one_pass, model, x, y, bs)
    t_gcm = _timed(device, reps, gradient_conflict_matrix, model, x, y, num_classes, batch_size=bs)
    t_loop = _timed(device, reps, per_class_loop, model, x, y, bs, num_classes)
    return t_pass, t_gcm, t_loop


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads; 0: torch default")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"csba model, {args.images} images of {args.image_size}px, batch {args.batch_size}, "
        f"median of {args.repeats}, device {name} ({torch.get_num_threads()} threads)"
    )
    header = f"{'C':>3} {'pass (a) s':>11} {'matrix (b) s':>13} {'loop (c) s':>11}"
    print(header + f" {'matrix/pass':>12} {'loop/matrix':>12}")
    for num_classes in args.classes:
        t_pass, t_gcm, t_loop = bench_one(num_classes, args, device)
        print(
            f"{num_classes:>3} {t_pass:>11.3f} {t_gcm:>13.3f} {t_loop:>11.3f}"
            f" {t_gcm / t_pass:>12.2f} {t_loop / t_gcm:>12.2f}"
        )


if __name__ == "__main__":
    main()
