"""Command line (DESIGN.md section 6): ``python -m csba train|evaluate|diagnose|compare|list``.

Errors a user can cause (wrong dataset, missing data root, a folder that is not a run, a damaged
checkpoint) print one line on stderr and exit with status 2, without a traceback. ``--json``
prints exactly one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import DATASETS, DataError, ImageLoadError

EXIT_USER_ERROR = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _print_json(obj) -> None:
    from .store import _clean_nan, _json_default

    sys.stdout.write(json.dumps(_clean_nan(obj), default=_json_default, allow_nan=False) + "\n")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- train -----------------------------------------------------------------------------------


def _progress_printer(cfg):
    """Per-epoch progress lines on stderr for a training run."""

    def progress(ev: dict) -> None:
        if ev["type"] == "start":
            _err(
                f"training {cfg.variant} on {cfg.dataset} at {cfg.image_size}px, seed {cfg.seed}: "
                f"{ev['num_batches']} batches/epoch on {ev['device']} ({ev['precision']})"
            )
        elif ev["type"] == "epoch":
            mark = " *" if ev["improved"] else ""
            _err(
                f"epoch {ev['epoch']:3d}  train loss {ev['train_loss']:.4f}  "
                f"val loss {ev['val_loss']:.4f}  val acc {ev['val_accuracy']:.3f}  "
                f"val macro-F1 {ev['val_macro_f1']:.3f}{mark}  {ev['seconds']:.1f}s"
            )

    return progress


def _check_ema_decay(decay: float) -> None:
    # Checked before any run folder or data is touched, so a bad value costs nothing.
    if not 0.0 <= decay < 1.0:
        raise CLIError(f"--ema-decay must be in [0, 1), got {decay}")


def cmd_train(args: argparse.Namespace) -> int:
    from .models import list_models
    from .store import run_dir_for
    from .train import TrainConfig, train

    if args.dataset not in DATASETS:
        raise CLIError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if args.variant not in list_models():
        raise CLIError(
            f"unknown variant {args.variant!r}; choose one of: {', '.join(list_models())}"
        )
    _check_ema_decay(args.ema_decay)
    cfg = TrainConfig(
        dataset=args.dataset,
        variant=args.variant,
        seed=args.seed,
        image_size=args.image_size,
        data_root=args.data_root,
        split_seed=args.split_seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        ema_decay=args.ema_decay,
        weights_dtype=args.weights_dtype,
        lr_schedule=args.lr_schedule,
        keep=args.keep,
        cuda_graph=args.cuda_graph,
        device=args.device,
        precision=args.precision,
        conflict_every=args.conflict_every,
        out=args.out,
        run_dir=args.run_dir,
    )
    run_dir = (
        Path(args.run_dir)
        if args.run_dir
        else run_dir_for(cfg.out, cfg.dataset, cfg.variant, cfg.seed, cfg.image_size)
    )
    if (run_dir / "run.json").exists() and not args.overwrite:
        raise CLIError(f"'{run_dir}' already holds a run; pass --overwrite or choose --out")
    cfg.run_dir = str(run_dir)

    meta = train(cfg, callback=_progress_printer(cfg))
    t = meta["metrics"]["test"]
    _err(
        f"{meta['status']}: kept epoch {meta['best_epoch']} of {meta['epochs_run']} "
        f"({meta['stop_reason']}); test accuracy {t['accuracy']:.3f}, macro-F1 {t['macro_f1']:.3f}"
    )
    print(meta["run_dir"])
    return 0 if meta["status"] != "interrupted" else 130


# ---- evaluate --------------------------------------------------------------------------------


def load_run_and_data(run_dir: str, data_root: str | None = None):
    """A run plus its dataset rebuilt from run.json (same size, split seed, source)."""
    from .data import load_dataset
    from .store import load_run

    run = load_run(run_dir)
    ds = run.meta["dataset"]
    cfg = run.meta["config"]
    bundle = load_dataset(
        ds["name"],
        int(ds["image_size"]),
        data_root=data_root or ds.get("data_root") or cfg.get("data_root"),
        split_seed=int(ds["split_seed"]),
    )
    if bundle.classes != run.classes:
        raise CLIError(
            f"'{run.path}': the run's classes {run.classes} differ from the dataset's "
            f"{bundle.classes}"
        )
    if bundle.fingerprint != ds.get("fingerprint"):
        _err(f"warning: the {ds['name']} source differs from the one this run was trained on")
    return run, bundle


def recorded_views(meta: dict) -> int:
    """Test-time views behind a run's stored metrics (1 when run.json does not say)."""
    return int((meta.get("evaluation") or {}).get("views") or 1)


