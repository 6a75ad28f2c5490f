"""The Attributions worker's torch threads: time and CPU of one attribution job, 1 thread vs
torch's default.

    python benchmarks/bench_worker_threads.py [--run checkpoints/elpv/csba-s0] [--images 3]
                                              [--rounds 3] [--busy 0]

Runs the page's job (csba.attributions.explain_image: Integrated Gradients, Saliency, Grad-CAM)
on --images test images of the run's dataset inside a csba.workqueue.WorkQueue, once with
``threads=1`` (the dashboard's setting) and once with torch's default, interleaved in each round
so machine drift hits both alike. It prints, per setting, the median wall time and the process's
CPU time (user + system, every thread) per job, and their ratios default / 1 thread. The CPU
the worker does not burn is left to the browsers and the scripts on the same cores. ``--busy N``
keeps N spinning processes running meanwhile (the other users' browsers, roughly).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from csba.attributions import METHODS, explain_image
from csba.data import load_dataset
from csba.store import load_run
from csba.workqueue import WorkQueue


def _spin() -> None:
    while True:
        pass


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("checkpoints/elpv/csba-s0"))
    ap.add_argument("--images", type=int, default=3, help="test images per job")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=int, default=0, help="spinning processes meanwhile")
    args = ap.parse_args(argv)

    from PIL import Image

    run = load_run(args.run)
    ds = run.meta["dataset"]
    bundle = load_dataset(
        ds["name"],
        int(ds["image_size"]),
        data_root=ds.get("data_root") or run.meta["config"].get("data_root"),
        split_seed=int(ds.get("split_seed", 0)),
    )
    images = []
    for i in range(min(args.images, len(bundle.test.labels))):
        px = bundle.test.images[i].permute(1, 2, 0).numpy()
        images.append(Image.fromarray(np.repeat(px, 3, axis=2) if px.shape[2] == 1 else px))

    def job() -> None:
        for im in images:
            explain_image(run.model, run.meta, im, None, methods=METHODS)

    settings = {"1 thread": WorkQueue(threads=1), "default": WorkQueue()}
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in settings}
    try:
        for rnd in range(args.rounds + 1):  # round 0: warm-up
            order = list(settings) if rnd % 2 == 0 else list(settings)[::-1]
            for name in order:
                c0, t0 = _cpu_s(), time.perf_counter()
                settings[name].submit((name, rnd), job).result()
                if rnd:
                    times[name].append((time.perf_counter() - t0, _cpu_s() - c0))
    finally:
        for p in spinners:
            p.terminate()
    out = {
        k: {
            "wall_s": statistics.median(w for w, _ in v),
            "cpu_s": statistics.median(c for _, c in v),
        }
        for k, v in times.items()
    }
    print(
        f"{args.run}: {len(images)} image(s) per job, {args.rounds} round(s), {args.busy} busy "
        f"process(es), torch default {torch.get_num_threads()} threads"
    )
    print(f"{'setting':10s} {'wall s':>8s} {'cpu s':>8s}")
    for k, v in out.items():
        print(f"{k:10s} {v['wall_s']:8.2f} {v['cpu_s']:8.2f}")
    one, dflt = out["1 thread"], out["default"]
    print(
        f"default / 1 thread: wall {dflt['wall_s'] / one['wall_s']:.2f}, "
        f"cpu {dflt['cpu_s'] / one['cpu_s']:.2f}"
    )
    return out


if __name__ == "__main__":
    main()
