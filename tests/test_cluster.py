"""protocol --backend ray (csba.cluster): the same runs as --jobs at the same threads per run, a
killed worker retried and resumed, run folders returned to the driver, Ray missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from csba.protocol import run_protocol

pytestmark = pytest.mark.slow  # a local Ray cluster: over 10 s each (pytest -m "not slow" skips)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs, no dashboard, in a short temporary folder (Ray's
    socket paths must stay under 108 characters); shut down after the module. Importing ray
    replaces builtins.print (its tqdm-safe print); the original comes back afterwards, so later
    test modules see the interpreter as it was."""
    import builtins

    original_print = builtins.print
    ray = pytest.importorskip(
        "ray", reason="ray is not installed (pip install -r requirements-scale.txt)"
    )
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()
    builtins.print = original_print
    shutil.rmtree(temp, ignore_errors=True)


def _options(tiny_folder: Path, out: Path, **kw) -> dict:
    return {
        "dataset": "imagefolder",
        "data_root": str(tiny_folder),
        "image_size": 32,
        "epochs": 1,
        "batch_size": 16,
        "out": str(out),
        "device": "cpu",
        **kw,
    }


def _same_runs(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    ma, mb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert ma["metrics"] == mb["metrics"] and ma["runtime"]["threads"] == 1
    assert ma["runtime"]["threads"] == mb["runtime"]["threads"]
    assert ma["diagnostics"]["gcm"]["matrix"] == mb["diagnostics"]["gcm"]["matrix"]
    wa, wb = (load_file(str(d / "model.safetensors")) for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ray_protocol_equals_jobs_at_the_same_threads(ray_local, tiny_folder, tmp_path):
    kw = dict(diagnose_per_class=4, progress=False, threads=1)
    lines = []
    jobs = run_protocol(
        _options(tiny_folder, tmp_path / "jobs"), ["baseline", "csba"], [0], jobs=2, **kw
    )
    ray = run_protocol(
        _options(tiny_folder, tmp_path / "ray"),
        ["baseline", "csba"],
        [0],
        backend="ray",
        log=lines.append,
        **kw,
    )
    assert [p.name for p in ray] == [p.name for p in jobs] == ["baseline-s0", "csba-s0"]
    for a, b in zip(jobs, ray, strict=True):
        _same_runs(a, b)
    finished = [ln for ln in lines if "accuracy" in ln and "so far" in ln]
    assert len(finished) == 2  # a progress line per finished run
    assert any(ln.startswith("ray: 2 run(s) on 2 CPU(s), 1 thread(s)") for ln in lines)
    log = (tmp_path / "ray" / "logs" / "imagefolder-32px-csba-s0.log").read_text()
    assert log.startswith("# ray worker pid ") and "accuracy" in log
    again = []
    assert (
        run_protocol(
            _options(tiny_folder, tmp_path / "ray"),
            ["baseline", "csba"],
            [0],
            backend="ray",
            log=again.append,
            **kw,
        )
        == ray
    )
    assert sum("(complete, skipped)" in ln for ln in again) == 2  # no task for complete runs


def test_ray_return_storage_writes_the_run_on_the_driver(ray_local, tiny_folder, tmp_path):
    from csba.cluster import RayConfig

    kw = dict(diagnose_per_class=4, progress=False, threads=1)
    jobs = run_protocol(_options(tiny_folder, tmp_path / "jobs"), ["baseline"], [0], **kw)
    root = tmp_path / "ret"
    (ret,) = run_protocol(
        _options(tiny_folder, root),
        ["baseline"],
        [0],
        backend="ray",
        ray=RayConfig(storage="return"),
        **kw,
    )
    _same_runs(jobs[0], ret)
    meta = json.loads((ret / "run.json").read_text())
    assert meta["config"]["run_dir"] == str(ret) and meta["config"]["out"] == str(root.resolve())
    assert not list(root.rglob(".*.tmp")) and not (ret / "resume").exists()
    assert (root / "logs" / "imagefolder-32px-baseline-s0.log").is_file()


def test_a_killed_ray_worker_is_retried_and_resumes(ray_local, tiny_folder, tmp_path):
    out = tmp_path / "kill"
    options = _options(tiny_folder, out, epochs=40, batch_size=4, keep="last")
    run_dir = out / "imagefolder-32px" / "baseline-s0"
    log = out / "logs" / "imagefolder-32px-baseline-s0.log"
    killed = []

    def killer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            state = run_dir / "resume" / "state.json"
            if state.is_file() and log.is_file() and log.read_text().startswith("# ray worker"):
                pid = int(log.read_text().split()[4])
                os.kill(pid, signal.SIGKILL)  # the Ray worker; its training process follows
                killed.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    lines = []
    (done,) = run_protocol(
        options,
        ["baseline"],
        [0],
        backend="ray",
        threads=1,
        diagnose_per_class=4,
        progress=False,
        log=lines.append,
    )
    t.join(timeout=10)
    assert killed, "the run finished before its worker could be killed"
    meta = json.loads((done / "run.json").read_text())
    assert meta["status"] == "completed" and meta["epochs_run"] == 40
    assert meta["runtime"].get("resumed_at_epochs")  # the retry went on from its last epoch
    headers = [ln for ln in log.read_text().splitlines() if ln.startswith("# ray worker pid")]
    assert len(headers) == 2 and str(killed[0]) in headers[0]
    assert "gcm" in meta["diagnostics"]


def test_backend_ray_without_ray_says_how_to_install(monkeypatch, capsys):
    from csba.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["protocol", "--backend", "ray", "--variants", "baseline", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "csba protocol: error: --backend ray needs Ray: pip install -r requirements-scale.txt"
    )


def test_bad_ray_options_are_one_line_errors(capsys):
    from csba.cli import main

    assert main(["protocol", "--backend", "ray", "--ray-gpus", "-1"]) == 2
    assert "--ray-gpus must be 0 or more" in capsys.readouterr().err
    assert main(["protocol", "--threads", "0"]) == 2
    assert "--threads must be 1 or more" in capsys.readouterr().err
    assert main(["protocol", "--backend", "ray", "--jobs", "2"]) == 2
    assert "--jobs is the embedded pool's" in capsys.readouterr().err


def test_write_run_files_writes_run_json_last_and_stays_inside(tmp_path, monkeypatch):
    import csba.store
    from csba.store import RunError, write_run_files

    order = []
    real = csba.store.atomic_write_bytes

    def spy(path, data):
        order.append(Path(path).name)
        real(path, data)

    monkeypatch.setattr(csba.store, "atomic_write_bytes", spy)
    files = {"run.json": b"{}", "model.safetensors": b"w", "t.json": b""}
    write_run_files(tmp_path / "r", files)
    assert order[-1] == "run.json" and sorted(order) == ["model.safetensors", "run.json", "t.json"]
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == b"w"
    with pytest.raises(RunError, match="not a path inside"):
        write_run_files(tmp_path / "r", {"../evil": b"x"})
