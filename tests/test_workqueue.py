"""csba.workqueue: the dashboard's background worker (order, once per key, errors, eviction)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from csba.workqueue import WorkQueue, redraw_due, release_memory


def _blocked(q: WorkQueue) -> threading.Event:
    """Occupy the worker until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def block():
        started.set()
        gate.wait(30)

    q.submit("blocker", block)
    assert started.wait(10)
    return gate


def test_priority_then_arrival_order():
    q = WorkQueue(after_task=lambda: None)
    gate = _blocked(q)
    order: list[str] = []
    futs = [
        q.submit(name, lambda n=name: order.append(n) or n, prio)
        for name, prio in [("ig1", 1), ("quick1", 0), ("ig2", 1), ("quick2", 0)]
    ]
    assert q.position("blocker") == 0
    assert [q.position(n) for n in ("quick1", "quick2", "ig1", "ig2")] == [1, 2, 3, 4]
    assert q.pending() == 5
    gate.set()
    assert [f.result(10) for f in futs] == ["ig1", "quick1", "ig2", "quick2"]
    assert order == ["quick1", "quick2", "ig1", "ig2"]  # all quick ones before any slow one
    assert q.position("ig2") is None and q.pending() == 0


def test_a_key_is_computed_once_and_can_move_up():
    q = WorkQueue(after_task=lambda: None)
    gate = _blocked(q)
    calls: list[str] = []
    a = q.submit("a", lambda: calls.append("a"), 1)
    b = q.submit("b", lambda: calls.append("b"), 1)
    assert q.submit("b", lambda: calls.append("b again"), 0) is b  # same future, moved up
    assert q.position("b") == 1 and q.position("a") == 2
    gate.set()
    a.result(10), b.result(10)
    assert calls == ["b", "a"]
    assert q.submit("a", lambda: calls.append("a again")) is a  # finished: kept, not rerun
    assert calls == ["b", "a"] and q.get("a") is a and q.get("nope") is None


def test_a_failure_is_kept_and_the_worker_goes_on():
    q = WorkQueue(after_task=lambda: None)
    bad = q.submit("bad", lambda: 1 / 0)
    good = q.submit("good", lambda: 42)
    assert good.result(10) == 42
    assert isinstance(bad.exception(10), ZeroDivisionError)
    assert q.submit("bad", lambda: 0) is bad  # the same input fails the same way


def test_capacity_drops_the_least_recent_finished_results_only():
    q = WorkQueue(capacity=2, after_task=lambda: None)
    for k in ("a", "b"):
        q.submit(k, lambda k=k: k).result(10)
    q.submit("a", lambda: "a")  # asked again: most recent
    gate = _blocked(q)  # "blocker" is the third key: "b", the least recent finished, goes
    assert q.get("b") is None and q.get("a") is not None
    pend = [q.submit(k, lambda k=k: k) for k in ("c", "d", "e")]
    assert all(q.get(k) is not None for k in ("c", "d", "e"))  # pending work is never dropped
    gate.set()
    assert [f.result(10) for f in pend] == ["c", "d", "e"]


def test_after_task_runs_after_every_task_and_its_failure_is_harmless():
    seen: list[int] = []

    def after():
        seen.append(1)
        raise RuntimeError("housekeeping failed")

    q = WorkQueue(after_task=after)
    assert q.submit(1, lambda: "x").result(10) == "x"
    assert q.submit(2, lambda: "y").result(10) == "y"
    assert len(seen) >= 1
    assert q.submit(3, lambda: "z").result(10) == "z"


def test_threads_sets_torch_threads_in_the_worker_only():
    import torch

    before = torch.get_num_threads()
    q = WorkQueue(threads=1)
    assert q.submit("n", torch.get_num_threads).result(timeout=30) == 1
    assert torch.get_num_threads() == before  # the caller's threads are untouched
    # restored after the task: a thread started later (a training job's) gets torch's setting
    default = WorkQueue()
    assert default.submit("n", torch.get_num_threads).result(timeout=30) == before


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        WorkQueue(capacity=0)


def test_memory_housekeeping_on_glibc():
    import platform

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert release_memory() is expected


def test_shutdown_cancels_waiting_work_and_waits_for_the_running_one():
    q = WorkQueue(after_task=lambda: None)
    gate = _blocked(q)
    later = q.submit("later", lambda: "never")
    threading.Timer(0.2, gate.set).start()
    q.shutdown(timeout=10)
    assert later.cancelled() and q.get("blocker").done() and q.pending() == 0
    assert q.submit("later", lambda: "now").result(10) == "now"  # computed anew afterwards


def test_exit_with_torch_work_in_flight_is_clean(tmp_path):
    """The worker is a daemon thread; were it still inside torch while the interpreter tears
    down, the process would abort ("terminate called without an active exception", rc 134)."""
    import subprocess
    import sys

    script = tmp_path / "exit.py"
    script.write_text(
        "import sys; sys.path.insert(0, '.')\nimport torch\n"
        "from csba.workqueue import WorkQueue\n"
        "def work():\n"
        "    x = torch.randn(256, 256, requires_grad=True)\n"
        "    for _ in range(200):\n"
        "        (x @ x).tanh().sum().backward()\n"
        "q = WorkQueue()\n"
        "futs = [q.submit(i, work) for i in range(20)]\n"
        "import time; time.sleep(0.3)\n"
        "assert q.pending() > 0\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=repo
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_redraw_due_batches_all_but_the_first_runs_and_the_last_computation():
    """Nothing new: never. New for the first run, or the last one: at once. Other news: only
    once the page was drawn gap_s ago."""
    assert not redraw_due(3, 3, 15, first_news=False, since_s=99.0, gap_s=2.0)
    assert redraw_due(4, 3, 15, first_news=True, since_s=0.1, gap_s=2.0)
    assert redraw_due(15, 14, 15, first_news=False, since_s=0.1, gap_s=2.0)
    assert not redraw_due(5, 3, 15, first_news=False, since_s=1.9, gap_s=2.0)
    assert redraw_due(5, 3, 15, first_news=False, since_s=2.0, gap_s=2.0)
