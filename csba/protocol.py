"""The shipped-runs protocol (docs/design.md §2, §6): train, evaluate with test-time views and
diagnose every variant x seed, skipping what is already complete; an interrupted run resumes
from its last finished epoch (``train --resume``). ``python -m csba protocol`` is a thin wrapper
of :func:`run_protocol`.

With ``jobs > 1`` the runs go to ``jobs`` worker processes (``python -m csba protocol --jobs 1``
for one variant and seed each) with cores // jobs threads each; they get exactly the serial
path's options (:func:`protocol_train_flags` parses back to :func:`protocol_train_config`).
``backend="ray"`` sends the same per-run function (:func:`run_one`) to a Ray cluster as one
task per run (csba.cluster; docs/scale.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .cluster import RayConfig
from .options import PROTOCOL_OPTIONS, check_values, config_from_args, option_flags
from .progress import progress_bar
from .runs import (
    protocol_complete,
)

__all__ = [
    "BACKENDS",
    "ProtocolError",
    "RunKilled",
    "epoch_logger",
    "protocol_run_command",
    "protocol_train_config",
    "protocol_train_flags",
    "run_one",
    "run_protocol",
    "stderr_log",
]

Log = Callable[[str], None]
BACKENDS = ("jobs", "ray")  # run_protocol(backend=...)


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


def _variant_names(variants: Sequence[str] | None) -> list[str]:
    """The protocol's variants: presets or HEAD+METHOD names ("all": the ten presets), each
    under its canonical name (a pair equal to a preset takes the preset's); ProtocolError
    naming the unknown ones."""
    from .models import list_models, parse_variant, variant_name

    names = list(list_models() if variants in (None, ["all"], ("all",)) else variants)
    out, unknown = [], []
    for v in names:
        try:
            out.append(variant_name(*parse_variant(v)))
        except ValueError:
            unknown.append(v)
    if unknown:
        raise ProtocolError(
            f"unknown variant(s) {unknown}; choose presets ({', '.join(list_models())}) or "
            "HEAD+METHOD (python -m csba parts)"
        )
    return list(dict.fromkeys(out))


def _check_heads(variants: list[str], options: dict[str, Any]) -> None:
    """Refuse, before any data is loaded, a head that cannot take the dataset's classes."""
    from .data import expected_classes
    from .models import check_variant

    n = expected_classes(options.get("dataset", "elpv"), options.get("data_root"))
    for v in variants:
        try:
            check_variant(v, n)
        except ValueError as e:
            raise ProtocolError(str(e)) from None


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
    backend: str = "jobs",
    threads: int | None = None,
    ray: RayConfig | None = None,
) -> list[Path]:
    """Train, evaluate and diagnose each variant (default: all registered) for each seed.

    ``options``: training options by TrainConfig field (any of ``PROTOCOL_OPTIONS``; ``out`` is
    the root of run folders). ``views``: test-time views behind the stored metrics ("auto":
    8 for EL cells, else 4). ``diagnose_per_class``: images per class for diagnose (0: the whole
    training split). ``log`` gets one line per step; ``progress`` shows a tqdm bar over the
    runs on stderr. ``backend``: "jobs" (the embedded pool: ``jobs`` runs at once, or the
    serial path for 1) or "ray" (one Ray task per run, :class:`csba.cluster.RayConfig`
    ``ray``). ``threads``: per run, for both (default: cores // jobs, 1 on Ray); the same seed
    and threads give the same run.json metrics through either. Returns the run folders in
    order (seed-major). Raises ProtocolError.
    """
    variants = _variant_names(variants)
    _check_heads(variants, options)
    if jobs < 1:
        raise ProtocolError(f"--jobs must be 1 or more, got {jobs}")
    if backend not in BACKENDS:
        raise ProtocolError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if threads is not None and threads < 1:
        raise ProtocolError(f"--threads must be 1 or more, got {threads}")
    if backend == "ray" and jobs > 1:
        raise ProtocolError(
            "--jobs is the embedded pool's; on Ray the cluster's CPUs and --threads set how "
            "many runs go at once"
        )
    if backend == "ray":
        from .cluster import ClusterError, import_ray

        ray = RayConfig(**{**asdict(ray or RayConfig()), "threads": threads or 1})
        try:
            ray.check()
            import_ray()
        except ClusterError as e:
            raise ProtocolError(str(e)) from None
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
        if backend == "ray":
            done = _ray(options, tasks, views, diagnose_per_class, ray, log, bar, t0)
        elif jobs > 1 or threads is not None:
            n = threads or default_threads(jobs)
            done = _parallel(options, tasks, views, diagnose_per_class, jobs, n, log, bar, t0)
        else:
            done = _serial(options, tasks, views, diagnose_per_class, log, bar, t0)
    finally:
        bar.close()
    _refresh_changes(options.get("out", "checkpoints"), log)
    log(
        f"protocol: {len(done)} runs in {time.perf_counter() - t0:.0f} s"
        + (" on ray" if backend == "ray" else f" with {jobs} jobs" if jobs > 1 else "")
    )
    return done


