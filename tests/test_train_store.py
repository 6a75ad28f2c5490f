import json
import shutil

import numpy as np
import pytest
import torch

from csba.data import load_dataset, normalize
from csba.store import RunError, list_runs, load_run, read_run_json
from csba.train import TrainConfig, TrainingError, train


def _cfg(folder, out, **kw):
    base = dict(
        dataset="imagefolder", data_root=str(folder), image_size=32, batch_size=16, out=str(out)
    )
    return TrainConfig(**{**base, **kw})


def test_tiny_run_lowers_the_loss(tiny_folder, tmp_path):
    meta = train(_cfg(tiny_folder, tmp_path, variant="baseline", epochs=6, lr=1e-3, patience=50))
    losses = [h["train_loss"] for h in meta["history"]]
    assert losses[-1] < losses[0]
    assert meta["metrics"]["test"]["n"] == sum(meta["dataset"]["counts"]["test"])


def test_same_seed_same_metrics_and_weights(tiny_folder, tmp_path):
    a = train(_cfg(tiny_folder, tmp_path / "a", variant="csba", epochs=2, seed=7))
    b = train(_cfg(tiny_folder, tmp_path / "b", variant="csba", epochs=2, seed=7))
    assert a["metrics"] == b["metrics"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    ra, rb = load_run(a["run_dir"]), load_run(b["run_dir"])
    for k, v in ra.model.state_dict().items():
        assert torch.equal(v, rb.model.state_dict()[k]), k


def test_cancel_keeps_best_weights(tiny_folder, tmp_path):
    seen = []

    def cb(ev):
        seen.append(ev["type"])

    meta = train(
        _cfg(tiny_folder, tmp_path, variant="baseline", epochs=50),
        callback=cb,
        should_stop=lambda: seen.count("epoch") >= 2,
    )
    assert meta["status"] == "cancelled" and meta["epochs_run"] == 2
    assert load_run(meta["run_dir"]).meta["best_epoch"] in (1, 2)


def test_keyboard_interrupt_keeps_best_weights(tiny_folder, tmp_path):
    state = {"epochs": 0}

    def cb(ev):
        if ev["type"] == "epoch":
            state["epochs"] += 1
        if ev["type"] == "batch" and state["epochs"] == 1:
            raise KeyboardInterrupt

    meta = train(_cfg(tiny_folder, tmp_path, variant="focal", epochs=10), callback=cb)
    assert meta["status"] == "interrupted" and meta["epochs_run"] == 1
    assert load_run(meta["run_dir"]).meta["status"] == "interrupted"


def test_round_trip_gives_identical_outputs(tiny_runs, tiny_folder):
    bundle = load_dataset("imagefolder", 32, data_root=tiny_folder)
    x = normalize(bundle.test.images, bundle.mean, bundle.std)
    for variant, path in tiny_runs.items():
        run = load_run(path)
        meta = run.meta
        assert meta["variant"] == variant and run.classes == bundle.classes
        assert meta["dataset"]["fingerprint"] == bundle.fingerprint
        probs = torch.softmax(run.model(x), 1).detach().numpy()
        stored = np.array(meta["predictions"]["test"]["probs"])
        np.testing.assert_allclose(probs, stored, atol=1e-5)
        again = load_run(path)
        torch.testing.assert_close(run.model(x), again.model(x), rtol=0, atol=0)


def test_list_runs_finds_every_run(tiny_runs):
    root = next(iter(tiny_runs.values())).parent.parent
    found = list_runs(root)
    assert sorted(r.meta["variant"] for r in found) == sorted(tiny_runs)
    assert all(r.error is None for r in found)


@pytest.fixture
def run_copy(tiny_runs, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_runs["csba"], dst)
    return dst


def _edit_json(path, **changes):
    meta = json.loads((path / "run.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (path / "run.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage,msg",
    [
        (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 10), "checksum"),
        (
            lambda p: (
                _edit_json(p, weights_sha256=None)
                or (p / "model.safetensors").write_bytes(
                    (p / "model.safetensors").read_bytes()[:1000]
                )
            ),
            "not a readable safetensors",
        ),
        (lambda p: _edit_json(p, classes=None), "lacks field"),
        (lambda p: _edit_json(p, variant="resnet"), "unknown variant 'resnet'"),
        (lambda p: _edit_json(p, schema_version=99), "schema version 99"),
        (lambda p: _edit_json(p, num_classes=5, classes=list("abcde")), "does not fit"),
        (lambda p: (p / "run.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "run.json").unlink(), "run.json is missing"),
        (lambda p: (p / "model.safetensors").unlink(), "missing: a run.json without weights"),
    ],
)
def test_damaged_runs_give_one_line_errors(run_copy, damage, msg):
    damage(run_copy)
    with pytest.raises(RunError, match=msg) as e:
        load_run(run_copy)
    assert "\n" not in str(e.value)


def test_run_json_holds_its_whole_config(tiny_runs):
    meta = read_run_json(tiny_runs["gradnorm"])
    cfg = TrainConfig.from_dict(meta["config"])
    assert cfg.variant == "gradnorm" and cfg.image_size == 32
    assert set(meta["metrics"]["test"]) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}


def test_weight_ema_validates_and_keeps_the_average(tiny_folder, tmp_path):
    def weights(meta):
        return load_run(meta["run_dir"]).model.state_dict()

    kw = dict(variant="baseline", epochs=2, seed=3, lr=1e-3, patience=50)
    off = train(_cfg(tiny_folder, tmp_path / "off", **kw))
    # A decay of ~0 makes the average the live weights: the same run as without it.
    near = train(_cfg(tiny_folder, tmp_path / "near", ema_decay=1e-12, **kw))
    slow = train(_cfg(tiny_folder, tmp_path / "slow", ema_decay=0.9, **kw))
    assert off["config"]["ema_decay"] == 0.0 and slow["config"]["ema_decay"] == 0.9
    assert off["best_epoch"] == near["best_epoch"]
    w_off, w_near, w_slow = weights(off), weights(near), weights(slow)
    for k, v in w_off.items():
        if v.is_floating_point():
            torch.testing.assert_close(w_near[k], v, rtol=0, atol=1e-5)
    moved = [
        k for k, v in w_off.items() if v.is_floating_point() and (w_slow[k] - v).abs().max() > 1e-4
    ]
    assert moved, "a slow average should keep weights that differ from the live ones"
    with pytest.raises(TrainingError, match="ema_decay"):
        train(_cfg(tiny_folder, tmp_path / "bad", ema_decay=1.0, **kw))


def test_round_weights_known_answer():
    from csba.train import round_weights

    m = torch.nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0001, 1 / 3]]))
        m.bias.fill_(-2.0)
    assert round_weights(m, torch.float16) == torch.float16
    # float16 has 10 mantissa bits: 1.0001 -> 1.0, 1/3 -> 0.333251953125 (1365 / 4096)
    assert m.weight.tolist() == [[1.0, 1365 / 4096]] and m.bias.item() == -2.0
    assert m.weight.dtype == torch.float32  # rounded, still a float32 model
    with torch.no_grad():
        m.bias.fill_(70000.0)  # beyond float16's 65504: the model stays float32, unrounded
        m.weight.copy_(torch.tensor([[1.0001, 1 / 3]]))
    assert round_weights(m, torch.float16) == torch.float32
    assert m.weight[0, 0].item() == torch.tensor(1.0001).item()