def wanted_views(meta: dict | None, views: str | int) -> int:
    """``--views`` as a number: "auto" is :func:`csba.evaluate.tta_views` of the run's dataset
    (8 for EL cells, whose training augmentation includes 90-degree rotations, else 4)."""
    from .evaluate import tta_views

    if str(views) != "auto":
        return int(views)
    return tta_views(bool(((meta or {}).get("dataset") or {}).get("rot90")))


def protocol_complete(meta: dict, views: str | int = "auto") -> bool:
    """Whether ``protocol`` has nothing left to do for a run (its parsed run.json): trained to
    the end, evaluated with the wanted test-time views (keeping the single-view predictions)
    and diagnosed. ``protocol`` skips such runs and the device script returns only these."""
    n = recorded_views(meta)
    return (
        meta.get("status") == "completed"
        and "diagnostics" in meta
        and n == wanted_views(meta, views)
        and (n == 1 or "predictions_single_view" in meta)
    )


def store_evaluation(
    run_dir: str, views: int, data_root: str | None = None, device: str = "cpu"
) -> dict:
    """Recompute a run's stored val/test metrics and test predictions with ``views`` test-time
    views (float32; see :func:`csba.evaluate.predict`) and record ``evaluation.views``.

    The single-view metrics that training stored are kept under ``metrics_single_view``, so
    both stay in run.json. ``device``: where to compute (the protocol passes its training
    device: on an H100 the 8 views of a 224 px run take seconds, on 3 CPU threads over 100 s).
    Returns the new test metrics.
    """
    from .evaluate import evaluate_split, prediction_record
    from .store import update_run_json
    from .train import resolve_device

    run, bundle = load_run_and_data(run_dir, data_root)
    args = (bundle.classes, bundle.mean, bundle.std)
    dev = resolve_device(device)
    run.model.to(dev)
    test, probs = evaluate_split(run.model, bundle.test, *args, views=views, device=dev)
    val, _ = evaluate_split(run.model, bundle.val, *args, views=views, device=dev)
    fields = {
        "metrics": {"test": test, "val": val},
        "predictions": {"test": prediction_record(bundle.test.labels, probs)},
        "evaluation": {"views": views},
    }
    if recorded_views(run.meta) == 1 and "metrics_single_view" not in run.meta:
        fields["metrics_single_view"] = run.meta["metrics"]
        fields["predictions_single_view"] = run.meta["predictions"]
    update_run_json(run.path, **fields)
    return test


