"""Scale-out overheads on one machine (docs/scale.md): the Ray backend against ``--jobs``, and a
2-process torchrun (DDP, gloo) epoch against a 1-process epoch.

Both ratios come from one run of this script, each numerator and denominator back to back:

* protocol: the same R tiny protocol runs (train 1 epoch, evaluate, diagnose) through
  ``protocol --jobs J --threads 1`` and ``protocol --backend ray --threads 1`` on a local Ray
  instance with J CPUs (its start-up included, as a user sees it); prints wall seconds, the
  Ray overhead per run and the Ray start-up alone;
* DDP: ``python -m csba train`` for 2 epochs in one process with 1 thread and with 2 threads,
  and under ``torchrun --nproc_per_node 2`` with 1 thread per process, the same global batch;
  prints epoch 2's training seconds and the whole epoch (with validation), and the ratios.

Usage::

    python benchmarks/bench_scale.py                       # ELPV, 4 protocol runs, 64 px DDP
    python benchmarks/bench_scale.py --runs 8 --ddp-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere, uninstalled


def _env(threads: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def protocol_overhead(args, tmp: Path) -> dict:
    seeds = [str(s) for s in range(max(1, args.runs // 2))]
    common = [sys.executable, "-m", "csba", "protocol", "--variants", "baseline", "csba"]
    common += ["--seeds", *seeds, "--epochs", "1", "--image-size", str(args.protocol_size)]
    common += ["--diagnose-per-class", "8", "--threads", "1", "--no-progress"]
    common += ["--device", "cpu", "--precision", "fp32", "--dataset", args.dataset]
    if args.data_root:
        common += ["--data-root", args.data_root]
    n = 2 * len(seeds)
    t_jobs = _run([*common, "--jobs", str(args.jobs), "--out", str(tmp / "jobs")], _env())
    # Ray with as many CPUs as the pool has jobs: the same concurrency and threads per run
    code = (
        "import ray, sys, time, tempfile; t = time.perf_counter(); "
        f"ray.init(num_cpus={args.jobs}, include_dashboard=False, log_to_driver=False, "
        "_temp_dir=tempfile.mkdtemp(prefix='ray', dir='/tmp')); "
        "s = time.perf_counter() - t; "
        "from csba.cli import main; rc = main(sys.argv[1:]); print('init', s, file=sys.stderr); "
        "ray.shutdown(); sys.exit(rc)"
    )
    t = time.perf_counter()
    cmd = [sys.executable, "-c", code, *common[3:], "--backend", "ray", "--out", str(tmp / "ray")]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600)
    t_ray = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"ray protocol failed:\n{r.stderr[-2000:]}")
    init = float(next(ln.split()[1] for ln in r.stderr.splitlines() if ln.startswith("init ")))
    pairs = [
        (f, tmp / "ray" / f.relative_to(tmp / "jobs")) for f in (tmp / "jobs").rglob("run.json")
    ]
    same = all(
        json.loads(a.read_text())["metrics"] == json.loads(b.read_text())["metrics"]
        for a, b in pairs
    )
    return {"runs": n, "jobs_s": t_jobs, "ray_s": t_ray, "ray_init_s": init, "same": same}


def ddp_epoch(args, tmp: Path) -> dict:
    train = ["train", "--dataset", args.dataset, "--variant", "csba", "--epochs", "2"]
    train += ["--image-size", str(args.ddp_size), "--batch-size", "32", "--device", "cpu"]
    train += ["--precision", "fp32", "--patience", "5"]
    if args.data_root:
        train += ["--data-root", args.data_root]
    out = {}
    for name, threads in (("one", 1), ("one2", 2)):
        one = [sys.executable, "-m", "csba", *train, "--out", str(tmp / name)]
        _run(one, _env(threads=threads))
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two += ["-m", "csba", *train, "--out", str(tmp / "two")]
    _run(two, _env(threads=1))
    for name in ("one", "one2", "two"):
        meta = json.loads(next((tmp / name).rglob("run.json")).read_text())
        h = meta["history"][1]  # epoch 2: no one-off warm-up
        out[name] = {"train_s": h["train_seconds"], "epoch_s": h["seconds"]}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="elpv", help="default %(default)s")
    p.add_argument("--data-root", default=None)
    p.add_argument("--runs", type=int, default=4, help="protocol runs (default %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="pool size and Ray CPUs (default 2)")
    p.add_argument("--protocol-size", type=int, default=32, help="px (default %(default)s)")
    p.add_argument("--ddp-size", type=int, default=64, help="px (default %(default)s)")
    p.add_argument("--only", choices=("protocol", "ddp"), default=None, help="one half only")
    args = p.parse_args()
    from csba.data import load_dataset

    for size in {args.protocol_size, args.ddp_size}:  # decoded once, before any timing
        load_dataset(args.dataset, size, data_root=args.data_root)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        pr = None if args.only == "ddp" else protocol_overhead(args, tmp / "protocol")
        if pr is not None:
            _print_protocol(args, pr)
        if args.only != "protocol":
            _print_ddp(args, ddp_epoch(args, tmp / "ddp"))
        print(f"all: {time.perf_counter() - t0:.0f} s")
    return 0


def _print_protocol(args, pr: dict) -> None:
    print(f"protocol, {pr['runs']} runs at {args.protocol_size} px, 1 thread each:")
    print(f"  --jobs {args.jobs}:          {pr['jobs_s']:7.1f} s")
    print(f"  --backend ray ({args.jobs} CPUs): {pr['ray_s']:7.1f} s", end="")
    print(f"  (Ray start-up {pr['ray_init_s']:.1f} s)")
    per_run = (pr["ray_s"] - pr["jobs_s"]) / pr["runs"]
    per_run_ex = (pr["ray_s"] - pr["ray_init_s"] - pr["jobs_s"]) / pr["runs"]
    print(f"  ray / jobs {pr['ray_s'] / pr['jobs_s']:.3f}; overhead per run {per_run:+.2f} s")
    print(f"  ({per_run_ex:+.2f} s without the start-up); same metrics: {pr['same']}")


def _print_ddp(args, dd: dict) -> None:
    one, one2, two = dd["one"], dd["one2"], dd["two"]
    print(f"DDP, csba at {args.ddp_size} px, global batch 32, epoch 2:")
    for label, r in (("1 process x 1 thread", one), ("1 process x 2 threads", one2)):
        print(f"  {label}: train {r['train_s']:6.1f} s, epoch {r['epoch_s']:6.1f} s")
    print(f"  2 processes x 1 thread: train {two['train_s']:6.1f} s, epoch {two['epoch_s']:6.1f} s")
    for label, r in (("1 x 1 thread", one), ("1 x 2 threads", one2)):
        ratio_t, ratio_e = two["train_s"] / r["train_s"], two["epoch_s"] / r["epoch_s"]
        print(f"  2-process / {label}: train {ratio_t:.3f}, epoch {ratio_e:.3f}")


if __name__ == "__main__":
    sys.exit(main())