def _serial(options, tasks, views, per_class, log, bar, t0) -> list[Path]:
    from .pipeline import after_training
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
        after_training(
            str(run_dir),
            views=views,
            data_root=options.get("data_root"),
            device=options.get("device", "auto"),
            per_class=per_class,
            trained_now=not trained,
        )
        done.append(run_dir)
        log(_result_line(variant, seed, run_dir, t0))
        bar.update()
    return done


def protocol_run_command(
    options: dict[str, Any], variant: str, seed: int, views: str | int, per_class: int
) -> list[str]:
    """The command of one protocol run in a fresh process: ``python -m csba protocol --jobs 1``
    for one variant and seed, with the protocol's options (:func:`protocol_train_flags`)."""
    cmd = [sys.executable, "-m", "csba", "protocol", "--jobs", "1", "--no-progress"]
    cmd += ["--variants", variant, "--seeds", str(seed)]
    cmd += ["--diagnose-per-class", str(per_class), "--views", str(views)]
    return [*cmd, *protocol_train_flags(options)]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the run's process is killed when the process that started it dies (a Ray worker
    killed mid-run must not leave its training behind, racing its retry for the folder)."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_one(
    options: dict[str, Any],
    variant: str,
    seed: int,
    views: str | int,
    per_class: int,
    threads: int,
    log_file: Path,
    header: str = "",
) -> int:
    """One protocol run (train or resume, evaluate, diagnose) in a fresh process pinned to
    ``threads`` threads (OMP/MKL_NUM_THREADS); its output goes to ``log_file``, after the line
    ``header`` if given. Returns its exit status (negative: killed by that signal).

    The one per-run function of both backends, the ``--jobs`` pool and ``--backend ray``: the
    same options, seed and thread count give the same run through either.
    """
    from .resume import resume_dir

    run_dir = _run_dir(options, variant, seed)
    meta = _read(run_dir)
    # A trained run or one that resumes keeps its log; one that starts afresh starts it anew.
    keep_log = meta.get("status") == "completed" or (resume_dir(run_dir) / "state.json").is_file()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = protocol_run_command(options, variant, seed, views, per_class)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a" if keep_log else "w") as fh:
        if header:
            fh.write(header.rstrip("\n") + "\n")
            fh.flush()
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
    return proc.returncode


def default_threads(jobs: int) -> int:
    """Threads per run of the ``--jobs`` pool when ``--threads`` is not given: cores // jobs."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _log_file(options: dict[str, Any], run_dir: Path) -> Path:
    return (
        Path(options.get("out", "checkpoints"))
        / "logs"
        / f"{run_dir.parent.name}-{run_dir.name}.log"
    )


def _parallel(options, tasks, views, per_class, jobs, threads, log, bar, t0) -> list[Path]:
    """``jobs`` single-run protocol workers at once (:func:`run_one`), ``threads`` each.

    On a 2-core CPU two 1-thread runs finish about 1.2x more runs per hour than one 2-thread run
    (small convolutions scale poorly across threads). Results depend on the thread count
    (float reductions), so a run reproduces exactly only with the same thread count; the count
    is stored in run.json (runtime.threads). Each worker's output goes to
    ``<out>/logs/<dataset-key>-<variant>-s<seed>.log``.
    """
    log_dir = Path(options.get("out", "checkpoints")) / "logs"

    def worker(task: tuple[str, int]) -> tuple[str, int, int, Path]:
        variant, seed = task
        run_dir = _run_dir(options, variant, seed)
        if protocol_complete(_read(run_dir), views):
            return variant, seed, 0, run_dir  # complete: its log stays as it is
        log_file = _log_file(options, run_dir)
        log(f"== {variant} seed {seed} -> {run_dir} ({threads} thread(s), log {log_file})")
        rc = run_one(options, variant, seed, views, per_class, threads, log_file)
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


class RunKilled(RuntimeError):
    """A run's process was killed by a signal (out of memory, a node going away): Ray retries
    the task, and the retry resumes from the run's last finished epoch."""


