"""torchrun (csba.distributed): a 2-process gloo DDP run equals one process with the same global
batch, the distributed Gradient Conflict Matrix equals the single-process one, a failing rank
fails the whole run without a run folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # torchrun processes: over 10 s each (pytest -m "not slow" skips)

REPO = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("ddp_entry.py")  # the CLI with dropout/BN/augmentation frozen
TIMEOUT = 300


def _torchrun(nproc: int, args: list[str], cwd: Path, entry: list[str] | None = None, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *(entry or [str(ENTRY)]), *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    full_env["TQDM_DISABLE"] = "1"
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=TIMEOUT
    )


def _train_args(tiny_folder: Path, out: Path, variant: str = "csba") -> list[str]:
    args = ["train", "--dataset", "imagefolder", "--data-root", str(tiny_folder)]
    args += ["--variant", variant, "--image-size", "32", "--epochs", "1", "--batch-size", "16"]
    args += ["--precision", "fp32", "--weights-dtype", "float32", "--device", "cpu"]
    return [*args, "--out", str(out)]


@pytest.mark.parametrize("variant", ["csba"])
def test_two_process_ddp_epoch_equals_one_process(tiny_folder, tmp_path, variant):
    """float32, augmentation and dropout off, BatchNorm statistics frozen (SyncBatchNorm does
    not run on CPU tensors): after one epoch the weights match to float32 tolerance."""
    from safetensors.torch import load_file

    runs = {}
    for n in (1, 2):
        r = _torchrun(n, _train_args(tiny_folder, tmp_path / f"n{n}", variant), tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[n] = tmp_path / f"n{n}" / "imagefolder-32px" / f"{variant}-s0"
        assert r.stdout.split() == [str(runs[n])]  # only rank 0 prints
    one, two = (load_file(str(runs[n] / "model.safetensors")) for n in (1, 2))
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert worst < 2e-5, worst  # the per-process loss normalised per rank instead: ~4e-4
    meta = json.loads((runs[2] / "run.json").read_text())
    assert meta["runtime"]["distributed"] == {
        "launcher": "torchrun",
        "backend": "gloo",
        "world_size": 2,
        "global_batch": 16,
        "per_process_batch": 8,
        "sync_batchnorm": False,
    }
    assert meta["config"]["batch_size"] == 16 and meta["config"]["lr"] == 1e-4
    first = json.loads((runs[1] / "run.json").read_text())
    assert abs(meta["history"][0]["train_loss"] - first["history"][0]["train_loss"]) < 1e-5
    assert not (runs[2] / "resume").exists()  # a completed run drops its resume state


def test_distributed_gcm_equals_the_single_process_one(tiny_runs, tmp_path):
    from csba.diagnostics.run import diagnose_run

    run = tmp_path / "csba-s0"
    shutil.copytree(tiny_runs["csba"], run)
    single = diagnose_run(str(run), device="cpu", store=False)
    args = ["diagnose", str(run), "--json"]
    r = _torchrun(2, args, tmp_path, entry=["-m", "csba"])
    assert r.returncode == 0, r.stderr[-3000:]
    dist = json.loads(r.stdout)  # one document: rank 0 prints, the others stay silent
    assert dist["gcm"]["counts"] == single["gcm"]["counts"]
    np.testing.assert_allclose(
        np.array(dist["gcm"]["matrix"], float), np.array(single["gcm"]["matrix"], float), atol=1e-5
    )
    for group, g in single["layers"].items():
        np.testing.assert_allclose(
            np.array(dist["layers"][group]["matrix"], float),
            np.array(g["matrix"], float),
            atol=1e-5,
        )
    assert "gcm" in json.loads((run / "run.json").read_text())["diagnostics"]  # rank 0 stored


def test_distributed_gcm_splits_the_chunks_over_ranks(monkeypatch):
    """Each rank takes every N-th class-pure chunk, and the all-reduced sums give the same
    matrix (a fake two-rank group: the other rank's sums added by hand)."""
    import torch.distributed as dist

    from csba.diagnostics import gcm
    from csba.models import create_model

    torch.manual_seed(0)
    model = create_model("baseline", 3)
    x, y = torch.randn(12, 3, 32, 32), torch.tensor([0, 1, 2] * 4)
    ref = gcm.gradient_conflict_matrix(model, x, y, 3, batch_size=2, layer_groups=False)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(dist, "all_reduce", lambda t: parts.append(t.clone()))
        gcm.gradient_conflict_matrix(
            model, x, y, 3, batch_size=2, layer_groups=False, distributed=True
        )
    sums = [p for p in parts if p.ndim == 2]
    assert len(sums) == 2 and not torch.equal(sums[0], sums[1])  # each rank did its share
    total = (sums[0] + sums[1]).double()
    n = np.array([4.0, 4.0, 4.0])
    gram = (total @ total.T).numpy() / np.outer(n, n)
    np.testing.assert_allclose(gram, sum(ref.param_grams.values()), rtol=1e-5)


def test_a_failing_rank_fails_the_run_without_a_run_folder(tiny_folder, tmp_path):
    """Rank 1 fails in epoch 2: the run fails with one clear line, rank 0 wrote no run folder
    (only epoch 1's resume state), and --resume then finishes it exactly as an uninterrupted
    2-process run."""
    from safetensors.torch import load_file

    out, full = tmp_path / "out", tmp_path / "full"
    args = [*_train_args(tiny_folder, out), "--epochs", "3", "--keep", "last"]
    r = _torchrun(2, args, tmp_path, CSBA_TEST_FAIL_RANK="1", CSBA_TEST_FAIL_AFTER="3")
    assert r.returncode != 0
    assert "csba train: rank 1 of 2 failed: RuntimeError: injected failure" in r.stderr
    assert "the run folder was not written" in r.stderr
    assert not list(out.rglob("run.json")) and not list(out.rglob("model.safetensors"))
    assert not list(out.rglob(".*.tmp"))
    run = out / "imagefolder-32px" / "csba-s0"
    assert json.loads((run / "resume" / "state.json").read_text())["epoch"] == 1
    r = _torchrun(2, [*args, "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((run / "run.json").read_text())
    assert meta["runtime"]["resumed_at_epochs"] == [1] and meta["epochs_run"] == 3
    uninterrupted = [*_train_args(tiny_folder, full), "--epochs", "3", "--keep", "last"]
    assert _torchrun(2, uninterrupted, tmp_path).returncode == 0
    a = load_file(str(run / "model.safetensors"))
    b = load_file(str(full / "imagefolder-32px" / "csba-s0" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_global_batch_must_divide_and_methods_are_checked():
    from csba.distributed import DistConfig, DistContext, DistributedError, GlobalBatchSampler

    with pytest.raises(DistributedError, match="not divisible by the 3 processes"):
        GlobalBatchSampler(100, 16, 0, 3, seed=0)
    ctx = DistContext(0, 2, 0, "cpu", DistConfig())
    with pytest.raises(DistributedError, match="does not train under torchrun"):
        ctx.setup("pcgrad", 100, 16, 0)
    with pytest.raises(DistributedError, match="smaller than the global batch"):
        ctx.setup("weighted", 10, 16, 0)
    s = ctx.setup("weighted", 100, 16, 0)
    perm = s.set_epoch(3)
    assert torch.equal(perm, s.set_epoch(3)) and not torch.equal(perm, s.set_epoch(4))
    other = GlobalBatchSampler(100, 16, 1, 2, seed=0)
    batch = perm[:16]
    assert torch.equal(torch.cat([s.local(batch), other.local(batch)]), batch)


def test_outside_torchrun_there_is_no_process_group(monkeypatch):
    from csba.distributed import torchrun_session, under_torchrun

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert not under_torchrun()
    with torchrun_session("train", torch.device("cpu")) as dist:
        assert dist is None