def ensure_single_view_predictions(run_dir: str, data_root: str | None = None) -> bool:
    """Store ``predictions_single_view`` for a run evaluated with test-time views before they
    were kept; the recomputed single-view metrics must equal ``metrics_single_view`` exactly.
    Returns True when something was stored."""
    from .evaluate import evaluate_split, prediction_record
    from .store import read_run_json, update_run_json

    meta = read_run_json(run_dir)
    if recorded_views(meta) == 1 or "predictions_single_view" in meta:
        return False
    run, bundle = load_run_and_data(run_dir, data_root)
    test, probs = evaluate_split(run.model, bundle.test, bundle.classes, bundle.mean, bundle.std)
    stored = (meta.get("metrics_single_view") or {}).get("test")
    if stored is not None and stored != test:
        raise CLIError(f"'{run_dir}': single-view test metrics do not reproduce the stored ones")
    fields = {"predictions_single_view": {"test": prediction_record(bundle.test.labels, probs)}}
    if stored is None:
        val, _ = evaluate_split(run.model, bundle.val, bundle.classes, bundle.mean, bundle.std)
        fields["metrics_single_view"] = {"test": test, "val": val}
    update_run_json(run.path, **fields)
    return True


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_split

    run, bundle = load_run_and_data(args.run_dir, args.data_root)
    views = recorded_views(run.meta) if args.views is None else args.views
    metrics, _ = evaluate_split(
        run.model, bundle.split(args.split), bundle.classes, bundle.mean, bundle.std, views=views
    )
    metrics = {"run": str(run.path), "split": args.split, "views": views, **metrics}
    if args.json:
        _print_json(metrics)
        return 0
    print(
        f"{run.path}  ({run.variant}, seed {run.seed})  split: {args.split}, n={metrics['n']}, "
        f"{views} view(s)"
    )
    print(
        f"accuracy {metrics['accuracy']:.4f}  balanced accuracy "
        f"{metrics['balanced_accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}"
    )
    width = max(len(c) for c in bundle.classes)
    print(f"{'class':<{width}}  precision  recall     f1  support")
    for c, m in metrics["per_class"].items():
        print(
            f"{c:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  "
            f"{m['support']:7d}"
        )
    print("confusion matrix (rows: true, columns: predicted)")
    for c, row in zip(bundle.classes, metrics["confusion_matrix"], strict=True):
        print(f"{c:<{width}}  " + " ".join(f"{v:5d}" for v in row))
    return 0


