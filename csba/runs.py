"""Services on run folders (docs/design.md §5): a run with its dataset rebuilt, its stored
evaluation (test-time views) and whether the protocol has anything left to do for it.

Used by the command line, the protocol runner (:mod:`csba.protocol`), the dashboard's jobs
(:mod:`csba.jobs`), diagnose and the benchmarks; user errors raise :class:`csba.store.RunError`.
"""

from __future__ import annotations

import warnings

from .store import RunError

__all__ = [
    "ensure_single_view_predictions",
    "load_run_and_data",
    "protocol_complete",
    "recorded_views",
    "store_evaluation",
    "wanted_views",
]


def load_run_and_data(run_dir: str, data_root: str | None = None):
    """A run (:class:`csba.store.Run`) plus its dataset rebuilt from run.json (same size, split
    seed and source) as ``(run, bundle)``.

    Raises RunError when the dataset's classes differ from the run's; warns (UserWarning) when
    the source's fingerprint differs from the one recorded at training time.
    """
    from .data import load_dataset, with_normalisation
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
    if cfg.get("pretrained"):  # normalised as in training: ImageNet statistics
        bundle = with_normalisation(bundle, ds["mean"], ds["std"])
    if ds.get("label_noise"):  # the training labels the run was trained on (csba.noise)
        from .noise import apply_recorded_noise

        try:
            bundle = apply_recorded_noise(bundle, ds["label_noise"])
        except ValueError as e:
            raise RunError(f"'{run.path}': {e}") from None
    if bundle.classes != run.classes:
        raise RunError(
            f"'{run.path}': the run's classes {run.classes} differ from the dataset's "
            f"{bundle.classes}"
        )
    if bundle.fingerprint != ds.get("fingerprint"):
        warnings.warn(
            f"the {ds['name']} source differs from the one this run was trained on",
            stacklevel=2,
        )
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
    run_dir: str,
    views: int,
    data_root: str | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Recompute a run's stored val/test metrics and test predictions with ``views`` test-time
    views (float32; see :func:`csba.evaluate.predict`) and record ``evaluation.views``.

    The single-view metrics that training stored are kept under ``metrics_single_view``, so
    both stay in run.json. ``device``: where to compute (the protocol passes its training
    device: on an H100 the 8 views of a 224 px run take seconds, on 3 CPU threads over 100 s).
    ``progress``: tqdm bars on stderr. Returns the new test metrics.
    """
    from .evaluate import evaluate_split, prediction_record
    from .store import update_run_json
    from .train import resolve_device

    run, bundle = load_run_and_data(run_dir, data_root)
    args = (bundle.classes, bundle.mean, bundle.std)
    dev = resolve_device(device)
    run.model.to(dev)
    bars = ("evaluate test", "evaluate val") if progress else (None, None)
    test, probs = evaluate_split(
        run.model, bundle.test, *args, views=views, device=dev, progress=bars[0]
    )
    val, _ = evaluate_split(run.model, bundle.val, *args, views=views, device=dev, progress=bars[1])
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
    were kept; the recomputed single-view metrics must equal ``metrics_single_view`` exactly
    (RunError otherwise). Returns True when something was stored."""
    from .evaluate import evaluate_split, prediction_record
    from .store import read_run_json, update_run_json

    meta = read_run_json(run_dir)
    if recorded_views(meta) == 1 or "predictions_single_view" in meta:
        return False
    run, bundle = load_run_and_data(run_dir, data_root)
    test, probs = evaluate_split(run.model, bundle.test, bundle.classes, bundle.mean, bundle.std)
    stored = (meta.get("metrics_single_view") or {}).get("test")
    if stored is not None and stored != test:
        raise RunError(f"'{run_dir}': single-view test metrics do not reproduce the stored ones")
    fields = {"predictions_single_view": {"test": prediction_record(bundle.test.labels, probs)}}
    if stored is None:
        val, _ = evaluate_split(run.model, bundle.val, bundle.classes, bundle.mean, bundle.std)
        fields["metrics_single_view"] = {"test": test, "val": val}
    update_run_json(run.path, **fields)
    return True
