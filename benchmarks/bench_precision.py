"""Does bfloat16 autocast + channels_last keep accuracy within seed noise? (issue 4, target 2)

    python benchmarks/bench_precision.py [--image-size 64] [--seeds 0 1 2] [--jobs 2]
                                         [--ema-decay 0.998]

Trains one variant on ELPV with the pinned protocol (early stopping included) in float32 NCHW
and in bf16 + channels_last for each seed, as ``python -m csba train`` worker processes
(``--jobs`` at a time, cores // jobs threads each; complete runs under ``--out`` are reused), then
prints per precision: mean epoch seconds, epochs run, test accuracy, macro-F1 and minority-class
F1 (mean ± sample std over seeds), and the bf16 - fp32 difference of the seed means with

* its seed-to-seed standard error (Welch) and whether |difference| <= 2 SE ("within seed
  noise"), and
* a paired bootstrap 95% interval of the macro-F1 difference over the test images
  (``csba.stats.bootstrap_seed_mean``), which says how much of it the test set alone explains.

``--ema-decay D`` adds a third arm, bf16 + channels_last with a moving average of the weights
(``python -m csba train --ema-decay D``), and prints the same differences for it against plain
bf16: the validation evidence for that protocol change (docs/design.md §2).

Epoch times of runs trained side by side share the CPU; compare them only within one call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from csba import stats  # noqa: E402
from csba.store import RunError, read_run_json  # noqa: E402

PRECISIONS = ("fp32", "bf16")
EMA = "bf16-ema"  # the optional third arm


def _train(args, arm: str, seed: int, threads: int) -> Path:
    precision = "bf16" if arm == EMA else arm
    tag = f"bf16-ema{args.ema_decay:g}" if arm == EMA else arm
    run_dir = Path(args.out) / f"{args.variant}-{args.image_size}px-{tag}-s{seed}"
    try:
        if read_run_json(run_dir).get("status") == "completed":
            return run_dir
    except RunError:
        pass
    cmd = [sys.executable, "-m", "csba", "train", "--dataset", "elpv", "--variant", args.variant]
    cmd += ["--seed", str(seed), "--image-size", str(args.image_size), "--precision", precision]
    cmd += ["--epochs", str(args.epochs), "--run-dir", str(run_dir), "--overwrite"]
    if arm == EMA:
        cmd += ["--ema-decay", str(args.ema_decay)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = Path(args.out) / f"{run_dir.name}.log"
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if rc.returncode:
        raise SystemExit(f"{run_dir.name} failed (exit {rc.returncode}); see {log}")
    return run_dir


def _summary(metas: list[dict], minority: int) -> dict:
    def agg(values):
        return stats.aggregate_seeds([float(v) for v in values])

    test = [m["metrics"]["test"] for m in metas]
    classes = metas[0]["classes"]
    return {
        "epoch_s": agg(np.mean([h["seconds"] for h in m["history"]]) for m in metas),
        "epochs": agg(m["epochs_run"] for m in metas),
        "accuracy": agg(t["accuracy"] for t in test),
        "macro_f1": agg(t["macro_f1"] for t in test),
        "minority_f1": agg(t["per_class"][classes[minority]]["f1"] for t in test),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="csba")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=300, help="maximum epochs (early stopping)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads per training (0: cores // jobs). Keep jobs x threads <= free cores: an "
        "oversubscribed multi-threaded run can be 10-100x slower",
    )
    p.add_argument("--out", default="runs/precision", help="run folders (reused when complete)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="also train bf16 with this weight EMA and compare it with plain bf16 (0: skip)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    arms = PRECISIONS + ((EMA,) if args.ema_decay > 0 else ())
    tasks = [(arm, s) for s in args.seeds for arm in arms]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        dirs = list(pool.map(lambda t: _train(args, t[0], t[1], threads), tasks))
    wall = time.perf_counter() - t0
    metas = {t: read_run_json(d) for t, d in zip(tasks, dirs, strict=True)}
    ref = metas[tasks[0]]
    counts = ref["dataset"]["counts"]["train"]
    minority = int(np.argmin(counts))
    summary = {arm: _summary([metas[(arm, s)] for s in args.seeds], minority) for arm in arms}
    y_true = np.asarray(ref["predictions"]["test"]["y_true"])
    preds = {
        arm: [np.asarray(metas[(arm, s)]["predictions"]["test"]["y_pred"]) for s in args.seeds]
        for arm in arms
    }

    def differences(arm: str, reference: str) -> dict:
        boot = stats.bootstrap_seed_mean(
            y_true, preds[arm], len(ref["classes"]), args.resamples, 0, reference=preds[reference]
        )
        diffs = {}
        for key in ("accuracy", "macro_f1", "minority_f1"):
            a, b = summary[arm][key], summary[reference][key]
            d = a["mean"] - b["mean"]
            se = (
                math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
                if a["n"] > 1
                else math.nan
            )
            diffs[key] = {"diff": d, "seed_se": se, "within_seed_noise": bool(abs(d) <= 2 * se)}
        diffs["macro_f1"]["bootstrap_ci"] = list(boot["macro_f1"]["ci"])
        return diffs

    comparisons = {"bf16_minus_fp32": ("bf16", "fp32")}
    if EMA in arms:
        comparisons["ema_minus_bf16"] = (EMA, "bf16")
    diffs = {name: differences(*pair) for name, pair in comparisons.items()}
    speed = summary["fp32"]["epoch_s"]["mean"] / summary["bf16"]["epoch_s"]["mean"]
    out = {
        "variant": args.variant,
        "image_size": args.image_size,
        "seeds": args.seeds,
        "threads_per_run": threads,
        "jobs": args.jobs,
        "wall_seconds": wall,
        "ema_decay": args.ema_decay,
        "summary": summary,
        **diffs,
        "epoch_speedup_bf16": speed,
        "runs": [str(d) for d in dirs],
    }
    if args.json:
        print(json.dumps(out, indent=1, default=float))
        return 0
    print(
        f"{args.variant} on ELPV at {args.image_size} px, seeds {args.seeds}, {args.jobs} runs at "
        f"a time x {threads} thread(s); {wall:.0f} s wall (0 when all runs were reused)"
    )
    minority_name = ref["classes"][minority]
    head = f"{'precision':<22}{'epoch s':>9}{'epochs':>8}{'accuracy':>16}{'macro-F1':>16}"
    print(head + f"{'F1 ' + minority_name:>26}")

    def cell(a, digits=3):
        return f"{a['mean']:.{digits}f} ± {a['std']:.{digits}f}"

    labels = {
        "fp32": "fp32 NCHW",
        "bf16": "bf16 + channels_last",
        EMA: f"bf16 + EMA {args.ema_decay:g}",
    }
    for arm in arms:
        s, label = summary[arm], labels[arm]
        print(
            f"{label:<22}{s['epoch_s']['mean']:>9.2f}{s['epochs']['mean']:>8.0f}"
            f"{cell(s['accuracy']):>16}{cell(s['macro_f1']):>16}{cell(s['minority_f1']):>26}"
        )
    print(f"epoch speed-up of bf16 + channels_last: {speed:.2f}x")
    for name, (arm, reference) in comparisons.items():
        for key, d in diffs[name].items():
            verdict = "within seed noise" if d["within_seed_noise"] else "OUTSIDE seed noise"
            extra = ""
            if "bootstrap_ci" in d:
                lo, hi = d["bootstrap_ci"]
                extra = f"; paired bootstrap 95% interval over test images [{lo:+.3f}, {hi:+.3f}]"
            print(
                f"{labels[arm]} - {labels[reference]} {key}: {d['diff']:+.3f} "
                f"(seed SE {d['seed_se']:.3f}: {verdict}){extra}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
