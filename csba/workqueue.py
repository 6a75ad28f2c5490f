"""One background worker for a server's heavy computations, most urgent first, results kept.

Why (docs/performance.md, eight users): a Streamlit script waiting inside a long computation
cannot be stopped until it returns, so eight users uploading images at once held every other
page of theirs behind the attribution queue. With this queue the page submits work, returns at
once and polls (a fragment); the computations run one at a time in one thread (on a 2-core
machine concurrent ones only share the same cores, and each would hold its own activations).

* :meth:`WorkQueue.submit` (key, zero-argument function, priority) -> a
  :class:`concurrent.futures.Future`; a key already submitted returns its existing future (the
  result is computed once per key, whoever asks).
* Lower priority numbers run first, first come first served within one priority (the
  Attributions page: quick maps of every run before any Integrated Gradients).
* Finished results are kept, least recently asked for dropped beyond ``capacity``; pending work
  is never dropped. A failed computation keeps its exception (the same input fails the same
  way; resubmitting does not recompute it).
* :func:`release_memory` hands freed heap pages back to the OS (glibc ``malloc_trim``) after
  each task, so one large attribution does not leave the server's resident memory raised.

Pure Python: no Streamlit here; the dashboard keeps one queue per server in ``st.cache_resource``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import heapq
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future

__all__ = ["WorkQueue", "release_memory"]


class WorkQueue:
    """A priority queue of keyed computations served by one daemon thread.

    Args:
        capacity: finished results kept (least recently submitted/asked dropped first).
        name: the worker thread's name (shows in profiles and ``py-spy dump``).
        after_task: called in the worker after every task (default :func:`release_memory`).
        threads: torch's intra-op threads for each task (``torch.set_num_threads``, restored
            after the task); None leaves torch's setting. The dashboard uses 1: on two cores
            loaded by other work (browsers, scripts) a second thread made an attribution no
            faster and cost 14% more CPU; on an idle machine it is 18% faster
            (benchmarks/bench_worker_threads.py, docs/performance.md).
    """

    def __init__(
        self,
        capacity: int = 256,
        name: str = "csba-work",
        after_task: Callable[[], object] | None = None,
        threads: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self.name = name
        self._after = release_memory if after_task is None else after_task
        self.threads = threads
        self._cv = threading.Condition()
        self._heap: list[tuple[int, int, Hashable]] = []  # (priority, arrival, key)
        self._pending: dict[Hashable, tuple[Callable[[], object], int]] = {}  # key -> (fn, prio)
        self._futures: OrderedDict[Hashable, Future] = OrderedDict()  # every known key, LRU
        self._arrival = itertools.count()
        self._running: Hashable | None = None
        self._thread: threading.Thread | None = None
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # ---- the page side ---------------------------------------------------------------------

    def submit(self, key: Hashable, fn: Callable[[], object], priority: int = 0) -> Future:
        """Future of ``fn()`` under ``key``: computed once; an earlier submission's future if
        the key is known. Submitting a queued key with a more urgent priority moves it up."""
        with self._cv:
            fut = self._futures.get(key)
            if fut is not None and fut.cancelled():  # dropped by shutdown: compute anew
                del self._futures[key]
                fut = None
            if fut is not None:
                self._futures.move_to_end(key)
                queued = self._pending.get(key)
                if queued is not None and priority < queued[1]:
                    self._pending[key] = (queued[0], priority)
                    heapq.heappush(self._heap, (priority, next(self._arrival), key))
                return fut
            fut = Future()
            self._futures[key] = fut
            self._pending[key] = (fn, int(priority))
            heapq.heappush(self._heap, (int(priority), next(self._arrival), key))
            self._evict()
            self._ensure_worker()
            self._cv.notify()
            return fut

    def get(self, key: Hashable) -> Future | None:
        """The future of a submitted key, or None if it was never submitted (or dropped)."""
        with self._cv:
            return self._futures.get(key)

    def position(self, key: Hashable) -> int | None:
        """How many computations run before this key's (the running one included): 0 when it is
        running; None when it is not waiting (finished, or unknown)."""
        with self._cv:
            if key == self._running:
                return 0
            if key not in self._pending:
                return None
            valid = [
                (p, a, k)
                for p, a, k in self._heap
                if k in self._pending and self._pending[k][1] == p
            ]
            mine = min((p, a) for p, a, k in valid if k == key)
            ahead = sum((p, a) < mine for p, a, k in valid)
            return ahead + (self._running is not None)

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Cancel waiting work and wait for the running computation (run at interpreter exit:
        a daemon thread still inside torch when the process tears down aborts it with
        "terminate called without an active exception")."""
        with self._cv:
            for key in list(self._pending):
                self._futures[key].cancel()
            self._pending.clear()
            self._heap.clear()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def pending(self) -> int:
        """Computations waiting or running."""
        with self._cv:
            return len(self._pending) + (self._running is not None)

    # ---- the worker side -------------------------------------------------------------------

    def _evict(self) -> None:
        extra = len(self._futures) - self.capacity
        if extra <= 0:
            return
        for k in [k for k, f in self._futures.items() if f.done()][:extra]:
            del self._futures[k]

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()

    def _next(self) -> tuple[Callable[[], object], Future] | None:
        with self._cv:
            while True:
                if not self._heap:  # idle: the thread ends; the next submit starts a new one
                    self._thread = None  # (a daemon thread that ran torch and is still alive
                    return None  # at interpreter exit aborts it: "terminate called ...")
                prio, _, key = heapq.heappop(self._heap)
                queued = self._pending.get(key)
                if queued is None or queued[1] != prio:
                    continue  # a stale heap entry: the key moved up or already ran
                del self._pending[key]
                self._running = key
                return queued[0], self._futures[key]  # pending keys are never evicted

    def _work(self) -> None:
        while True:
            nxt = self._next()
            if nxt is None:
                return
            fn, fut = nxt
            try:
                if fut.set_running_or_notify_cancel():
                    try:
                        with _torch_threads(self.threads):
                            fut.set_result(fn())
                    except BaseException as e:  # handed to whoever waits on the future
                        fut.set_exception(e)
            finally:
                with self._cv:
                    self._running = None
                    self._evict()
                with contextlib.suppress(Exception):  # housekeeping must not stop the worker
                    self._after()


def redraw_due(
    done: int, shown: int, total: int, first_news: bool, since_s: float, gap_s: float
) -> bool:
    """Whether a page polling its computations should redraw: more are done than it shows
    (`done` != `shown`) and they include the ones its user waits for first (`first_news`),
    or the last of `total`, or the page was last drawn `since_s` >= `gap_s` seconds ago. Each
    redraw costs the CPU the worker computes with, so the others are batched."""
    return done != shown and (first_news or done == total or since_s >= gap_s)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch's intra-op threads set to n for one task, then restored: torch copies the last
    value set into threads it starts later (a training job's), so it must not stay set."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shutdown_at_exit(ref: weakref.ref) -> None:
    queue = ref()
    if queue is not None:
        queue.shutdown()


# ---- memory housekeeping ---------------------------------------------------------------------

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC or None


def release_memory() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``); False where unavailable.

    A large computation's temporaries are freed to malloc but stay in the process's resident
    memory until trimmed; the next one would reuse them, but other threads' arenas cannot."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim(0)
    return True