def _local_root(options: dict[str, Any], variant: str, seed: int) -> Path:
    """A worker-local runs root for ``--ray-storage return``, the same for a retry on the same
    node (so it resumes from that node's last finished epoch), distinct per run and options."""
    import hashlib
    import json
    import tempfile

    key = json.dumps([sorted(options.items()), variant, seed], default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "csba-ray" / digest


def _folder_files(run_dir: Path, skip_resume: bool) -> dict[str, bytes]:
    files = {}
    for f in sorted(run_dir.rglob("*")):
        rel = f.relative_to(run_dir)
        if (
            f.is_file()
            and not f.name.startswith(".")
            and not (skip_resume and rel.parts[0] == "resume")
        ):
            files[str(rel)] = f.read_bytes()
    return files


def _ray_task(options, variant, seed, views, per_class, threads, storage, inputs) -> dict:
    """One protocol run as a Ray task: :func:`run_one` with the task's threads. ``storage``
    "shared": the run lands under ``options["out"]``; "return": it runs under a worker-local
    root, seeded with ``inputs`` (the driver's files of the run folder: a run to finish), and
    its files come back in the result. A killed run raises :class:`RunKilled` (retried)."""
    import platform
    import shutil

    if storage == "return":
        options = {**options, "out": str(_local_root(options, variant, seed))}
    run_dir = _run_dir(options, variant, seed)
    if storage == "return" and inputs and not run_dir.exists():
        from .store import write_run_files

        write_run_files(run_dir, inputs)
    log_file = _log_file(options, run_dir)
    header = f"# ray worker pid {os.getpid()} on {platform.node()}, {threads} thread(s)"
    rc = run_one(options, variant, seed, views, per_class, threads, log_file, header)
    if rc < 0:
        raise RunKilled(f"{variant} s{seed}: its process was killed (signal {-rc})")
    out = {"rc": rc, "node": platform.node(), "files": None, "log": None}
    if storage == "return":
        out["log"] = log_file.read_bytes() if log_file.is_file() else b""
        if rc == 0:
            out["files"] = _folder_files(run_dir, skip_resume=True)
            shutil.rmtree(options["out"], ignore_errors=True)
    return out


def _here(files: dict[str, bytes], options: dict[str, Any], run_dir: Path) -> dict[str, bytes]:
    """A returned run's files with run.json's config pointing at the driver's folder, not the
    worker-local one it was trained in (no other field holds a path of the worker)."""
    import json

    meta = json.loads(files["run.json"])
    meta["config"].update(out=options["out"], run_dir=str(run_dir))
    return {**files, "run.json": json.dumps(meta, indent=1).encode()}


def _ray(options, tasks, views, per_class, ray_cfg, log, bar, t0) -> list[Path]:
    """Every run as a Ray task (csba.cluster); complete runs are skipped on the driver."""
    import shutil

    from .cluster import ray_map, ray_session
    from .resume import resume_dir
    from .store import atomic_write_bytes, write_run_files

    # the workers see paths as the driver does only if they are absolute (shared storage)
    options = dict(options, out=str(Path(options.get("out", "checkpoints")).resolve()))
    if options.get("data_root"):
        options["data_root"] = str(Path(options["data_root"]).resolve())
    todo, done, failed = [], {}, []
    for variant, seed in tasks:
        run_dir = _run_dir(options, variant, seed)
        if protocol_complete(_read(run_dir), views):
            done[(variant, seed)] = run_dir
            bar.update()
            log(_result_line(variant, seed, run_dir, t0) + "  (complete, skipped)")
            continue
        inputs = (
            _folder_files(run_dir, False)
            if ray_cfg.storage == "return" and run_dir.is_dir()
            else {}
        )
        todo.append((variant, seed, run_dir, inputs))
    calls = [
        (options, v, s, views, per_class, ray_cfg.threads, ray_cfg.storage, inputs)
        for v, s, _, inputs in todo
    ]
    with ray_session(ray_cfg) as ray:
        cpus = ray.cluster_resources().get("CPU", 0)
        log(
            f"ray: {len(calls)} run(s) on {cpus:g} CPU(s), {ray_cfg.threads} thread(s) and "
            f"{ray_cfg.gpus:g} GPU(s) each, storage {ray_cfg.storage}"
        )
        for i, result, error in ray_map(_ray_task, calls, ray_cfg, retry_exceptions=[RunKilled]):
            variant, seed, run_dir, _ = todo[i]
            bar.update()
            if error is None and result["log"] is not None:  # storage "return"
                log_file = _log_file(options, run_dir)
                log_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(log_file, result["log"])
            if error is None and result["files"]:
                write_run_files(run_dir, _here(result["files"], options, run_dir))
                shutil.rmtree(resume_dir(run_dir), ignore_errors=True)
            if error is not None or result["rc"] != 0:
                why = (
                    f"exit {result['rc']}" if error is None else " ".join(str(error).split())[:200]
                )
                failed.append(f"{variant} s{seed}")
                log(f"   {variant} s{seed}: failed ({why}); see {_log_file(options, run_dir)}")
                continue
            done[(variant, seed)] = run_dir
            log(_result_line(variant, seed, run_dir, t0) + f"  [{result['node']}]")
    ordered = [done[t] for t in tasks if t in done]
    if failed:
        raise ProtocolError(
            f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun to resume", ordered
        )
    return ordered


def _refresh_changes(root: str, log: Log) -> None:
    """Runs diagnosed before their baseline get their conflict change against it now."""
    from .diagnostics.run import refresh_conflict_changes

    for path in refresh_conflict_changes(root):
        log(f"   updated the conflict change against the baseline of {path}")
