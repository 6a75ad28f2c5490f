"""csba.jobs: the background training queue behind the Training page."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import csba.loop
from csba.jobs import JobManager, check_data_root, default_device
from csba.train import TrainConfig


def _cfg(tiny_folder: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        dataset="imagefolder",
        data_root=str(tiny_folder),
        variant="baseline",
        image_size=32,
        epochs=1,
        batch_size=16,
        out=str(out),
        precision="fp32",
    )
    base.update(kw)
    return TrainConfig(**base)


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the job manager")
        time.sleep(0.02)


@pytest.fixture
def manager():
    m = JobManager(diagnose_fn=False)
    yield m
    m.shutdown()


def test_tiny_run_completes_and_is_stored(tiny_folder, tmp_path):
    calls = []
    m = JobManager(diagnose_fn=lambda run_dir: calls.append(run_dir))
    try:
        job_id = m.submit(
            [_cfg(tiny_folder, tmp_path), _cfg(tiny_folder, tmp_path, variant="csba")]
        )
        job = m.wait(job_id, timeout=120)
    finally:
        m.shutdown()
    assert job.status == "completed", job.error
    assert [r.status for r in job.runs] == ["completed", "completed"]
    for r in job.runs:
        assert (Path(r.run_dir) / "run.json").is_file()
        assert r.history and r.history[0]["epoch"] == 1
        assert r.batch_losses and r.fraction == 1.0
        assert r.result["test_macro_f1"] is not None
        assert r.diagnostics == "diagnosed"
    assert calls == [r.run_dir for r in job.runs]
    assert Path(job.runs[0].run_dir) == tmp_path / "imagefolder-32px" / "baseline-s0"
    assert m.runs_version >= 2


def test_finished_run_is_diagnosed_by_csba_diagnostics(tiny_folder, tmp_path):
    from csba.jobs import find_run_diagnoser
    from csba.store import read_run_json

    assert find_run_diagnoser() is not None  # csba.diagnostics.run.diagnose_run
    m = JobManager()  # the default: csba.diagnostics' run diagnosis
    try:
        job = m.wait(m.submit([_cfg(tiny_folder, tmp_path, variant="csba")]), timeout=180)
    finally:
        m.shutdown()
    run = job.runs[0]
    assert job.status == "completed" and run.diagnostics == "diagnosed"
    meta = read_run_json(run.run_dir)
    assert "gcm" in meta["diagnostics"] and meta["metrics"]["test"]["macro_f1"] is not None
    # like the protocol: metrics with the dataset's test-time views (image folder: 4 flips),
    # the single-view ones kept, and the job's result showing the stored ones
    assert meta["evaluation"] == {"views": 4}
    assert set(meta["metrics_single_view"]) == {"test", "val"}
    assert run.result["test_macro_f1"] == meta["metrics"]["test"]["macro_f1"]


def test_existing_run_folder_is_never_overwritten(tiny_folder, tmp_path, manager):
    first = manager.wait(manager.submit([_cfg(tiny_folder, tmp_path)]), timeout=120)
    assert first.status == "completed"
    stamp = (Path(first.runs[0].run_dir) / "run.json").stat().st_mtime_ns
    second_id = manager.submit([_cfg(tiny_folder, tmp_path)])
    queued = manager.job(second_id).runs[0]
    assert queued.seed == 1 and queued.run_dir.endswith("baseline-s1")
    assert "seed 0 already has a run" in queued.note
    manager.cancel(second_id)
    manager.wait(second_id, timeout=60)
    assert (Path(first.runs[0].run_dir) / "run.json").stat().st_mtime_ns == stamp


def test_second_submit_is_queued_not_concurrent(tiny_folder, tmp_path, manager):
    long = _cfg(tiny_folder, tmp_path, epochs=200, batch_size=4)
    a = manager.submit([long])
    b = manager.submit([_cfg(tiny_folder, tmp_path, variant="csba")])
    _wait_for(lambda: manager.job(a).status == "running")
    jobs = {j.id: j for j in manager.snapshot()}
    assert jobs[a].status == "running" and jobs[b].status == "queued"
    assert manager.running == a and manager.queued == [b]
    # the queued job reserved its own folder; a third identical submit moves to the next seed
    c = manager.submit([long])
    assert manager.job(c).runs[0].seed == 1
    for job_id in (c, b, a):
        manager.cancel(job_id)
    assert manager.wait(a, timeout=60).status == "cancelled"
    assert manager.job(b).status == "cancelled"


def test_cancel_stops_within_one_batch(tiny_folder, tmp_path, manager):
    job_id = manager.submit([_cfg(tiny_folder, tmp_path, epochs=200, batch_size=4)])
    _wait_for(lambda: manager.job(job_id).runs[0].batch >= 2)
    assert manager.cancel(job_id)
    job = manager.wait(job_id, timeout=60)
    run = job.runs[0]
    assert job.status == "cancelled" and run.status == "cancelled"
    # the batch in flight when cancel arrived may finish; no further batch may start
    assert run.batches_after_cancel <= 1
    assert not manager.cancel(job_id)  # already finished


def test_exception_in_worker_is_recorded(tiny_folder, tmp_path, manager):
    bad = _cfg(tiny_folder, tmp_path, data_root=str(tmp_path / "no-such-folder"))
    job = manager.wait(manager.submit([bad, _cfg(tiny_folder, tmp_path)]), timeout=120)
    assert job.status == "failed"
    failed, ok = job.runs
    assert failed.status == "failed"
    assert "does not exist" in failed.error and "\n" not in failed.error
    assert "Traceback" in failed.traceback and "DataError" in failed.traceback
    assert ok.status == "completed"  # one bad configuration does not sink the rest
    assert "does not exist" in job.error


def test_nan_loss_fails_with_a_message(tiny_folder, tmp_path, manager, monkeypatch):
    def nan_loss(*args, **kwargs):
        return lambda logits, y: logits.sum() * float("nan")

    monkeypatch.setattr(csba.loop, "method_loss", nan_loss)  # every method's loss
    job = manager.wait(manager.submit([_cfg(tiny_folder, tmp_path)]), timeout=120)
    run = job.runs[0]
    assert job.status == "failed" and run.status == "failed"
    assert "training loss became nan" in run.error
    assert not (Path(run.run_dir) / "run.json").exists()


def test_snapshot_is_a_copy(tiny_folder, tmp_path, manager):
    job_id = manager.submit([_cfg(tiny_folder, tmp_path)])
    snap = manager.snapshot()
    snap[0].runs[0].status = "tampered"
    snap[0].configs[0].epochs = 99
    job = manager.wait(job_id, timeout=120)
    assert job.runs[0].status == "completed" and job.configs[0].epochs == 1


def test_submit_rejects_empty(manager):
    with pytest.raises(ValueError, match="at least one variant"):
        manager.submit([])


def test_check_data_root(tmp_path):
    allowed = tmp_path / "data"
    (allowed / "set").mkdir(parents=True)
    assert check_data_root(str(allowed / "set"), allowed) == (allowed / "set").resolve()
    assert check_data_root("set", allowed) == (allowed / "set").resolve()  # relative to the root
    with pytest.raises(ValueError, match="outside the allowed folder"):
        check_data_root(str(tmp_path), allowed)
    with pytest.raises(ValueError, match="outside the allowed folder"):
        check_data_root(str(allowed / "set" / ".." / ".."), allowed)
    with pytest.raises(ValueError, match="does not exist"):
        check_data_root(str(allowed / "nope"), allowed)
    with pytest.raises(ValueError, match="needs a data root"):
        check_data_root("  ", allowed)
    assert check_data_root(str(tmp_path)) == tmp_path.resolve()  # no restriction without a root


def test_default_device_says_where(monkeypatch):
    d = default_device()
    assert d.startswith("cuda (") or d == "cpu (no GPU found)"
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA Test GPU")
    assert default_device() == "cuda (NVIDIA Test GPU)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu (no GPU found)"