# ---- list ------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from .store import list_runs

    runs = list_runs(args.root)
    rows = []
    for info in runs:
        if info.error:
            rows.append({"path": str(info.path), "error": info.error})
            continue
        m = info.meta
        test = m.get("metrics", {}).get("test", {})
        rows.append(
            {
                "path": str(info.path),
                "dataset": m["dataset"]["name"],
                "variant": m["variant"],
                "seed": m["config"].get("seed"),
                "image_size": m["dataset"].get("image_size"),
                "parameters": m.get("parameters"),
                "accuracy": test.get("accuracy"),
                "macro_f1": test.get("macro_f1"),
                "best_epoch": m.get("best_epoch"),
                "status": m.get("status"),
                "diagnosed": "diagnostics" in m,
                "created": m.get("created"),
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no runs under '{args.root}' (train one: python -m csba train --epochs 2)")
        return 0
    for r in rows:
        if "error" in r:
            print(f"{r['path']}  ERROR: {r['error']}")
        else:
            print(
                f"{r['path']}  {r['dataset']}  {r['variant']:<11} seed {r['seed']}  "
                f"{r['image_size']}px  acc {r['accuracy']:.3f}  macro-F1 {r['macro_f1']:.3f}  "
                f"{r['status']}"
            )
    return 0


# ---- diagnose / compare (implemented in their modules) ---------------------------------------


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnostics.run import diagnose_run_cli

    return diagnose_run_cli(args, load_run_and_data, _print_json)


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare run folders (csba.report.compare_runs): readable tables, or one JSON document
    on stdout with ``--json``; files written with --csv/--latex/--figures are listed (on
    stderr with --json). A tqdm bar on stderr follows the bootstraps."""
    from tqdm import tqdm

    from .report import compare_runs, format_comparison, write_figures, write_tables

    with tqdm(desc="compare: bootstrap", unit="run", file=sys.stderr, leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        comparison = compare_runs(
            list(args.run_dirs), n_resamples=args.resamples, seed=args.seed, progress=progress
        )
    written = write_tables(comparison, args.csv, args.latex)
    if args.figures:
        written += write_figures(comparison, args.figures)
    if args.json:
        _print_json({**comparison["json"], "files": [str(p) for p in written]})
        for p in written:
            _err(f"wrote {p}")
        return 0
    print(format_comparison(comparison))
    if written:
        print()
        for p in written:
            print(f"wrote {p}")
    return 0


def cmd_pair(args: argparse.Namespace) -> int:
    from .paired import pair_cli

    return pair_cli(args, _print_json)


# The training options `protocol` passes to every run: (flag, attribute of both the parsed
# arguments and TrainConfig). The serial path builds its TrainConfig from this table and the
# parallel path its workers' command lines, so an option added here reaches both.
PROTOCOL_TRAIN_OPTIONS = (
    ("--image-size", "image_size"),
    ("--epochs", "epochs"),
    ("--device", "device"),
    ("--data-root", "data_root"),
    ("--conflict-every", "conflict_every"),
    ("--ema-decay", "ema_decay"),
    ("--weights-dtype", "weights_dtype"),
    ("--lr", "lr"),
    ("--lr-schedule", "lr_schedule"),
    ("--keep", "keep"),
    ("--cuda-graph", "cuda_graph"),
)


def protocol_train_config(args: argparse.Namespace, variant: str, seed: int, run_dir: Path):
    """The TrainConfig of one protocol run: the pinned defaults plus the passed-through options."""
    from .train import TrainConfig

    opts = {attr: getattr(args, attr) for _, attr in PROTOCOL_TRAIN_OPTIONS}
    return TrainConfig(
        dataset=args.dataset, variant=variant, seed=seed, run_dir=str(run_dir), **opts
    )


def protocol_train_flags(args: argparse.Namespace) -> list[str]:
    """The same options as command-line flags, for a `protocol --jobs 1` worker."""
    flags = []
    for flag, attr in PROTOCOL_TRAIN_OPTIONS:
        value = getattr(args, attr)
        if isinstance(value, bool):  # BooleanOptionalAction: --x / --no-x
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is not None:  # None: the option's default (e.g. no --data-root)
            flags += [flag, repr(value) if isinstance(value, float) else str(value)]
    return flags


def cmd_protocol(args: argparse.Namespace) -> int:
    """Train + diagnose every variant x seed, skipping runs already complete (resumable)."""
    import time

    from .diagnostics.run import diagnose_run
    from .models import list_models
    from .store import RunError, read_run_json, run_dir_for
    from .train import train

    variants = list_models() if args.variants == ["all"] else args.variants
    unknown = [v for v in variants if v not in list_models()]
    if unknown:
        raise CLIError(f"unknown variant(s) {unknown}; choose from: {', '.join(list_models())}")
    if args.jobs < 1:
        raise CLIError(f"--jobs must be 1 or more, got {args.jobs}")
    _check_ema_decay(args.ema_decay)
    t0 = time.perf_counter()
    if args.jobs > 1:
        return _protocol_parallel(args, variants, t0)
    done = []
    for seed in args.seeds:
        for variant in variants:
            run_dir = run_dir_for(args.out, args.dataset, variant, seed, args.image_size)
            try:
                meta = read_run_json(run_dir)
                complete = meta.get("status") == "completed"
            except RunError:
                meta, complete = None, False
            if not complete:
                _err(f"== {variant} seed {seed} -> {run_dir}")
                cfg = protocol_train_config(args, variant, seed, run_dir)
                meta = train(cfg, callback=_progress_printer(cfg))
                if meta["status"] != "completed":
                    raise CLIError(f"{variant} seed {seed} {meta['status']}; rerun to resume")
            views = wanted_views(meta, args.views)
            if recorded_views(meta) != views:
                store_evaluation(str(run_dir), views, args.data_root, args.device)
            ensure_single_view_predictions(str(run_dir), args.data_root)
            if meta is None or "diagnostics" not in meta or not complete:
                diagnose_run(str(run_dir), per_class=args.diagnose_per_class or None)
            m = read_run_json(run_dir)["metrics"]["test"]
            done.append(run_dir)
            _err(
                f"   {variant} s{seed}: accuracy {m['accuracy']:.3f}, macro-F1 "
                f"{m['macro_f1']:.3f}  ({time.perf_counter() - t0:.0f} s so far)"
            )
    _refresh_changes(args.out)
    _err(f"protocol: {len(done)} runs in {time.perf_counter() - t0:.0f} s")
    for d in done:
        print(d)
    return 0


def _refresh_changes(root: str) -> None:
    """Runs diagnosed before their baseline get their conflict change against it now."""
    from .diagnostics.run import refresh_conflict_changes

    for path in refresh_conflict_changes(root):
        _err(f"   updated the conflict change against the baseline of {path}")


def _protocol_parallel(args: argparse.Namespace, variants: list[str], t0: float) -> int:
    """Run ``--jobs`` single-run protocol workers at once, each with cores // jobs threads.

    On a 2-core CPU two 1-thread runs finish about 1.2x more runs per hour than one 2-thread run
    (small convolutions scale poorly across threads). Results depend on the thread count
    (float reductions), so a run reproduces exactly only with the same ``--jobs`` on the same
    number of cores; the count is stored in run.json (runtime.threads). Each worker's progress
    goes to ``<out>/logs/<dataset-key>-<variant>-s<seed>.log``.
    """
    import os
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor

    from .store import RunError, read_run_json, run_dir_for

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    log_dir = Path(args.out) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    tasks = [(v, s) for s in args.seeds for v in variants]

    def worker(task: tuple[str, int]) -> tuple[str, int, int, Path]:
        variant, seed = task
        run_dir = run_dir_for(args.out, args.dataset, variant, seed, args.image_size)
        cmd = [sys.executable, "-m", "csba", "protocol", "--jobs", "1"]
        cmd += ["--dataset", args.dataset, "--variants", variant, "--seeds", str(seed)]
        cmd += ["--out", args.out, "--diagnose-per-class", str(args.diagnose_per_class)]
        cmd += ["--views", str(args.views), *protocol_train_flags(args)]
        log = log_dir / f"{run_dir.parent.name}-{run_dir.name}.log"
        try:
            meta = read_run_json(run_dir)
        except RunError:
            meta = {}
        trained = meta.get("status") == "completed"
        if protocol_complete(meta, args.views):
            return variant, seed, 0, run_dir  # complete: its log stays as it is
        _err(f"== {variant} seed {seed} -> {run_dir} ({threads} thread(s), log {log})")
        # A run that was not completed restarts from scratch, so its log does too.
        with open(log, "a" if trained else "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        return variant, seed, rc, run_dir

    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for variant, seed, rc, run_dir in pool.map(worker, tasks):
            if rc != 0:
                failed.append(f"{variant} s{seed}")
                _err(f"   {variant} s{seed}: failed (exit {rc}); see {log_dir}")
                continue
            m = read_run_json(run_dir)["metrics"]["test"]
            _err(
                f"   {variant} s{seed}: accuracy {m['accuracy']:.3f}, macro-F1 "
                f"{m['macro_f1']:.3f}  ({time.perf_counter() - t0:.0f} s so far)"
            )
            print(run_dir)
    _refresh_changes(args.out)
    if failed:
        raise CLIError(f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun to resume")
    _err(f"protocol: {len(tasks)} runs in {time.perf_counter() - t0:.0f} s with {args.jobs} jobs")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the results of the runs under ROOT (csba.report.write_results): every table to
    --results (default docs/results.md beside the README), a summary into --readme. Prints
    what changed, the verdict and the shipping bar (or one JSON document with --json)."""
    from .report import shipping_bar_parts, write_results

    if (args.bar_accuracy is None) != (args.bar_macro_f1 is None):
        raise CLIError("give both --bar-accuracy and --bar-macro-f1, or neither")
    for flag, value in (
        ("--bar-accuracy", args.bar_accuracy),
        ("--bar-macro-f1", args.bar_macro_f1),
    ):
        if value is not None and not 0.0 <= value <= 1.0:
            raise CLIError(f"{flag} must be in [0, 1], got {value:g}")
    bar = None if args.bar_accuracy is None else (args.bar_accuracy, args.bar_macro_f1)
    info = write_results(
        args.root,
        args.readme,
        dataset=args.dataset,
        image_size=args.image_size,
        n_resamples=args.resamples,
        seed=args.seed,
        bar=bar,
        results_path=args.results,
    )
    if args.json:
        _print_json(info)
        return 0
    runs = ", ".join(f"{v} x{n}" for v, n in info["variants"].items())
    for key, path in (("results_changed", info["results"]), ("changed", info["readme"])):
        state = "updated" if info[key] else "already up to date:"
        print(f"{state} {path} (results of {len(info['runs'])} run(s) of {args.dataset}: {runs})")
    print(info["verdict"]["sentence"])
    if info["bar"]:
        p = shipping_bar_parts(info["bar"])
        print(f"{p['head']}. {p['runs']} {p['variants']}")
    return 0


# ---- parser ----------------------------------------------------------------------------------


EMA_HELP = (
    "moving average of the weights for validation and the kept weights, per step "
    "(0: off, the pinned protocol; 0.998: about 10 ELPV epochs)"
)


def build_parser() -> argparse.ArgumentParser:
    from .models import list_models
    from .train import KEEP_RULES, LR_SCHEDULES, WEIGHT_DTYPES, TrainConfig

    d = TrainConfig()
    graph_arg = dict(
        action=argparse.BooleanOptionalAction,
        default=d.cuda_graph,
        help="on CUDA, capture the training step as a CUDA graph and replay it (falls back to "
        "eager steps if capture fails; default: on)",
    )
    schedule_args = {
        "--lr-schedule": dict(
            choices=LR_SCHEDULES,
            default=d.lr_schedule,
            help="step: StepLR 30 epochs x0.5 (pinned); cosine: anneal to 0 over --epochs "
            "(default %(default)s)",
        ),
        "--keep": dict(
            choices=KEEP_RULES,
            default=d.keep,
            help="best: the best validation macro-F1 with early stopping (pinned); last: the "
            "final epoch's weights, no early stopping (default %(default)s)",
        ),
    }
    weights_dtype_arg = dict(
        choices=tuple(WEIGHT_DTYPES),
        default=d.weights_dtype,
        help="storage of the kept weights (default %(default)s: half the size; the stored "
        "metrics are those of the rounded weights)",
    )
    p = argparse.ArgumentParser(
        prog="python -m csba",
        description="CSBA Explorer: train, evaluate and diagnose multi-branch CNNs under class "
        "imbalance (gradient conflict, class-specific branch attention).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train one variant and store a run folder",
        description="Train one variant with the pinned protocol (DESIGN.md §2) "
        "and store model.safetensors + run.json.",
    )
    t.add_argument(
        "--dataset",
        default=d.dataset,
        metavar="NAME",
        help=f"one of {', '.join(DATASETS)} (default %(default)s: the ELPV solar "
        "cells shipped by the elpv-dataset package)",
    )
    t.add_argument(
        "--variant",
        default=d.variant,
        metavar="NAME",
        help=f"one of {', '.join(list_models())} (default %(default)s)",
    )
    t.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed for initialisation, batch order and augmentation (default 0)",
    )
    t.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help="maximum epochs; early stopping may end sooner (default %(default)s)",
    )
    t.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="square input size in pixels (default %(default)s)",
    )
    t.add_argument(
        "--device",
        default=d.device,
        choices=("auto", "cpu", "cuda"),
        help="auto picks CUDA when present (default %(default)s)",
    )
    t.add_argument(
        "--precision",
        default=d.precision,
        choices=("auto", "bf16", "fp32"),
        help="auto: bfloat16 autocast + channels_last where the hardware supports it "
        "(default %(default)s)",
    )
    t.add_argument(
        "--data-root",
        default=None,
        help="source folder for imagefolder (class folders) or cifar10-lt (CIFAR-10 "
        "batches); not needed for elpv/elpv8",
    )
    t.add_argument(
        "--out",
        default=d.out,
        help="root of run folders: OUT/<dataset>/<variant>-s<seed> (default %(default)s)",
    )
    t.add_argument("--run-dir", default=None, help="exact run folder (overrides --out)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument(
        "--split-seed",
        type=int,
        default=d.split_seed,
        help="seed of the stratified train/val/test split (default %(default)s)",
    )
    t.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="default %(default)s (pinned)"
    )
    t.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default 1e-4)")
    t.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="early-stopping patience in epochs (default %(default)s)",
    )
    t.add_argument(
        "--conflict-every",
        type=int,
        default=d.conflict_every,
        help="record the gradient conflict matrix every N epochs (0: off)",
    )
    t.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        help=EMA_HELP,
    )
    t.add_argument("--weights-dtype", **weights_dtype_arg)
    for flag, kw in schedule_args.items():
        t.add_argument(flag, **kw)
    t.add_argument("--cuda-graph", **graph_arg)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="metrics of a run on a split",
        description="Rebuild a run from its folder and compute accuracy, "
        "balanced accuracy, macro-F1, per-class P/R/F1 and the confusion matrix.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (holding run.json)")
    e.add_argument(
        "--split", default="test", choices=("test", "val", "train"), help="default %(default)s"
    )
    e.add_argument("--data-root", default=None, help="override the run's recorded data root")
    e.add_argument(
        "--views",
        type=int,
        choices=(1, 2, 4, 8),
        default=None,
        help="test-time views averaged (1: plain; 8: flips x 90-degree rotations); default: "
        "those the run's stored metrics used (run.json evaluation.views)",
    )
    e.add_argument("--json", action="store_true", help="print one JSON document")
    e.set_defaults(func=cmd_evaluate)

    g = sub.add_parser(
        "diagnose",
        help="gradient conflict and every diagnostic of the paper",
        description="Compute the Gradient Conflict Matrix (overall and per layer "
        "group), branch specialisation, attention overlap, class-mean angles and "
        "the generalisation gap, and store them in the run folder.",
    )
    g.add_argument("run_dir", metavar="RUN_DIR", help="a run folder")
    g.add_argument("--data-root", default=None, help="override the run's recorded data root")
    g.add_argument(
        "--split",
        default="train",
        choices=("train", "val", "test"),
        help="split the gradients are taken on (default %(default)s)",
    )
    g.add_argument(
        "--per-class",
        type=int,
        default=0,
        help="use at most N images per class (0: the whole split)",
    )
    g.add_argument("--json", action="store_true", help="print one JSON document")
    g.set_defaults(func=cmd_diagnose)

    c = sub.add_parser(
        "compare",
        help="compare runs: per-class tables with bootstrap intervals",
        description="Per-class precision/recall/F1 with bootstrap 95%% intervals, "
        "deltas against the first run, seed aggregates and conflict tables.",
    )
    c.add_argument(
        "run_dirs", metavar="RUN_DIR", nargs="+", help="run folders; the first is the reference"
    )
    c.add_argument("--json", action="store_true", help="print one JSON document")
    c.add_argument("--csv", metavar="DIR", default=None, help="write every table as CSV here")
    c.add_argument("--latex", metavar="DIR", default=None, help="write every table as LaTeX")
    c.add_argument(
        "--figures", metavar="DIR", default=None, help="write figures as PNG and HTML here"
    )
    c.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser(
        "report",
        help="write the results (docs/results.md) and their README summary from a folder of runs",
        description="Aggregate the runs under ROOT (seeds, bootstrap intervals, "
        "conflict) into every results table, written to --results, and a short summary "
        "(verdict, shipping bar, variants table, link) written into the README between "
        "<!-- results:start/end --> markers.",
    )
    r.add_argument("root", metavar="ROOT", help="folder of runs, e.g. checkpoints")
    r.add_argument(
        "--readme", default="README.md", help="README that gets the summary (default %(default)s)"
    )
    r.add_argument(
        "--results",
        metavar="PATH",
        default=None,
        help="Markdown file that gets every table (default: docs/results.md beside the README)",
    )
    r.add_argument("--dataset", default="elpv", help="dataset key (default %(default)s)")
    r.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="only runs at this size (default: the size with the most runs)",
    )
    r.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    r.add_argument(
        "--bar-accuracy",
        type=float,
        default=None,
        metavar="A",
        help="shipping bar (give with --bar-macro-f1): met when no run clearly misses "
        "accuracy A or macro-F1 F (its 95%% bootstrap interval lies wholly below) and every "
        "variant's seed-mean macro-F1 reaches F; the Per run table gives each run's status",
    )
    r.add_argument(
        "--bar-macro-f1", type=float, default=None, metavar="F", help="shipping bar: macro-F1"
    )
    r.add_argument("--json", action="store_true", help="print one JSON document")
    r.set_defaults(func=cmd_report)

    pr = sub.add_parser(
        "protocol",
        help="train and diagnose every variant x seed (resumable)",
        description="The shipped-runs protocol: train and diagnose each variant "
        "for each seed with the pinned protocol; complete runs are skipped, so "
        "an interrupted protocol resumes where it stopped.",
    )
    pr.add_argument("--dataset", default="elpv", help="default %(default)s")
    pr.add_argument("--variants", nargs="+", default=["all"], help="default: all five")
    pr.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    pr.add_argument("--image-size", type=int, default=d.image_size, help="default %(default)s")
    pr.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    pr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    pr.add_argument("--data-root", default=None, help="for imagefolder / cifar10-lt")
    pr.add_argument("--out", default="checkpoints", help="default %(default)s")
    pr.add_argument(
        "--conflict-every",
        type=int,
        default=5,
        help="record the conflict matrix every N epochs (default %(default)s)",
    )
    pr.add_argument(
        "--diagnose-per-class",
        type=int,
        default=0,
        help="images per class for diagnose (0: whole training split)",
    )
    pr.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        help=EMA_HELP,
    )
    pr.add_argument("--weights-dtype", **weights_dtype_arg)
    pr.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default 1e-4)")
    for flag, kw in schedule_args.items():
        pr.add_argument(flag, **kw)
    pr.add_argument("--cuda-graph", **graph_arg)
    pr.add_argument(
        "--views",
        choices=("auto", "1", "2", "4", "8"),
        default="auto",
        help="test-time views behind the stored metrics (default auto: the 8 flips x 90-degree "
        "rotations for EL cells, 4 flips otherwise, as in training augmentation; 1: plain)",
    )
    pr.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each with cores/jobs threads (default %(default)s; "
        "2 is about 1.2x faster on a 2-core CPU)",
    )
    pr.set_defaults(func=cmd_protocol)

    pa = sub.add_parser(
        "pair",
        help="paired comparison of two training protocols (same variants and seeds)",
        description="Pair the runs under ROOT_A (the reference, e.g. the pinned protocol) and "
        "ROOT_B (a candidate) by variant and seed and report B minus A: validation and test "
        "accuracy and macro-F1 per pair, their mean with a t interval over pairs, a paired "
        "bootstrap on the test set, how many runs reach a per-run bar, and whether validation "
        "supports the change (DESIGN.md §2 asks for that before a pinned value moves).",
    )
    pa.add_argument("root_a", metavar="ROOT_A", help="reference runs, e.g. checkpoints")
    pa.add_argument("root_b", metavar="ROOT_B", help="candidate runs, e.g. runs/cosine")
    pa.add_argument("--dataset", default="elpv", help="dataset key (default %(default)s)")
    pa.add_argument(
        "--image-size-a", type=int, default=None, help="size of A's runs (default: most runs)"
    )
    pa.add_argument(
        "--image-size-b", type=int, default=None, help="size of B's runs (default: most runs)"
    )
    pa.add_argument(
        "--bar-accuracy", type=float, default=0.60, help="per-run bar (default %(default)s)"
    )
    pa.add_argument(
        "--bar-macro-f1", type=float, default=0.45, help="per-run bar (default %(default)s)"
    )
    pa.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    pa.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    pa.add_argument("--json", action="store_true", help="print one JSON document")
    pa.set_defaults(func=cmd_pair)

    ls = sub.add_parser("list", help="list the runs found", description="List run folders.")
    ls.add_argument("--root", default="checkpoints", help="default %(default)s")
    ls.add_argument("--json", action="store_true", help="print one JSON document")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    from .store import RunError
    from .train import TrainingStopped

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, RunError, DataError, ImageLoadError, FileNotFoundError) as e:
        _err(f"csba {args.command}: error: {e}")
        return EXIT_USER_ERROR
    except ValueError as e:  # bad option values caught by our own checks (device, precision)
        _err(f"csba {args.command}: error: {e}")
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, TrainingStopped) as e:
        _err(f"csba {args.command}: interrupted{f' ({e})' if str(e) else ''}; nothing saved")
        return 130