def test_weights_are_stored_in_float16_and_metrics_are_theirs(tiny_folder, tmp_path):
    from safetensors.torch import load_file

    from csba.evaluate import evaluate_split

    meta = train(_cfg(tiny_folder, tmp_path / "h", variant="csba", epochs=2))
    path = f"{meta['run_dir']}/model.safetensors"
    dtypes = {t.dtype for t in load_file(path).values()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes  # int64 BN counters stay
    assert read_run_json(meta["run_dir"])["weights_dtype"] == "float16"
    run = load_run(meta["run_dir"])
    bundle = load_dataset("imagefolder", 32, data_root=tiny_folder)
    test, _ = evaluate_split(run.model, bundle.test, bundle.classes, bundle.mean, bundle.std)
    assert test == meta["metrics"]["test"]  # the stored metrics are the stored weights'

    full = train(
        _cfg(tiny_folder, tmp_path / "f", variant="csba", epochs=2, weights_dtype="float32")
    )
    stored = load_file(f"{full['run_dir']}/model.safetensors")
    assert {t.dtype for t in stored.values()} <= {torch.float32, torch.int64}
    assert full["weights_dtype"] == "float32"
    with pytest.raises(TrainingError, match="weights_dtype"):
        train(_cfg(tiny_folder, tmp_path / "x", variant="csba", epochs=1, weights_dtype="int8"))


def test_cosine_schedule_and_keep_last_known_answer(tiny_folder, tmp_path):
    import math

    kw = dict(variant="baseline", epochs=4, seed=5, lr=1e-3, precision="fp32")
    # patience 1 would stop a "best" run early; "last" trains every epoch and keeps the final one.
    meta = train(
        _cfg(
            tiny_folder,
            tmp_path / "c",
            lr_schedule="cosine",
            keep="last",
            patience=1,
            weights_dtype="float32",
            **kw,
        )
    )
    lrs = [h["lr"] for h in meta["history"]]
    # CosineAnnealingLR over 4 epochs: lr * (1 + cos(pi * t / 4)) / 2 for epochs t = 0..3
    want = [1e-3 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert lrs == pytest.approx(want, rel=1e-9)
    assert meta["epochs_run"] == 4 and meta["best_epoch"] == 4
    assert meta["config"]["lr_schedule"] == "cosine" and meta["config"]["keep"] == "last"
    # fp32 training, fp32 storage: the stored val metrics are those of the last epoch's weights.
    last = meta["history"][-1]
    assert meta["metrics"]["val"]["macro_f1"] == last["val_macro_f1"]
    assert meta["metrics"]["val"]["accuracy"] == last["val_accuracy"]

    step = train(_cfg(tiny_folder, tmp_path / "s", **kw))  # the pinned defaults
    assert [h["lr"] for h in step["history"]] == [1e-3] * 4  # StepLR(30): flat for 4 epochs
    assert step["config"]["lr_schedule"] == "step" and step["config"]["keep"] == "best"
    for bad in (dict(lr_schedule="linear"), dict(keep="median")):
        with pytest.raises(TrainingError, match=next(iter(bad))):
            train(_cfg(tiny_folder, tmp_path / "x", **{**kw, **bad}))


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_tensor_learning_rate_follows_the_schedule_in_place(schedule):
    """A CUDA-graphed step reads Adam's lr from one tensor captured once: the schedulers must
    update that tensor in place, to the same values as a float lr."""
    rates = {}
    for kind in ("float", "tensor"):
        p = torch.nn.Parameter(torch.zeros(3))
        lr = torch.tensor(1e-3) if kind == "tensor" else 1e-3
        opt = torch.optim.Adam([p], lr=lr)
        if schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        seen = []
        for _ in range(5):
            p.grad = torch.ones(3)
            opt.step()
            sched.step()
            seen.append(float(opt.param_groups[0]["lr"]))
        if kind == "tensor":
            assert opt.param_groups[0]["lr"] is lr  # the same tensor, updated in place
        rates[kind] = seen
    assert rates["tensor"] == pytest.approx(rates["float"], rel=1e-6)
