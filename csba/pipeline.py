"""The one post-training pipeline (docs/design.md §2, §6): what every trained run goes through,
whether ``protocol`` (serial, its worker processes, Ray tasks), ``jobs`` or the dashboard's
Training page trained it. ``python -m csba train`` stops before it (a trained run folder).

1. evaluate the kept weights with the protocol's test-time views (8 for EL cells, else 4; the
   single-view metrics stay as ``metrics_single_view``), on the device the run trained on;
2. keep the single-view test predictions (``predictions_single_view``);
3. diagnose on the training split (the whole split unless ``per_class`` subsamples it), which
   also writes the run's typicality reference; a run trained just now is always (re)diagnosed,
   an earlier one only when it has no diagnostics yet.
"""

from __future__ import annotations

__all__ = ["after_training"]


def after_training(
    run_dir: str,
    *,
    views: str | int = "auto",
    data_root: str | None = None,
    device: str | None = None,
    per_class: int | None = None,
    trained_now: bool = True,
) -> dict:
    """Evaluate, keep single-view predictions and diagnose one trained run; returns its new
    run.json. ``device``: None = the device it trained on (run.json ``runtime.device``)."""
    from .diagnostics.run import diagnose_run
    from .runs import ensure_single_view_predictions, recorded_views, store_evaluation, wanted_views
    from .store import read_run_json

    run_dir = str(run_dir)
    meta = read_run_json(run_dir)
    device = device or str((meta.get("runtime") or {}).get("device") or "cpu").split(":")[0]
    n = wanted_views(meta, views)
    if recorded_views(meta) != n:
        store_evaluation(run_dir, n, data_root, device)
    ensure_single_view_predictions(run_dir, data_root)
    if trained_now or "diagnostics" not in meta:
        diagnose_run(run_dir, data_root=data_root, per_class=per_class or None)
    return read_run_json(run_dir)
