"""benchmarks/: what a device call sends back (pack_runs.py) and the device benchmark on a CPU."""

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pack_runs.py"


def _edit(run_dir: Path, **changes) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    meta.update(changes)
    (run_dir / "run.json").write_text(json.dumps(meta))


def _pack(root: Path, out: Path, call: str, budget_mib: float) -> str:
    cmd = [sys.executable, str(SCRIPT), str(root), "k", str(out), "--call", call]
    cmd += ["--budget-mib", str(budget_mib)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_pack_runs_returns_complete_runs_once_within_the_budget(tiny_runs, tmp_path):
    root = tmp_path / "ck"
    for variant, src in tiny_runs.items():
        shutil.copytree(src, root / "k" / f"{variant}-s0")
    done = {"evaluation": {"views": 4}, "predictions_single_view": {}, "diagnostics": {}}
    for v in ("baseline", "csba", "focal"):
        _edit(root / "k" / f"{v}-s0", **done)
    _edit(root / "k" / "gradnorm-s0", **{**done, "status": "interrupted"})  # not finished
    _edit(root / "k" / "class_heads-s0", evaluation={"views": 4}, predictions_single_view={})
    (root / "k" / "focal-s0" / "model.safetensors").unlink()  # weights missing
    size = sum(f.stat().st_size for f in (root / "k" / "baseline-s0").iterdir())
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    out1.mkdir()
    out2.mkdir()

    # room for one run: baseline goes now, csba waits for the next call
    said = _pack(root, out1, "1", budget_mib=1.5 * size / 2**20)
    assert "packed 1 run(s)" in said and "k/baseline-s0" in said
    assert "left for the next call (over the budget): k/csba-s0" in said
    parts = sorted(out1.iterdir())
    assert [p.name for p in parts] == ["runs-1.tar.aa"]
    with tarfile.open(parts[0]) as tar:
        assert sorted(tar.getnames()) == [
            "k/baseline-s0/model.safetensors",
            "k/baseline-s0/run.json",
        ]

    said = _pack(root, out2, "2", budget_mib=56)
    assert "packed 1 run(s)" in said and "k/csba-s0" in said and "baseline" not in said
    assert (root / ".returned").read_text().split() == ["k/baseline-s0", "k/csba-s0"]
    said = _pack(root, tmp_path, "3", budget_mib=56)  # nothing new: nothing written
    assert said.startswith("packed 0 run(s)") and not list(tmp_path.glob("runs-3.*"))


@pytest.mark.slow
def test_bench_device_times_the_training_step_on_the_cpu():
    """The device benchmark drives csba.train.TrainStep; on the CPU its CUDA-only modes are
    skipped and every row reports a finite loss."""
    bench = SCRIPT.parent / "bench_device.py"
    cmd = [sys.executable, str(bench), "--image-size", "32", "--batch", "8", "--steps", "2"]
    cmd += ["--variants", "baseline", "class_heads", "--modes", "eager", "cudagraph"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("baseline", "eager"), ("class_heads", "eager")]
    assert all(0 < float(r[-1]) < 10 and float(r[3]) > 0 for r in rows)  # loss, img/s


def test_pack_runs_with_no_runs_yet_packs_nothing(tmp_path):
    """A device call whose cap ends before the first run finishes must not crash the packing."""
    said = _pack(tmp_path / "never-made", tmp_path, "1", budget_mib=56)
    assert said.startswith("packed 0 run(s)") and not list(tmp_path.glob("runs-1.*"))


def test_bench_pcgrad_times_the_three_step_modes(capsys):
    """The PCGrad benchmark runs csba.step.TrainStep in its three modes on one batch."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_pcgrad
    finally:
        sys.path.remove(str(SCRIPT.parent))
    out = bench_pcgrad.main(
        ["--classes", "3", "--image-size", "16", "--batch-size", "6", "--rounds", "1"]
    )
    assert set(out) == {3} and set(out[3]) == {"plain", "pcgrad_control", "pcgrad"}
    assert all(t > 0 for t in out[3].values())
    printed = capsys.readouterr().out
    assert "pcgrad/plain" in printed and printed.strip().splitlines()[-1].split()[0] == "3"


@pytest.mark.slow
def test_ship_records_copies_run_json_and_log_of_finished_diagnosed_runs(tiny_runs, tmp_path):
    src, dest = tmp_path / "runs", tmp_path / "checkpoints"
    for v in ("baseline", "csba", "focal"):
        shutil.copytree(tiny_runs[v], src / "k" / f"{v}-s0")
    _edit(src / "k" / "baseline-s0", diagnostics={"gcm": {"mean": -0.30}})
    _edit(src / "k" / "csba-s0", diagnostics={"gcm": {"mean": -0.10}}, status="interrupted")
    (src / "logs").mkdir()
    (src / "logs" / "k-baseline-s0.log").write_text("epoch 1\n")
    script = SCRIPT.parent / "ship_records.py"
    out = subprocess.run(
        [sys.executable, str(script), str(src), str(dest)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "shipped 1 record(s): k/baseline-s0" in out.stdout
    assert "k/csba-s0: not completed and diagnosed yet" in out.stdout
    assert "k/focal-s0: not completed and diagnosed yet" in out.stdout  # never diagnosed
    assert sorted(p.name for p in (dest / "k" / "baseline-s0").iterdir()) == ["run.json"]
    assert (dest / "logs" / "k-baseline-s0.log").read_text() == "epoch 1\n"
    assert json.loads((dest / "k" / "baseline-s0" / "run.json").read_text())["diagnostics"]
    again = subprocess.run(
        [sys.executable, str(script), str(src), str(dest)], capture_output=True, text=True
    )
    assert "shipped 0 record(s)" in again.stdout  # a rerun ships nothing it shipped already
    assert "k/baseline-s0: shipped already, unchanged" in again.stdout
    # csba-s0 finishes; its baseline was shipped before: its conflict change is filled in dest,
    # and that stored change alone does not make the record differ from its source
    _edit(src / "k" / "csba-s0", status="completed")
    third = subprocess.run(
        [sys.executable, str(script), str(src), str(dest)], capture_output=True, text=True
    )
    assert "shipped 1 record(s): k/csba-s0" in third.stdout, third.stderr
    diag = json.loads((dest / "k" / "csba-s0" / "run.json").read_text())["diagnostics"]
    assert diag["conflict_change"] == pytest.approx(0.20)
    fourth = subprocess.run(
        [sys.executable, str(script), str(src), str(dest)], capture_output=True, text=True
    )
    assert "shipped 0 record(s)" in fourth.stdout


def test_bench_dashboard_summary_counts_timeouts_and_upload_stages():
    """The dashboard benchmark's summary: medians over answered views, a None is a timeout,
    the upload's three stages (answer, first maps, all maps) reported apart."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_dashboard
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rec = [
        {"page": "attributions", "kind": "view", "seconds": 1.0, "errors": 0},
        {"page": "attributions", "kind": "view", "seconds": 3.0, "errors": 1},
        {"page": "attributions", "kind": "view", "seconds": None, "errors": 0},
        {"page": "attributions", "kind": "interaction", "seconds": 2.0, "errors": 0},
        {"page": "attributions", "kind": "answered", "seconds": 0.5, "errors": 0},
        {"page": "attributions", "kind": "first maps", "seconds": 4.0, "errors": 0},
        {"page": "attributions", "kind": "all maps", "seconds": None, "errors": 0},
    ]
    out = bench_dashboard.summarise(rec, {"attributions": [0.1, 0.3, 0.2]}, ["attributions"])
    r = out["attributions"]
    assert r["view"]["median"] == 2.0 and r["view"]["p95"] == 3.0
    assert r["view"]["timeouts"] == 1 and r["view"]["errors"] == 1
    assert r["interaction"]["median"] == 2.0 and r["interaction"]["n"] == 1
    assert r["answered"]["median"] == 0.5 and r["first maps"]["median"] == 4.0
    assert r["all maps"]["timeouts"] == 1 and r["script"]["median"] == 0.2


def test_bench_dashboard_profile_summary_counts_each_sample_for_its_leaf_most_package(tmp_path):
    """A stdlib frame (copy.py) counts for the package that called it (plotly); a stack with
    no known package is "other"."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_dashboard
    finally:
        sys.path.remove(str(SCRIPT.parent))
    raw = tmp_path / "p.txt"
    raw.write_text(
        "thread (0x1);run (/st/streamlit/runner.py:9);page (/repo/pages/conflict.py:5);"
        "layout (/v/plotly/basedatatypes.py:100);deepcopy (/usr/lib/python3.11/copy.py:1) 6\n"
        "thread (0x2);_work (/repo/csba/workqueue.py:1);forward (/v/torch/nn/module.py:3) 3\n"
        "thread (0x3);run (/st/streamlit/runner.py:9);gc_collect (<built-in>:0) 1\n"
        "not a sample line\n"
        # py-spy's own form: files relative to their sys.path entry, a page by its name
        "Thread.run (threading.py:982);_run (streamlit/runtime/s.py:9);<module> (home.py:3);"
        "deepcopy (copy.py:128) 4\n"
        "Thread.run (threading.py:982);f (csba/train.py:1);g (_plotly_utils/x.py:2) 2\n"
        "Thread.run (threading.py:982);select (selectors.py:4) 4\n"
    )
    shares = bench_dashboard.profile_summary(raw)
    assert shares == {
        "plotly": 0.4, "csba + pages": 0.2, "torch / Captum": 0.15, "other": 0.2,
        "Streamlit": 0.05,
    }  # fmt: skip
    assert sum(bench_dashboard.profile_samples(raw).values()) == 20  # thread-samples in all
    (tmp_path / "empty.txt").write_text("")
    assert bench_dashboard.profile_summary(tmp_path / "empty.txt") == {}


def test_bench_dashboard_wait_finished_reads_the_last_run_after_the_click():
    """An interaction is done at the last script end after the click that no run follows
    within the settle wait; an end "early for a rerun" or a start with no end is not done;
    nothing after the click times out (None)."""
    import asyncio

    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_dashboard
    finally:
        sys.path.remove(str(SCRIPT.parent))
    ok = ForwardMsg.ScriptFinishedStatus.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
    early = ForwardMsg.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN

    class Page:  # playwright's page.wait_for_timeout, and nothing else
        async def wait_for_timeout(self, ms):
            await asyncio.sleep(ms / 1000)

    def wait(events, t0, timeout_s=0.5):
        return asyncio.run(bench_dashboard._wait_finished(Page(), events, t0, timeout_s))

    before = [(1.0, "new_session", None), (2.0, "script_finished", ok)]
    assert wait(before, 2.5) is None  # nothing after the click
    ran = [*before, (10.0, "new_session", None), (10.4, "script_finished", ok)]
    assert abs(wait(ran, 10.0) - 0.4) < 1e-9
    rerun = [*ran, (10.5, "script_finished", early)]
    assert wait(rerun, 10.0) is None  # interrupted for a rerun that never ended
    assert wait([*ran, (10.6, "new_session", None)], 10.0) is None
    ended = [*rerun, (10.6, "new_session", None), (11.0, "script_finished", ok)]
    assert abs(wait(ended, 10.0) - 1.0) < 1e-9
    # a view's served time: the last script end up to the page's idle (+50 ms of clock slack)
    assert abs(bench_dashboard._served(ended, 10.0, 0.9) - 0.5) < 1e-9
    assert abs(bench_dashboard._served(ended, 10.0, 0.96) - 1.0) < 1e-9
    assert bench_dashboard._served(ended, 11.0, 2.0) is None


def test_bench_worker_threads_times_both_settings(tiny_runs, capsys):
    """The worker-threads benchmark runs the Attributions job under both thread settings."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_worker_threads
    finally:
        sys.path.remove(str(SCRIPT.parent))
    out = bench_worker_threads.main(["--run", str(tiny_runs["csba"]), "--images", "1"])
    assert set(out) == {"1 thread", "default"}
    assert all(v["wall_s"] > 0 and v["cpu_s"] > 0 for v in out.values())
    assert "default / 1 thread: wall" in capsys.readouterr().out
