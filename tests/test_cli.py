import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csba.cli import build_parser, main


def test_evaluate_json_parses(tiny_runs, capsys):
    assert main(["evaluate", str(tiny_runs["csba"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
    assert set(out["per_class"]["alpha"]) == {"precision", "recall", "f1", "support"}
    stored = json.loads((tiny_runs["csba"] / "run.json").read_text())["metrics"]["test"]
    assert out["macro_f1"] == stored["macro_f1"] and out["accuracy"] == stored["accuracy"]


def test_list_json(tiny_runs, capsys):
    root = tiny_runs["csba"].parent.parent
    assert main(["list", "--root", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5 and {r["variant"] for r in rows} == set(tiny_runs)


def test_train_command_writes_a_run(tiny_folder, tmp_path, capsys):
    args = [
        "train",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(tiny_folder),
        "--variant",
        "gradnorm",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--out",
        str(tmp_path),
        "--ema-decay",
        "0.5",
        "--weights-dtype",
        "float32",
    ]
    assert main(args) == 0
    run_dir = capsys.readouterr().out.strip()
    assert run_dir.endswith("imagefolder-32px/gradnorm-s0")
    meta = json.loads(Path(run_dir, "run.json").read_text())
    assert meta["config"]["ema_decay"] == 0.5
    assert meta["config"]["weights_dtype"] == meta["weights_dtype"] == "float32"
    assert main(args) == 2  # refuses to overwrite without --overwrite
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["train", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["train", "--variant", "vgg"], "unknown variant 'vgg'"),
        (["train", "--dataset", "imagefolder", "--data-root", "/no/such/dir"], "does not exist"),
        (["train", "--dataset", "imagefolder"], "needs --data-root"),
        (["train", "--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
        (["evaluate", "/no/such/run"], "no such run folder"),
        (["evaluate", "."], "not a run folder"),
    ],
)
def test_user_errors_are_one_line(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and "Traceback" not in err


def test_help_explains_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "csba", "train", "--help"], capture_output=True, text=True
    ).stdout
    for opt in (
        "--dataset",
        "--variant",
        "--seed",
        "--epochs",
        "--image-size",
        "--device",
        "--data-root",
        "--out",
    ):
        assert opt in out


def test_every_help_text_renders_its_percent_signs():
    """argparse %-formats help strings but prints descriptions as written: no '%%' shows."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"train", "compare", "report", "protocol", "pair"} <= set(sub.choices)
    for name, cmd in sub.choices.items():
        text = cmd.format_help()
        assert "%%" not in text and "%(" not in text, name


@pytest.mark.slow
def test_real_elpv_train_and_evaluate(tmp_path):
    """The issue's acceptance check, at 32 px and one epoch to stay fast on CI."""
    env_args = [
        "--dataset",
        "elpv",
        "--variant",
        "csba",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--out",
        str(tmp_path),
    ]
    r = subprocess.run(
        [sys.executable, "-m", "csba", "train", *env_args], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    run_dir = r.stdout.strip()
    r = subprocess.run(
        [sys.executable, "-m", "csba", "evaluate", run_dir, "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sum(v["support"] for v in out["per_class"].values()) == 656
    assert list(out["per_class"]) == [
        "functional",
        "possibly-defective",
        "likely-defective",
        "defective",
    ]
    assert 0.0 <= out["macro_f1"] <= 1.0


def test_protocol_trains_diagnoses_and_resumes(tiny_folder, tmp_path, capsys):
    args = [
        "protocol",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(tiny_folder),
        "--variants",
        "baseline",
        "csba",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--out",
        str(tmp_path),
        "--diagnose-per-class",
        "4",
    ]
    assert main(args) == 0
    dirs = capsys.readouterr().out.split()
    assert [d.split("/")[-1] for d in dirs] == ["baseline-s0", "csba-s0"]
    metas = [json.loads(Path(d, "run.json").read_text()) for d in dirs]
    assert all("gcm" in m["diagnostics"] for m in metas)
    stamps = [m["created"] for m in metas]
    assert main(args) == 0  # complete runs are skipped, not retrained
    assert [json.loads(Path(d, "run.json").read_text())["created"] for d in dirs] == stamps


@pytest.mark.slow
def test_protocol_parallel_jobs_match_serial_runs(tiny_folder, tmp_path, capsys):
    """--jobs 2 runs worker processes; each run equals a serial run at the same thread count."""
    common = ["--dataset", "imagefolder", "--data-root", str(tiny_folder), "--seeds", "0"]
    common += ["--epochs", "1", "--image-size", "32", "--diagnose-per-class", "4"]
    # the non-pinned schedule options reach the worker processes too
    common += ["--lr", "0.0003", "--lr-schedule", "cosine", "--keep", "last", "--no-cuda-graph"]
    par = tmp_path / "par"
    args = ["protocol", *common, "--variants", "baseline", "csba", "--jobs", "2", "--out", str(par)]
    assert main(args) == 0
    dirs = capsys.readouterr().out.split()
    assert [d.split("/")[-1] for d in dirs] == ["baseline-s0", "csba-s0"]
    logs = sorted(p.name for p in (par / "logs").iterdir())
    assert logs == ["imagefolder-32px-baseline-s0.log", "imagefolder-32px-csba-s0.log"]
    log_text = (par / "logs" / logs[1]).read_text()
    assert "accuracy" in log_text
    assert main(args) == 0  # complete runs are skipped without a worker; logs stay as they are
    assert (par / "logs" / logs[1]).read_text() == log_text
    assert capsys.readouterr().out.split() == dirs
    meta = json.loads(Path(dirs[1], "run.json").read_text())
    assert meta["status"] == "completed" and "gcm" in meta["diagnostics"]
    config = meta["config"]
    assert (config["lr"], config["lr_schedule"], config["keep"], config["cuda_graph"]) == (
        3e-4,
        "cosine",
        "last",
        False,
    )
    assert meta["runtime"]["cuda_graph"] is False  # the CPU never captures
    threads = meta["runtime"]["threads"]
    # the same run in a serial worker with the same thread count gives the same weights
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    ser = tmp_path / "ser"
    cmd = [sys.executable, "-m", "csba", "protocol", *common, "--variants", "csba"]
    cmd += ["--out", str(ser)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **env})
    again = json.loads((ser / "imagefolder-32px" / "csba-s0" / "run.json").read_text())
    from safetensors.torch import load_file

    # tensors, not file bytes: the safetensors header layout may differ between processes
    wa = load_file(str(ser / "imagefolder-32px" / "csba-s0" / "model.safetensors"))
    wb = load_file(str(Path(dirs[1]) / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert again["metrics"]["test"] == meta["metrics"]["test"]


def test_protocol_rejects_zero_jobs(capsys):
    assert main(["protocol", "--jobs", "0"]) == 2
    assert "--jobs must be 1 or more" in capsys.readouterr().err


def test_protocol_workers_get_exactly_the_serial_config():
    """A worker's flags parse back to the TrainConfig the serial path builds, option by option."""
    import dataclasses

    from csba.cli import build_parser
    from csba.options import PROTOCOL_OPTIONS
    from csba.protocol import protocol_train_config, protocol_train_flags
    from csba.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(PROTOCOL_OPTIONS) <= fields and not {"variant", "seed", "run_dir"} & set(
        PROTOCOL_OPTIONS
    )
    parser = build_parser()
    argv = ["protocol", "--image-size", "48", "--epochs", "7", "--device", "cpu"]
    argv += ["--data-root", "/x", "--conflict-every", "3", "--ema-decay", "0.99"]
    argv += ["--weights-dtype", "float32", "--lr", "0.000123456789", "--lr-schedule", "cosine"]
    argv += ["--keep", "last", "--no-cuda-graph", "--dataset", "elpv8", "--out", "o"]
    argv += ["--precision", "fp32", "--split-seed", "4", "--batch-size", "8", "--patience", "5"]
    argv += ["--backbone", "resnet18", "--pretrained", "w.safetensors", "--la-tau", "0.5"]
    argv += ["--label-noise", "0.05", "--label-noise-seed", "2"]

    def options(a):
        return {n: getattr(a, n) for n in PROTOCOL_OPTIONS}

    args = parser.parse_args(argv)
    cfg = protocol_train_config(options(args), "csba", 2, Path("r"))
    pinned = TrainConfig()
    changed = {n for n in PROTOCOL_OPTIONS if getattr(cfg, n) != getattr(pinned, n)}
    assert changed == set(PROTOCOL_OPTIONS)  # every option is exercised
    for a in (args, parser.parse_args(["protocol"])):  # non-default and default values
        flags = protocol_train_flags(options(a))
        back = parser.parse_args(["protocol", *flags])
        assert protocol_train_config(options(back), "csba", 2, Path("r")) == (
            protocol_train_config(options(a), "csba", 2, Path("r"))
        )
    assert cfg.lr == 0.000123456789 and cfg.variant == "csba" and cfg.seed == 2
    assert parser.parse_args(["protocol"]).conflict_every == 5  # the protocol's own default


def test_train_flags_are_the_train_config_fields():
    """`train` has one flag per TrainConfig option field, with its default and help, and the
    parsed defaults build exactly TrainConfig()."""
    from csba.cli import build_parser
    from csba.options import config_from_args, train_option, train_options
    from csba.train import TrainConfig

    names = [o.name for o in train_options()]
    assert {"dataset", "variant", "seed", "epochs", "lr", "keep", "cuda_graph"} <= set(names)
    assert not {"lr_step", "lr_gamma", "focal_gamma"} & set(names)  # pinned: not options
    args = build_parser().parse_args(["train"])
    assert config_from_args(args, names) == TrainConfig()
    args = build_parser().parse_args(["train", "--lr", "3e-4", "--no-cuda-graph", "--keep", "last"])
    cfg = config_from_args(args, names)
    assert (cfg.lr, cfg.cuda_graph, cfg.keep) == (3e-4, False, "last")
    opt = train_option("keep")
    assert opt.flag == "--keep" and opt.choices == ("best", "last")
    assert opt.help_text().endswith("(default best)")
    assert "csba" in train_option("variant").help and "elpv8" in train_option("dataset").help
    with pytest.raises(KeyError):
        train_option("lr_step")


@pytest.mark.slow
@pytest.mark.parametrize(
    "cmd,bar",
    [
        (["evaluate", "{run}", "--views", "2"], "evaluate test (2 views)"),
        (["diagnose", "{run}", "--per-class", "4"], "diagnose train, pass 1"),
        (["compare", "{run}", "{run}", "--resamples", "50"], "compare: bootstrap"),
    ],
)
def test_long_commands_show_a_bar_on_stderr_and_keep_json_on_stdout(cmd, bar, tiny_runs, tmp_path):
    """tqdm bars go to stderr; with --json stdout stays exactly one JSON document."""
    import shutil

    run = tmp_path / "csba-s0"
    shutil.copytree(tiny_runs["csba"], run)
    argv = [c.replace("{run}", str(run)) for c in cmd] + ["--json"]
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    r = subprocess.run(
        [sys.executable, "-m", "csba", *argv], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # one document, nothing else
    assert r.stdout.count("\n") == 1 and bar in r.stderr
    assert "Traceback" not in r.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "csba", *argv],
        capture_output=True,
        text=True,
        env={**env, "TQDM_DISABLE": "1"},
    )
    assert quiet.returncode == 0 and bar not in quiet.stderr


def test_protocol_shows_a_bar_over_the_runs(tiny_folder, tmp_path, capsys):
    from csba.cli import main

    args = ["protocol", "--dataset", "imagefolder", "--data-root", str(tiny_folder)]
    args += ["--variants", "baseline", "--seeds", "0", "--epochs", "1", "--image-size", "32"]
    args += ["--out", str(tmp_path), "--diagnose-per-class", "4"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "protocol: 100%" in cap.err and "1/1" in cap.err
    assert cap.out.split() == [str(tmp_path / "imagefolder-32px" / "baseline-s0")]
    assert main([*args, "--no-progress"]) == 0  # complete: skipped, and no bar
    assert "protocol:" not in capsys.readouterr().err.replace("protocol: 1 runs", "")
