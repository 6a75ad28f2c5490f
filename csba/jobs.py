"""Background training jobs for the dashboard: a thread-based, lock-guarded queue.

Pure Python (no Streamlit). One :class:`JobManager` runs one job at a time in a worker thread; a
job is a list of :class:`csba.train.TrainConfig` (say, several variants) trained one after the
other. A second :meth:`JobManager.submit` while a job runs is queued behind it, never run
concurrently. Progress (epoch, batch, live losses, validation macro-F1), status and errors are
kept in the manager and read with :meth:`JobManager.snapshot`, a deep copy the caller may keep.

Statuses: ``queued`` -> ``running`` -> ``completed`` | ``cancelled`` | ``failed``. A failure keeps
its one-line message and the traceback; a cancel takes effect within one batch (``should_stop`` is
polled before every batch). After a run is stored the manager runs the run-level diagnostics when
``csba.diagnostics`` offers them (``diagnose_run``), so the run arrives evaluated and diagnosed.
"""

from __future__ import annotations

import copy
import itertools
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .store import RunError, config_run_dir, read_run_json

__all__ = [
    "FINISHED",
    "Job",
    "JobManager",
    "RunProgress",
    "check_data_root",
    "default_device",
    "find_run_diagnoser",
]

FINISHED = ("completed", "cancelled", "failed")
MAX_BATCH_POINTS = 4000  # live loss curve: keep at most this many (thinned) batch losses


def default_device() -> str:
    """Where training runs by default, said plainly: "cuda (<gpu name>)" or "cpu (no GPU found)"."""
    import torch

    if torch.cuda.is_available():
        try:
            name = torch.cuda.get_device_name(0)
        except Exception:  # a broken driver still trains on the CPU
            return "cpu (no usable GPU found)"
        return f"cuda ({name})"
    return "cpu (no GPU found)"


def check_data_root(text: str | None, allowed_root: str | os.PathLike | None = None) -> Path:
    """A user-typed data root -> resolved folder, or ValueError with a one-line reason.

    With ``allowed_root`` (the dashboard passes $CSBA_DATA_ROOT), the folder must resolve inside
    it (symlinks and '..' resolved first), so a shared dashboard cannot read arbitrary folders.
    """
    text = (text or "").strip()
    if not text:
        raise ValueError("this dataset needs a data root: type the folder that holds the data")
    base = Path(allowed_root).expanduser().resolve() if allowed_root else None
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    path = path.resolve()
    if base is not None and path != base and base not in path.parents:
        raise ValueError(f"data root '{path}' is outside the allowed folder '{base}'")
    if not path.exists():
        raise ValueError(f"data root '{path}' does not exist")
    if not path.is_dir():
        raise ValueError(f"data root '{path}' is not a folder")
    return path


def evaluate_and_diagnose(run_dir: str) -> None:
    """What ``python -m csba protocol`` does after training (csba.pipeline.after_training:
    the dataset's test-time views, single-view predictions kept, diagnose on the whole
    training split, on the device the run trained on), so dashboard runs compare like with
    like against the shipped ones."""
    from .pipeline import after_training

    after_training(run_dir)


def find_run_diagnoser() -> Callable[[str], object] | None:
    """The post-training step of a job: :func:`evaluate_and_diagnose`."""
    return evaluate_and_diagnose


# what the Training page's per-epoch table shows of each epoch event
EPOCH_FIELDS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "seconds",
    "improved",
)


@dataclass
class RunProgress:
    """One configuration of a job: its progress, history and outcome."""

    variant: str
    seed: int
    run_dir: str
    status: str = "queued"  # queued | running | diagnosing | completed | cancelled | failed
    note: str = ""  # e.g. "seed 0 already had a run; using seed 1"
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    num_batches: int = 0
    device: str = ""
    precision: str = ""
    batch_losses: list[tuple[float, float]] = field(default_factory=list)  # (epoch + frac, loss)
    history: list[dict] = field(default_factory=list)  # per epoch: train/val loss, val macro-F1
    error: str | None = None  # one line
    traceback: str | None = None
    result: dict = field(default_factory=dict)  # test macro-F1/accuracy, stop reason, kept epoch
    diagnostics: str = ""  # "diagnosed", "not available" or the diagnosis error
    batches_after_cancel: int = 0  # batches that started after a cancel (should stay 0)
    started: float | None = None
    finished: float | None = None

    @property
    def fraction(self) -> float:
        """Share of the planned batches done, in [0, 1]."""
        if self.status in ("completed", "diagnosing"):
            return 1.0
        if not self.epochs or not self.num_batches:
            return 0.0
        done = (self.epoch - 1) * self.num_batches + self.batch
        return max(0.0, min(1.0, done / (self.epochs * self.num_batches)))


