"""Command line (docs/design.md §6): ``python -m csba train|evaluate|diagnose|compare|report|
protocol|pair|list``.

Only argument parsing and printing live here; the work is done by the library (csba.train,
csba.runs, csba.protocol, csba.diagnostics, csba.report, csba.paired), and nothing in the package
imports this module. The training options come from :mod:`csba.options` (TrainConfig's fields).

Errors a user can cause (wrong dataset, missing data root, a folder that is not a run, a damaged
checkpoint) print one line on stderr and exit with status 2, without a traceback. ``--json``
prints exactly one JSON document on stdout; progress bars (tqdm) and log lines go to stderr
(``TQDM_DISABLE=1`` silences the bars).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
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


def _resolve_variant(variant: str, head: str | None, method: str | None) -> str:
    """``--variant`` (a preset or HEAD+METHOD) with ``--head`` / ``--method`` replacing its
    parts, under its canonical name (a pair equal to a preset takes the preset's name)."""
    from .models import parse_variant, variant_name

    try:
        v_head, v_method = parse_variant(variant)
        return variant_name(head or v_head, method or v_method)
    except ValueError as e:
        raise CLIError(str(e)) from None


def cmd_train(args: argparse.Namespace) -> int:
    from .options import check_values, config_from_args, train_options
    from .protocol import epoch_logger
    from .store import config_run_dir
    from .train import train

    if args.dataset not in DATASETS:
        raise CLIError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    args.variant = _resolve_variant(args.variant, args.head, args.method)
    check_values(vars(args))
    cfg = config_from_args(args, [o.name for o in train_options()])
    run_dir = config_run_dir(cfg)
    if (run_dir / "run.json").exists() and not args.overwrite and not cfg.resume:
        raise CLIError(f"'{run_dir}' already holds a run; pass --overwrite or choose --out")
    cfg.run_dir = str(run_dir)

    from .distributed import DistConfig, torchrun_session
    from .train import resolve_device

    dist_cfg = DistConfig(sync_batchnorm=args.sync_bn)
    with torchrun_session("train", resolve_device(cfg.device), dist_cfg) as dist:
        main = dist is None or dist.is_main  # under torchrun only rank 0 logs and prints
        meta = train(cfg, callback=epoch_logger(cfg) if main else None, dist=dist)
    if not main:
        return 0 if meta["status"] != "interrupted" else 130
    t = meta["metrics"]["test"]
    _err(
        f"{meta['status']}: kept epoch {meta['best_epoch']} of {meta['epochs_run']} "
        f"({meta['stop_reason']}); test accuracy {t['accuracy']:.3f}, macro-F1 {t['macro_f1']:.3f}"
    )
    print(meta["run_dir"])
    return 0 if meta["status"] != "interrupted" else 130


# ---- evaluate --------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_split
    from .runs import load_run_and_data, recorded_views

    run, bundle = load_run_and_data(args.run_dir, args.data_root)
    views = recorded_views(run.meta) if args.views is None else args.views
    metrics, _ = evaluate_split(
        run.model,
        bundle.split(args.split),
        bundle.classes,
        bundle.mean,
        bundle.std,
        views=views,
        progress=f"evaluate {args.split} ({views} view{'s' if views > 1 else ''})",
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


# ---- diagnose / compare / pair --------------------------------------------------------------


def _print_diagnosis(out: dict, run_dir: str) -> None:
    gcm = out["gcm"]
    names = gcm["classes"]
    width = max(8, *(len(n) for n in names))

    def fmt(v: float | None) -> str:
        return "   nan" if v is None else f"{v:+.3f}"

    print(f"{run_dir}: gradient conflict on the {out['split']} split, counts {gcm['counts']}")
    print(" " * width + " " + " ".join(f"{n[:6]:>6}" for n in names))
    for name, row in zip(names, gcm["matrix"], strict=True):
        print(f"{name:>{width}} " + " ".join(fmt(v) for v in row))
    print(f"mean {fmt(gcm['mean'])}  std {fmt(gcm['std'])}")
    for p in gcm["most_adversarial"][:3]:
        print(f"  {p['classes'][0]} vs {p['classes'][1]}: {fmt(p['cos'])}")
    if out["layers"]:
        print(
            "per layer group mean: "
            + ", ".join(f"{g} {fmt(v['mean'])}" for g, v in out["layers"].items())
        )
    if out["branches"]:
        print("branch gradient shares (rows: classes):")
        for name, row in zip(names, out["branches"]["shares"], strict=True):
            print(
                f"  {name:>{width}} " + " ".join("  nan" if v is None else f"{v:.2f}" for v in row)
            )
    if out["attention"]:
        jac = out["attention"]["jaccard"]
        k = len(jac)
        pairs = [jac[a][b] for a in range(k) for b in range(a + 1, k) if jac[a][b] is not None]
        if pairs:
            print(f"attention top-10% Jaccard between branches: mean {sum(pairs) / len(pairs):.3f}")
    angles = out["class_angles"]
    if angles["mean"] is not None:
        print(f"class-mean angle of GAP(Z): mean {angles['mean']:.1f} degrees")
    if out["generalisation_gap"] is not None:
        gap = out["generalisation_gap"]
        print(f"generalisation gap (val - train loss at the kept epoch): {gap:.4f}")
    if out["conflict_change"] is not None:
        print(f"mean conflict change against the baseline: {out['conflict_change']:+.3f}")
    print(f"stored under 'diagnostics' in {Path(run_dir) / 'run.json'}")


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnostics.run import diagnose_run
    from .distributed import torchrun_session
    from .train import resolve_device

    if args.per_class < 0:
        raise CLIError(f"--per-class must be 0 or more, got {args.per_class}")
    if args.scores_only:
        from .diagnostics.scoring import score_run

        print(score_run(args.run_dir, data_root=args.data_root, progress=True))
        return 0
    # under torchrun the conflict matrix's per-class gradient sums are split over the ranks
    with torchrun_session("diagnose", resolve_device("auto")) as dist:
        out = diagnose_run(
            args.run_dir,
            data_root=args.data_root,
            split=args.split,
            per_class=args.per_class or None,
            progress=dist is None or dist.is_main,
            device=None if dist is None else dist.device,
            store=dist is None or dist.is_main,
            distributed=dist is not None,
            scores=args.scores,
        )
        if dist is not None and not dist.is_main:
            return 0
    if args.json:
        _print_json(out)
    else:
        _print_diagnosis(out, args.run_dir)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare run folders (csba.report.compare_runs): readable tables, or one JSON document
    on stdout with ``--json``; files written with --csv/--latex/--figures are listed (on
    stderr with --json). A tqdm bar on stderr follows the bootstraps."""
    from .progress import progress_bar
    from .report import compare_runs, format_comparison, write_figures, write_tables

    with progress_bar(desc="compare: bootstrap", unit="run") as bar:

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
    """``python -m csba pair ROOT_A ROOT_B``: see :func:`csba.paired.compare_protocols`."""
    from .paired import compare_protocols, format_protocols

    result = compare_protocols(
        args.root_a,
        args.root_b,
        dataset=args.dataset,
        image_size_a=args.image_size_a,
        image_size_b=args.image_size_b,
        bar=(args.bar_accuracy, args.bar_macro_f1),
        n_resamples=args.resamples,
        seed=args.seed,
    )
    if args.json:
        _print_json(result)
    else:
        print(format_protocols(result))
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    """Train + diagnose every variant x seed, skipping runs already complete (resumable)."""
    from .cluster import RayConfig
    from .options import PROTOCOL_OPTIONS
    from .protocol import ProtocolError, run_protocol

    try:
        done = run_protocol(
            {n: getattr(args, n) for n in PROTOCOL_OPTIONS},
            args.variants,
            args.seeds,
            views=args.views,
            diagnose_per_class=args.diagnose_per_class,
            jobs=args.jobs,
            progress=args.progress,
            backend=args.backend,
            threads=args.threads,
            ray=RayConfig(
                address=args.address,
                storage=args.ray_storage,
                gpus=args.ray_gpus,
                retries=args.ray_retries,
            ),
        )
    except ProtocolError as e:
        for d in e.done:
            print(d)
        raise CLIError(str(e)) from None
    for d in done:
        print(d)
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


def cmd_parts(args: argparse.Namespace) -> int:
    """``python -m csba parts``: the registries and presets (csba.parts)."""
    from .parts import format_parts, parts

    if args.json:
        _print_json(parts())
    else:
        print(format_parts(parts()))
    return 0


# ---- parser ----------------------------------------------------------------------------------


def _add_train_parser(sub) -> None:
    from .heads import list_heads
    from .methods import list_methods
    from .options import add_train_options

    t = sub.add_parser(
        "train",
        help="train one variant and store a run folder",
        description="Train one variant with the pinned protocol (docs/design.md §2) "
        "and store model.safetensors + run.json.",
    )
    add_train_options(t)  # every TrainConfig option, help from its field
    t.add_argument(
        "--head",
        default=None,
        metavar="HEAD",
        help="classifier topology, replacing the variant's: one of " + ", ".join(list_heads()),
    )
    t.add_argument(
        "--method",
        default=None,
        metavar="METHOD",
        help="training recipe, replacing the variant's: one of " + ", ".join(list_methods()),
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="under torchrun on CUDA, BatchNorm statistics over the global batch "
        "(SyncBatchNorm; default: on; the CPU keeps per-process statistics)",
    )
    t.set_defaults(func=cmd_train)


def _add_diagnose_parser(sub) -> None:
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
    g.add_argument(
        "--no-scores",
        dest="scores",
        action="store_false",
        help="skip the per-example scores (example_scores.safetensors: every training and "
        "test image's alignment with each class, self-influence and confidence)",
    )
    g.add_argument(
        "--scores-only",
        action="store_true",
        help="only write the per-example scores of an already diagnosed run, from its stored "
        "diagnosis settings (run.json and every other file stay as they are)",
    )
    g.add_argument("--json", action="store_true", help="print one JSON document")
    g.set_defaults(func=cmd_diagnose)


def _add_parts_parser(sub) -> None:
    pt = sub.add_parser(
        "parts",
        help="list backbones, heads, methods and presets",
        description="The three registries a run combines (backbone, head, method) and the "
        "ten presets (named head x method pairs). Any head trains with any method: "
        "--head H --method M, or --variant H+M.",
    )
    pt.add_argument("--json", action="store_true", help="print one JSON document")
    pt.set_defaults(func=cmd_parts)


def build_parser() -> argparse.ArgumentParser:
    from .options import PROTOCOL_OPTIONS, add_train_options

    p = argparse.ArgumentParser(
        prog="python -m csba",
        description="CSBA Explorer: train, evaluate and diagnose multi-branch CNNs under class "
        "imbalance (gradient conflict, class-specific branch attention).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_train_parser(sub)

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

    _add_diagnose_parser(sub)

    c = sub.add_parser(
        "compare",
        help="compare runs: per-class tables with bootstrap intervals",
        description="Per-class precision/recall/F1 with bootstrap 95% intervals, "
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
    pr.add_argument("--variants", nargs="+", default=["all"], help="default: all five")
    pr.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    # The same training options as `train` (but variant, seed and run folder, set per run);
    # the conflict matrix is recorded every 5 epochs for the Gradient conflict page.
    add_train_options(pr, PROTOCOL_OPTIONS, defaults={"conflict_every": 5})
    pr.add_argument(
        "--diagnose-per-class",
        type=int,
        default=0,
        help="images per class for diagnose (0: whole training split)",
    )
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
    pr.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per run, for both backends (default: cores/jobs; 1 on Ray); the same "
        "seed and threads give the same run through either",
    )
    pr.add_argument(
        "--backend",
        choices=("jobs", "ray"),
        default="jobs",
        help="jobs: a process pool on this machine (--jobs); ray: one Ray task per run, on a "
        "local instance or a cluster (--address; pip install -r requirements-scale.txt; "
        "docs/scale.md) (default %(default)s)",
    )
    pr.add_argument(
        "--address",
        default=None,
        metavar="auto|ray://HOST:PORT",
        help="Ray cluster to join (default: start a local Ray instance)",
    )
    pr.add_argument(
        "--ray-storage",
        choices=("shared", "return"),
        default="shared",
        help="shared: the runs root is a file system every worker sees at the same path; "
        "return: workers send each run folder back and this process writes it "
        "(default %(default)s)",
    )
    pr.add_argument(
        "--ray-gpus",
        type=float,
        default=0.0,
        metavar="F",
        help="GPUs per Ray run, a fraction shares one (0.25: four runs per GPU; default 0)",
    )
    pr.add_argument(
        "--ray-retries",
        type=int,
        default=3,
        metavar="N",
        help="retries of a Ray run whose worker dies; it resumes from its last finished "
        "epoch (default %(default)s)",
    )
    pr.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress bar over the runs on stderr (default: on)",
    )
    pr.set_defaults(func=cmd_protocol)

    pa = sub.add_parser(
        "pair",
        help="paired comparison of two training protocols (same variants and seeds)",
        description="Pair the runs under ROOT_A (the reference, e.g. the pinned protocol) and "
        "ROOT_B (a candidate) by variant and seed and report B minus A: validation and test "
        "accuracy and macro-F1 per pair, their mean with a t interval over pairs, a paired "
        "bootstrap on the test set, how many runs reach a per-run bar, and whether validation "
        "supports the change (docs/design.md §2 asks for that before a pinned value moves).",
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

    _add_parts_parser(sub)

    ls = sub.add_parser("list", help="list the runs found", description="List run folders.")
    ls.add_argument("--root", default="checkpoints", help="default %(default)s")
    ls.add_argument("--json", action="store_true", help="print one JSON document")
    ls.set_defaults(func=cmd_list)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _err(f"warning: {message}")


def _run(args: argparse.Namespace) -> int:
    """Run the chosen command; user errors become one line on stderr and exit status 2."""
    from .store import RunError
    from .train import TrainingStopped

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m csba`` and the ``csba`` console script; returns the exit
    status."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line, no source location
        return _run(args)
