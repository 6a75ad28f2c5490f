"""The shipped-runs protocol (docs/design.md §2, §6): train, evaluate with test-time views and
diagnose every variant x seed, skipping what is already complete; an interrupted run resumes
from its last finished epoch (``train --resume``). ``python -m csba protocol`` is a thin wrapper
of :func:`run_protocol`.

With ``jobs > 1`` the runs go to ``jobs`` worker processes (``python -m csba protocol --jobs 1``
for one variant and seed each) with cores // jobs threads each; they get exactly the serial
path's options (:func:`protocol_train_flags` parses back to :func:`protocol_train_config`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .options import PROTOCOL_OPTIONS, check_values, config_from_args, option_flags
from .progress import progress_bar
from .runs import (
    ensure_single_view_predictions,
    protocol_complete,
    recorded_views,
    store_evaluation,
    wanted_views,
)

__all__ = [
    "ProtocolError",
    "epoch_logger",
    "protocol_train_config",
    "protocol_train_flags",
    "run_protocol",
    "stderr_log",
]

Log = Callable[[str], None]


class ProtocolError(ValueError):
    """The protocol cannot start or a run failed; the message says what to do. ``done``: the
    run folders completed before it stopped."""

    def __init__(self, msg: str, done: Sequence[Path] = ()):
        super().__init__(msg)
        self.done = list(done)


def stderr_log(msg: str) -> None:
    """One line on stderr that does not break a tqdm bar there."""
    tqdm.write(msg, file=sys.stderr)


def epoch_logger(cfg, log: Log = stderr_log) -> Callable[[dict], None]:
    """A :func:`csba.train.train` callback writing one line per epoch (and the start) to ``log``."""

    def callback(ev: dict) -> None:
        if ev["type"] == "start":
            log(
                f"training {cfg.variant} on {cfg.dataset} at {cfg.image_size}px, seed {cfg.seed}: "
                f"{ev['num_batches']} batches/epoch on {ev['device']} ({ev['precision']})"
            )
        elif ev["type"] == "epoch":
            mark = " *" if ev["improved"] else ""
            log(
                f"epoch {ev['epoch']:3d}  train loss {ev['train_loss']:.4f}  "
                f"val loss {ev['val_loss']:.4f}  val acc {ev['val_accuracy']:.3f}  "
                f"val macro-F1 {ev['val_macro_f1']:.3f}{mark}  {ev['seconds']:.1f}s"
            )

    return callback


def protocol_train_config(options: dict[str, Any], variant: str, seed: int, run_dir: Path):
    """The TrainConfig of one protocol run: TrainConfig's defaults, the protocol's options
    (``PROTOCOL_OPTIONS`` names -> values; missing ones keep the default) and this run's
    variant, seed and folder."""
    ns = argparse.Namespace(**options)
    names = [n for n in PROTOCOL_OPTIONS if n in options]
    # an interrupted run continues from its last finished epoch (train --resume)
    return config_from_args(
        ns, names, variant=variant, seed=seed, run_dir=str(run_dir), resume=True
    )


def protocol_train_flags(options: dict[str, Any]) -> list[str]:
    """The same options as command-line flags, for a ``protocol --jobs 1`` worker."""
    names = [n for n in PROTOCOL_OPTIONS if n in options]
    return option_flags(argparse.Namespace(**options), names)


def _run_dir(options: dict[str, Any], variant: str, seed: int) -> Path:
    from .store import config_run_dir
    from .train import TrainConfig

    d = TrainConfig()
    names = ("out", "dataset", "image_size", "backbone", "pretrained")
    values = {n: options.get(n, getattr(d, n)) for n in names}
    return config_run_dir(TrainConfig(**values, variant=variant, seed=seed))


def _read(run_dir: Path) -> dict:
    from .store import RunError, read_run_json

    try:
        return read_run_json(run_dir)
    except RunError:
        return {}


def _result_line(variant: str, seed: int, run_dir: Path, t0: float) -> str:
    from .store import read_run_json

    m = read_run_json(run_dir)["metrics"]["test"]
    return (
        f"   {variant} s{seed}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}  "
        f"({time.perf_counter() - t0:.0f} s so far)"
    )


def run_protocol(
    options: dict[str, Any],
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    views: str | int = "auto",
    diagnose_per_class: int = 0,
    jobs: int = 1,
    log: Log = stderr_log,
    progress: bool = True,
) -> list[Path]:
    """Train, evaluate and diagnose each variant (default: all registered) for each seed.

    ``options``: training options by TrainConfig field (any of ``PROTOCOL_OPTIONS``; ``out`` is
    the root of run folders). ``views``: test-time views behind the stored metrics ("auto":
    8 for EL cells, else 4). ``diagnose_per_class``: images per class for diagnose (0: the whole
    training split). ``log`` gets one line per step; ``progress`` shows a tqdm bar over the
    runs on stderr. Returns the run folders in order (seed-major). Raises ProtocolError.
    """
    from .models import list_models

    variants = list(list_models() if variants in (None, ["all"], ("all",)) else variants)
    unknown = [v for v in variants if v not in list_models()]
    if unknown:
        raise ProtocolError(
            f"unknown variant(s) {unknown}; choose from: {', '.join(list_models())}"
        )
    if jobs < 1:
        raise ProtocolError(f"--jobs must be 1 or more, got {jobs}")
    if diagnose_per_class < 0:
        raise ProtocolError(f"--diagnose-per-class must be 0 or more, got {diagnose_per_class}")
    try:
        check_values(options)
    except ValueError as e:
        raise ProtocolError(str(e)) from None
    tasks = [(v, s) for s in seeds for v in variants]
    t0 = time.perf_counter()
    bar = progress_bar(total=len(tasks), desc="protocol", unit="run", enabled=progress, leave=True)
    try:
        if jobs > 1:
            done = _parallel(options, tasks, views, diagnose_per_class, jobs, log, bar, t0)
        else:
            done = _serial(options, tasks, views, diagnose_per_class, log, bar, t0)
    finally:
        bar.close()
    _refresh_changes(options.get("out", "checkpoints"), log)
    log(
        f"protocol: {len(done)} runs in {time.perf_counter() - t0:.0f} s"
        + (f" with {jobs} jobs" if jobs > 1 else "")
    )
    return done


def _serial(options, tasks, views, per_class, log, bar, t0) -> list[Path]:
    from .diagnostics.run import diagnose_run
    from .train import train

    done = []
    for variant, seed in tasks:
        run_dir = _run_dir(options, variant, seed)
        meta = _read(run_dir)
        trained = meta.get("status") == "completed"
        bar.set_postfix_str(f"{variant} s{seed}")
        if not trained:
            log(f"== {variant} seed {seed} -> {run_dir}")
            cfg = protocol_train_config(options, variant, seed, run_dir)
            meta = train(cfg, callback=epoch_logger(cfg, log))
            if meta["status"] != "completed":
                raise ProtocolError(
                    f"{variant} seed {seed} {meta['status']}; rerun to resume", done
                )
        n = wanted_views(meta, views)
        data_root = options.get("data_root")
        if recorded_views(meta) != n:
            store_evaluation(str(run_dir), n, data_root, options.get("device", "auto"))
        ensure_single_view_predictions(str(run_dir), data_root)
        if "diagnostics" not in meta or not trained:
            diagnose_run(str(run_dir), data_root=data_root, per_class=per_class or None)
        done.append(run_dir)
        log(_result_line(variant, seed, run_dir, t0))
        bar.update()
    return done


def _parallel(options, tasks, views, per_class, jobs, log, bar, t0) -> list[Path]:
    """``jobs`` single-run protocol workers at once, each with cores // jobs threads.

    On a 2-core CPU two 1-thread runs finish about 1.2x more runs per hour than one 2-thread run
    (small convolutions scale poorly across threads). Results depend on the thread count
    (float reductions), so a run reproduces exactly only with the same ``jobs`` on the same
    number of cores; the count is stored in run.json (runtime.threads). Each worker's output
    goes to ``<out>/logs/<dataset-key>-<variant>-s<seed>.log``.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log_dir = Path(options.get("out", "checkpoints")) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    flags = protocol_train_flags(options)

    def worker(task: tuple[str, int]) -> tuple[str, int, int, Path]:
        variant, seed = task
        run_dir = _run_dir(options, variant, seed)
        meta = _read(run_dir)
        if protocol_complete(meta, views):
            return variant, seed, 0, run_dir  # complete: its log stays as it is
        cmd = [sys.executable, "-m", "csba", "protocol", "--jobs", "1", "--no-progress"]
        cmd += ["--variants", variant, "--seeds", str(seed)]
        cmd += ["--diagnose-per-class", str(per_class), "--views", str(views), *flags]
        log_file = log_dir / f"{run_dir.parent.name}-{run_dir.name}.log"
        log(f"== {variant} seed {seed} -> {run_dir} ({threads} thread(s), log {log_file})")
        # A trained run or one that resumes keeps its log; one that starts afresh starts it anew.
        from .resume import resume_dir

        keep_log = (
            meta.get("status") == "completed" or (resume_dir(run_dir) / "state.json").is_file()
        )
        with open(log_file, "a" if keep_log else "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        return variant, seed, rc, run_dir

    done, failed = [], []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for variant, seed, rc, run_dir in pool.map(worker, tasks):
            bar.update()
            if rc != 0:
                failed.append(f"{variant} s{seed}")
                log(f"   {variant} s{seed}: failed (exit {rc}); see {log_dir}")
                continue
            done.append(run_dir)
            log(_result_line(variant, seed, run_dir, t0))
    if failed:
        raise ProtocolError(
            f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun to resume", done
        )
    return done


def _refresh_changes(root: str, log: Log) -> None:
    """Runs diagnosed before their baseline get their conflict change against it now."""
    from .diagnostics.run import refresh_conflict_changes

    for path in refresh_conflict_changes(root):
        log(f"   updated the conflict change against the baseline of {path}")