@dataclass
class Job:
    """A queued list of runs, trained one after the other."""

    id: str
    configs: list  # list[TrainConfig]
    runs: list[RunProgress]
    status: str = "queued"  # queued | running | completed | cancelled | failed
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False

    @property
    def current(self) -> RunProgress | None:
        """The run in progress, else the last one that started."""
        started = [r for r in self.runs if r.status != "queued"]
        return started[-1] if started else None

    @property
    def error(self) -> str | None:
        errors = [f"{r.variant}: {r.error}" for r in self.runs if r.error]
        return "; ".join(errors) or None

    @property
    def label(self) -> str:
        c = self.configs[0]
        variants = ", ".join(r.variant for r in self.runs)
        epochs = f"{c.epochs} epoch" + ("s" if c.epochs != 1 else "")
        return f"{c.dataset} {c.image_size}px, {epochs}: {variants}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return msg or type(exc).__name__


class JobManager:
    """Queue + one worker thread; every piece of state behind one lock.

    ``train_fn`` (default :func:`csba.train.train`) and ``diagnose_fn`` (default: the run
    diagnosis of :func:`find_run_diagnoser`, ``False`` to skip) are injectable for tests.
    """

    def __init__(
        self,
        *,
        train_fn: Callable | None = None,
        diagnose_fn: Callable[[str], object] | bool | None = None,
    ) -> None:
        self._lock = threading.Condition(threading.RLock())
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._running: str | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._train_fn = train_fn
        self._diagnose_fn = diagnose_fn
        self._runs_version = 0  # grows whenever a run folder is written or updated
        self._closed = False

    # ---- submitting --------------------------------------------------------------------------

    def _reserved(self) -> set[str]:
        return {
            r.run_dir
            for j in self._jobs.values()
            if j.status in ("queued", "running")
            for r in j.runs
            if r.status not in FINISHED
        }

    def _free_run_dir(self, cfg, reserved: set[str]) -> tuple[object, str]:
        """cfg with a run folder nobody uses (bumping the seed), and a note when it moved."""
        if cfg.run_dir:
            path = Path(cfg.run_dir)
            if (path / "run.json").exists() or str(path) in reserved:
                raise ValueError(f"'{path}' already holds a run; choose another folder")
            return cfg, ""
        seed = int(cfg.seed)
        for _ in range(10_000):
            path = config_run_dir(cfg, seed)
            if not (path / "run.json").exists() and str(path) not in reserved:
                note = (
                    ""
                    if seed == cfg.seed
                    else f"seed {cfg.seed} already has a run; training seed {seed} instead"
                )
                return replace(cfg, seed=seed, run_dir=str(path)), note
            seed += 1
        raise ValueError(f"no free seed for {cfg.variant} under '{cfg.out}'")  # pragma: no cover

    def submit(self, configs: Sequence) -> str:
        """Queue one job training ``configs`` in order; returns its id.

        A config without ``run_dir`` gets ``config_run_dir(cfg)`` (csba.store.run_dir_for);
        when that folder already holds a run (or a queued job will write it) the next free seed is
        used and the run's ``note`` says so. Nothing existing is ever overwritten.
        """
        configs = [copy.deepcopy(c) for c in configs]
        if not configs:
            raise ValueError("choose at least one variant to train")
        with self._lock:
            if self._closed:
                raise RuntimeError("the job manager is shut down")
            reserved = self._reserved()
            fixed, runs = [], []
            for cfg in configs:
                cfg, note = self._free_run_dir(cfg, reserved)
                reserved.add(cfg.run_dir)
                fixed.append(cfg)
                runs.append(
                    RunProgress(
                        cfg.variant, int(cfg.seed), cfg.run_dir, note=note, epochs=cfg.epochs
                    )
                )
            job_id = f"job-{next(self._ids)}"
            self._jobs[job_id] = Job(job_id, fixed, runs)
            self._queue.append(job_id)
            self._ensure_worker()
            self._lock.notify_all()
        return job_id

    def cancel(self, job_id: str) -> bool:
        """Ask a queued or running job to stop; the running run stops before its next batch.

        Returns False when the job is unknown or already finished.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status in FINISHED:
                return False
            job.cancel_requested = True
            if job.status == "queued":
                self._queue.remove(job_id)
                job.status = "cancelled"
                job.finished = time.time()
                for r in job.runs:
                    r.status = "cancelled"
            self._lock.notify_all()
            return True

    # ---- reading -----------------------------------------------------------------------------

    def snapshot(self) -> list[Job]:
        """Deep copies of every job, oldest first (safe to read while training goes on)."""
        with self._lock:
            return copy.deepcopy(list(self._jobs.values()))

    def busy_run_dirs(self) -> dict[str, str]:
        """``{resolved run folder: status}`` of the runs still being written (``running`` or
        ``diagnosing``): their run.json, if any, is not final yet. Cheap: no deep copy."""
        with self._lock:
            return {
                str(Path(r.run_dir).resolve()): r.status
                for j in self._jobs.values()
                for r in j.runs
                if r.run_dir and r.status in ("running", "diagnosing")
            }

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return copy.deepcopy(job) if job is not None else None

    @property
    def running(self) -> str | None:
        with self._lock:
            return self._running

    @property
    def queued(self) -> list[str]:
        with self._lock:
            return list(self._queue)

    @property
    def runs_version(self) -> int:
        """Grows whenever this manager writes or updates a run folder (pages clear caches)."""
        with self._lock:
            return self._runs_version

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job finishes (or the timeout passes); returns its snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                job = self._jobs.get(job_id)
                if job is None or job.status in FINISHED:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._lock.wait(timeout=left if left is not None else 1.0)
            return copy.deepcopy(job) if job is not None else None

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Cancel everything and wait for the worker thread (tests, interpreter exit)."""
        with self._lock:
            self._closed = True
            for job_id in [*self._queue, *([self._running] if self._running else [])]:
                self.cancel(job_id)
            thread = self._thread
            self._lock.notify_all()
        if thread is not None:
            thread.join(timeout)

    # ---- worker ------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="csba-train-jobs", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:  # idle: the thread ends; the next submit starts a new one
                    self._thread = None
                    return
                job_id = self._queue.pop(0)
                job = self._jobs[job_id]
                job.status, job.started = "running", time.time()
                self._running = job_id
            try:
                self._run_job(job)
            finally:
                with self._lock:
                    for r in job.runs:  # only reached by a bug or a BaseException
                        if r.status in ("running", "diagnosing"):
                            r.status, r.finished = "failed", time.time()
                            r.error = r.error or "the training thread stopped unexpectedly"
                    statuses = [r.status for r in job.runs]
                    if job.cancel_requested:
                        job.status = "cancelled"
                    elif "failed" in statuses:
                        job.status = "failed"
                    else:
                        job.status = "completed"
                    job.finished = time.time()
                    self._running = None
                    self._lock.notify_all()

    def _run_job(self, job: Job) -> None:
        for i, cfg in enumerate(job.configs):
            with self._lock:
                run = job.runs[i]
                if job.cancel_requested:
                    run.status = "cancelled"
                    continue
                run.status, run.started = "running", time.time()
                # The folder may have appeared since submit (another process): never overwrite.
                if (Path(run.run_dir) / "run.json").exists():
                    run.status, run.finished = "failed", time.time()
                    run.error = (
                        f"'{run.run_dir}' was written by someone else meanwhile; not overwritten"
                    )
                    continue
            self._run_one(job, run, cfg)

    def _run_one(self, job: Job, run: RunProgress, cfg) -> None:
        """Train one configuration, then (unless cancelled) the post-training pipeline."""

        def should_stop() -> bool:
            with self._lock:
                return job.cancel_requested

        train_fn = self._train_fn
        if train_fn is None:
            from .train import train as train_fn
        try:
            meta = train_fn(cfg, callback=self._progress(job, run), should_stop=should_stop)
        except Exception as e:  # recorded, never lost: the page shows it
            self._record_failure(job, run, e, traceback.format_exc())
            return
        if self._record_trained(job, run, meta):
            run_diag = self._diagnose(run.run_dir)
            try:  # the evaluation step may have replaced the metrics (test-time views)
                test = read_run_json(run.run_dir)["metrics"]["test"]
            except (RunError, KeyError):
                test = {}
            with self._lock:
                run.diagnostics = run_diag
                if test:
                    run.result["test_macro_f1"] = test.get("macro_f1")
                    run.result["test_accuracy"] = test.get("accuracy")
                run.status = "completed"
                self._runs_version += 1
        with self._lock:
            run.finished = time.time()
            self._lock.notify_all()

    def _progress(self, job: Job, run: RunProgress) -> Callable[[dict], None]:
        """The training callback that records a run's progress events under the lock."""

        def callback(ev: dict) -> None:
            with self._lock:
                kind = ev.get("type")
                if kind == "start":
                    run.epochs = int(ev.get("epochs", run.epochs))
                    run.num_batches = int(ev.get("num_batches", 0))
                    run.device = str(ev.get("device", ""))
                    run.precision = str(ev.get("precision", ""))
                elif kind == "batch":
                    run.epoch, run.batch = int(ev["epoch"]), int(ev["batch"])
                    run.num_batches = int(ev.get("num_batches", run.num_batches))
                    if job.cancel_requested:
                        run.batches_after_cancel += 1
                    x = run.epoch - 1 + run.batch / max(run.num_batches, 1)
                    run.batch_losses.append((x, float(ev["loss"])))
                    if len(run.batch_losses) > MAX_BATCH_POINTS:
                        run.batch_losses = run.batch_losses[::2]
                elif kind == "epoch":
                    run.history.append({k: ev.get(k) for k in EPOCH_FIELDS})

        return callback

    def _record_failure(self, job: Job, run: RunProgress, e: Exception, tb: str) -> None:
        from .train import TrainingStopped

        with self._lock:
            run.finished = time.time()
            if isinstance(e, TrainingStopped) and job.cancel_requested:
                run.status = "cancelled"
                run.note = (run.note + "; " if run.note else "") + "cancelled before the "
                run.note += "first epoch ended, nothing stored"
            else:
                run.status = "failed"
                run.error = _one_line(e)
                run.traceback = tb
            self._lock.notify_all()

    def _record_trained(self, job: Job, run: RunProgress, meta: dict) -> bool:
        """Record a trained run's result; True when the post-training pipeline is to follow
        (not cancelled)."""
        test = meta.get("metrics", {}).get("test", {})
        with self._lock:
            run.result = {
                "run_dir": meta.get("run_dir", run.run_dir),
                "status": meta.get("status"),
                "stop_reason": meta.get("stop_reason"),
                "best_epoch": meta.get("best_epoch"),
                "epochs_run": meta.get("epochs_run"),
                "test_macro_f1": test.get("macro_f1"),
                "test_accuracy": test.get("accuracy"),
            }
            if meta.get("run_dir"):
                run.run_dir = str(meta["run_dir"])
            cancelled = meta.get("status") == "cancelled" or job.cancel_requested
            run.status = "diagnosing" if not cancelled else "cancelled"
            if cancelled:
                run.note = (run.note + "; " if run.note else "") + "cancelled: best weights so "
                run.note += "far stored"
            self._runs_version += 1
            self._lock.notify_all()
        return not cancelled

    def _diagnose(self, run_dir: str) -> str:
        fn = self._diagnose_fn
        if fn is False:
            return "skipped"
        if fn is None or fn is True:
            fn = find_run_diagnoser()
        if fn is None:
            return "not available (csba.diagnostics has no diagnose_run)"
        try:
            fn(run_dir)
        except Exception as e:  # the run itself is fine; say why it was not diagnosed
            return f"diagnosis failed: {_one_line(e)}"
        return "diagnosed"
