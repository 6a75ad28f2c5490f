"""Protocol sweeps on a Ray cluster (docs/scale.md): ``python -m csba protocol ... --backend ray``.

Ray is an optional dependency (``pip install -r requirements-scale.txt``); nothing imports it
until a Ray backend is asked for. This module only talks to Ray: it connects (or starts a local
instance), submits one task per run with its declared resources and retry policy, and yields
the results as they finish. What a task does is :mod:`csba.protocol`'s per-run function, the
same one the ``--jobs`` process pool calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["STORAGES", "ClusterError", "RayConfig", "import_ray", "ray_map", "ray_session"]

STORAGES = ("shared", "return")  # RayConfig.storage


class ClusterError(ValueError):
    """Ray is missing or cannot be reached; the message says what to do (one line)."""


@dataclass
class RayConfig:
    """How a protocol runs on Ray (``protocol --backend ray`` flags)."""

    # None: start a local Ray instance (one machine); "auto": join the cluster this node is
    # part of (started with `ray start`); "ray://HOST:PORT": Ray Client to a remote head
    address: str | None = None
    # shared: workers write run folders under the runs root (a shared file system, the same
    # path on every node); return: workers train in a local folder and send the run folder's
    # files back, and the driver writes them atomically into its runs root
    storage: str = "shared"
    threads: int = 1  # CPU threads per run: the task's num_cpus and its OMP/MKL thread count
    gpus: float = 0.0  # GPUs per run, a fraction to share one (0.25: four runs per GPU)
    retries: int = 3  # retries of a run whose worker process or node dies (then it resumes)

    def check(self) -> None:
        """Raise :class:`ClusterError` for a value out of range."""
        if self.storage not in STORAGES:
            raise ClusterError(f"--ray-storage must be one of {', '.join(STORAGES)}")
        if self.threads < 1:
            raise ClusterError(f"--threads must be 1 or more, got {self.threads}")
        if self.gpus < 0:
            raise ClusterError(f"--ray-gpus must be 0 or more, got {self.gpus}")
        if self.retries < 0:
            raise ClusterError(f"--ray-retries must be 0 or more, got {self.retries}")


def import_ray():
    """The ``ray`` module, or a one-line :class:`ClusterError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "--backend ray needs Ray: pip install -r requirements-scale.txt"
        ) from None
    return ray


@contextmanager
def ray_session(config: RayConfig) -> Iterator[Any]:
    """Ray, connected: an instance already initialised in this process is used as it is;
    otherwise ``config.address`` is joined, or a local instance started (no dashboard), and
    shut down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if config.address:
            ray.init(address=config.address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = config.address or "a local instance"
        raise ClusterError(f"cannot start Ray on {where}: {' '.join(str(e).split())}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_map(
    fn: Callable,
    calls: Sequence[tuple],
    config: RayConfig,
    retry_exceptions: Sequence[type[BaseException]] = (),
) -> Iterator[tuple[int, Any, BaseException | None]]:
    """Run ``fn(*args)`` for each ``args`` in ``calls`` as Ray tasks, each declaring
    ``config.threads`` CPUs and ``config.gpus`` GPUs and retried up to ``config.retries`` times
    when its worker dies (or raises one of ``retry_exceptions``). Yields ``(index, result,
    None)`` or ``(index, None, error)`` as each finishes, in finishing order. Needs a
    :func:`ray_session`.
    """
    ray = import_ray()
    remote = ray.remote(fn).options(
        num_cpus=config.threads,
        num_gpus=config.gpus,
        max_retries=config.retries,
        retry_exceptions=list(retry_exceptions) or False,
    )
    pending = {remote.remote(*args): i for i, args in enumerate(calls)}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i = pending.pop(ref)
            try:
                yield i, ray.get(ref), None
            except ray.exceptions.RayError as e:
                yield i, None, getattr(e, "cause", None) or e
