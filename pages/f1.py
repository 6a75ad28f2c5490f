"""Per-class precision, recall and F1 with bootstrap intervals; deltas against a reference
(paper Tables 7, 12, 13)."""

import pandas as pd
import streamlit as st

from csba.identity import group_label as identity_group_label
from csba.identity import group_names, identity
from csba.stats import BOOT_SEED, DELTA_COLUMNS, N_RESAMPLES
from csba.store import RunError
from pages.common import (
    compare,
    download_df,
    download_fig,
    plotly_chart,
    run_labels,
    sections,
    seed_mean_bootstrap,
    select_runs,
)
from pages.fig_base import fmt_ci
from pages.fig_per_class import METRIC_TITLES, delta_forest, per_class_bars

OVERALL = {"accuracy": "accuracy", "macro_f1": "macro-F1", "balanced_accuracy": "balanced acc."}
METRICS = ["f1", "precision", "recall"]


def group_keys(runs) -> dict[str, str]:
    """Path -> seed-aggregation key: the name of the run's identity (csba.identity: dataset,
    backbone, variant, image size, protocol), the same name ``compare``'s seed table uses."""
    idents = {str(i.path): identity(i.meta) for i in runs}
    names = group_names(list(idents.values()))
    return {p: names[ident] for p, ident in idents.items()}


def group_label(group: str, members: dict, labels: dict) -> str:
    """A seed group's display name: the run's label for one run, else
    ``"baseline (resnet18, 128px; mean of 3 seeds)"``."""
    infos = members[group]
    if len(infos) == 1:
        return labels[str(infos[0].path)]
    idents = {identity(i.meta) for g in members.values() for i in g}
    ident = identity(infos[0].meta)
    clash = any(
        o != ident and o.details() == ident.details() and o.variant == ident.variant for o in idents
    )
    return identity_group_label(ident, len(infos), protocol=clash)


def boot_rows(group: str, classes, boot: dict) -> list[dict]:
    rows = []
    for cname, entry in zip(classes, boot["per_class"]):
        for m in METRICS:
            v, (lo, hi) = entry[m]["value"], entry[m]["ci"]
            rows.append(
                {
                    "group": group,
                    "class": cname,
                    "metric": m,
                    "value": v,
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    return rows


def overall_row(group: str, n_runs: int, boot: dict, seeds_df: pd.DataFrame | None) -> dict:
    row = {"variant / run": group, "runs": n_runs}
    for key, label in OVERALL.items():
        e = boot[key]
        row[label] = fmt_ci(e["value"], *e["ci"])
        if seeds_df is not None and n_runs > 1:
            s = seeds_df[seeds_df["metric"] == key]
            row[f"{label} seed sd"] = f"{float(s['std'].iloc[0]):.3f}" if len(s) else ""
    return row


def _controls(runs, labels) -> tuple[str, int, int, list[str]]:
    """The reference run, resamples, bootstrap seed and metrics (defaults: the report's)."""
    paths = [str(i.path) for i in runs]
    c1, c2, c3, c4 = st.columns([2, 1, 1, 2])
    ref_default = next((k for k, i in enumerate(runs) if i.meta["variant"] == "baseline"), 0)
    ref = c1.selectbox(
        "Reference run (deltas)", paths, index=ref_default, format_func=labels.get, key="f1_ref"
    )
    n_res = c2.select_slider(
        "Resamples",
        [200, 500, 1000, 2000, 5000],
        value=N_RESAMPLES,
        key="f1_nres",
        help=f"{N_RESAMPLES} with seed {BOOT_SEED}, as in docs/results.md (python -m csba report)",
    )
    boot_seed = int(c3.number_input("Bootstrap seed", 0, 2**31 - 1, BOOT_SEED, key="f1_bseed"))
    metrics = c4.multiselect(  # F1 alone by default: a third of the bars for the browser
        "Metrics",
        METRICS,
        default=["f1"],
        format_func=METRIC_TITLES.get,
        key="f1_metrics",
        help="Add precision and recall: one panel each, same runs and intervals",
    ) or ["f1"]
    return ref, n_res, boot_seed, metrics


def _named_tables(cmp: dict, labels: dict) -> dict:
    """compare()'s tables with run names replaced by the pages' labels."""
    name_of = {r.name: labels[str(r.path)] for r in cmp["records"]}
    tables = {k: v.copy() for k, v in cmp["tables"].items()}
    for t in tables.values():
        for col in ("run", "reference"):
            if col in t.columns:
                t[col] = t[col].map(lambda x: name_of.get(x, x))
    tables["per_class_f1"] = tables["per_class_f1"].rename(columns=name_of)
    return tables


def _single_run(label: str, tables: dict) -> tuple[list[dict], dict]:
    """A seed group of one run: its own bars and overall row."""
    pc, summary = tables["per_class"], tables["summary"]
    sub = pc[pc["run"] == label].assign(group=label)
    rows = sub[["group", "class", "metric", "value", "ci_low", "ci_high"]].to_dict("records")
    srow = summary[summary["run"] == label].iloc[0]
    overall = {"variant / run": label, "runs": 1} | {
        lab: fmt_ci(srow[k], srow[f"{k}_ci_low"], srow[f"{k}_ci_high"])
        for k, lab in OVERALL.items()
    }
    return rows, overall


def _aggregated(members, labels, tables, classes, n_res, boot_seed):
    """Bars, seed points and overall rows of the seed groups (a group's mean over its seeds)."""
    rows, points, overall = [], [], []
    seeds_df, pc = tables["seeds"], tables["per_class"]
    for group, infos in members.items():
        if len(infos) == 1:
            one_rows, one_overall = _single_run(labels[str(infos[0].path)], tables)
            rows += one_rows
            overall.append(one_overall)
            continue
        label = group_label(group, members, labels)
        try:
            boot = seed_mean_bootstrap(infos, n_res, boot_seed)
        except (RunError, ValueError, KeyError) as e:
            st.error(f"{group}: cannot aggregate seeds ({e})")
            continue
        rows.extend(boot_rows(label, classes, boot))
        gseeds = seeds_df[seeds_df["variant"] == group] if not seeds_df.empty else None
        overall.append(overall_row(label, len(infos), boot, gseeds))
        for i in infos:
            for r in pc[pc["run"] == labels[str(i.path)]].to_dict("records"):
                points.append(
                    {k: r[k] for k in ("class", "metric", "value")}
                    | {"group": label, "seed": i.meta["config"].get("seed")}
                )
    return pd.DataFrame(rows), pd.DataFrame(points), pd.DataFrame(overall)


def _per_run(tables) -> tuple[pd.DataFrame, None, pd.DataFrame]:
    """Bars and overall rows of every run on its own."""
    overall = [
        {"variant / run": r["run"], "seed": r["seed"], "test n": r["n"]}
        | {lab: fmt_ci(r[k], r[f"{k}_ci_low"], r[f"{k}_ci_high"]) for k, lab in OVERALL.items()}
        for _, r in tables["summary"].iterrows()
    ]
    return tables["per_class"].rename(columns={"run": "group"}), None, pd.DataFrame(overall)


def main() -> None:
    st.title("Per-class precision, recall and F1")
    st.caption(
        "Point estimates on the test set with stratified percentile-bootstrap 95% intervals "
        "(resampling test images within each true class). Deltas use the paired bootstrap: "
        "both runs are scored on the same resampled images."
    )
    runs = select_runs("f1", default_all=True)
    if not runs:
        return
    labels = run_labels(runs)
    ref, n_res, boot_seed, metrics = _controls(runs, labels)
    keys = group_keys(runs)
    members: dict[str, list] = {}
    for i in runs:
        members.setdefault(keys[str(i.path)], []).append(i)
    aggregate = any(len(v) > 1 for v in members.values()) and st.toggle(
        "Aggregate seeds (mean over the seeds of each variant, backbone and image size)",
        value=True,
        key="f1_agg",
        help="Bars: mean over seeds with the bootstrap interval of that mean (test-set "
        "uncertainty); circles: the individual seeds (seed-to-seed spread).",
    )
    ordered = [ref] + [str(i.path) for i in runs if str(i.path) != ref]
    try:
        cmp = compare(ordered, n_resamples=n_res, seed=boot_seed)
    except (RunError, ValueError) as e:
        st.error(str(e).splitlines()[0])
        return
    classes = [str(c) for c in cmp["records"][0].classes]
    tables = _named_tables(cmp, labels)
    if aggregate:
        bars, points_df, overall_df = _aggregated(
            members, labels, tables, classes, n_res, boot_seed
        )
    else:
        bars, points_df, overall_df = _per_run(tables)
    name, tab = sections(SECTIONS, key="f1_section")  # only the open tab is built
    with tab:
        if name == SECTIONS[0]:
            summary = tables["summary"]
            _scores(overall_df, summary, bars, classes, metrics, points_df, aggregate, tables)
        else:
            boot = (n_res, boot_seed)
            _deltas(tables, (ref, keys[ref]), aggregate, members, labels, classes, metrics, *boot)


SECTIONS = ["Scores", "Differences against the reference"]


def _scores(overall_df, summary, bars, classes, metrics, points_df, aggregate, tables) -> None:
    st.subheader("Overall")
    st.dataframe(
        overall_df.fillna(""),
        hide_index=True,
        width="stretch",
        column_config={
            c: st.column_config.TextColumn(help="Standard deviation over seeds (ddof=1)")
            for c in overall_df.columns
            if c.endswith("seed sd")
        },
    )
    download_df(summary, "summary_with_intervals")

    st.subheader("Per class")
    fig = per_class_bars(
        bars,
        classes,
        metrics,
        points=points_df,
        title="Per-class scores with 95% bootstrap intervals"
        + (" (seed means; circles: single seeds)" if aggregate else ""),
    )
    plotly_chart(fig, width="stretch", key="f1_bars")
    download_fig(fig, "per_class_bars")
    table = st.expander("Table (paper Tables 7, 12, 13)", key="f1_table", on_change="rerun")
    if table.open:  # built only when opened
        with table:
            st.dataframe(tables["per_class_f1"], hide_index=True, width="stretch")
            download_df(tables["per_class_f1"], "per_class_f1")
            download_df(bars, "per_class_long")


def _deltas(tables, reference, aggregate, members, labels, classes, metrics, n_res, boot_seed):
    """Deltas against the reference run (path, its seed group): forest plot and table."""
    ref, ref_group = reference
    deltas = tables["deltas"]
    aggregated_deltas = aggregate and len(members) > 1 and len(members[ref_group]) >= 1
    st.subheader(
        f"Differences against {group_label(ref_group, members, labels)}"
        if aggregated_deltas
        else f"Differences against {labels[ref]}"
    )
    if aggregated_deltas:
        rows = []
        for group, infos in members.items():
            if group == ref_group:
                continue
            try:
                d = seed_mean_bootstrap(infos, n_res, boot_seed, reference=members[ref_group])
            except (RunError, ValueError, KeyError) as e:
                st.error(f"{group}: {e}")
                continue
            name = group_label(group, members, labels)
            refname = group_label(ref_group, members, labels)
            for k in OVERALL:
                rows.append((name, refname, "(overall)", k, d[k]))
            for cname, e in zip(classes, d["per_class"]):
                for m in METRICS:
                    rows.append((name, refname, cname, m, e[m]))
        deltas = pd.DataFrame(
            [
                {
                    "run": a,
                    "reference": b,
                    "class": c,
                    "metric": m,
                    "delta": e["value"],
                    "ci_low": e["ci"][0],
                    "ci_high": e["ci"][1],
                    "significant": e["ci"][0] > 0 or e["ci"][1] < 0,
                }
                for a, b, c, m, e in rows
            ],
            columns=DELTA_COLUMNS,
        )
        st.caption(
            f"Seed means against the mean over the {len(members[ref_group])} seed(s) of "
            f"**{group_label(ref_group, members, labels)}**, paired over the same resampled "
            "test images."
        )
    if deltas.empty:
        st.info("Choose at least two runs to see differences.")
        return
    forest_metric = st.radio(
        "Metric", METRICS, horizontal=True, format_func=METRIC_TITLES.get, key="f1_forest"
    )
    fig = delta_forest(
        deltas[deltas["class"] != "(overall)"],
        forest_metric,
        title=f"Δ {METRIC_TITLES[forest_metric]} with paired 95% intervals",
    )
    plotly_chart(fig, width="stretch", key="f1_forest_fig")
    download_fig(fig, f"delta_{forest_metric}")
    shown = deltas[deltas["metric"].isin(metrics + list(OVERALL))].copy()
    shown["metric"] = shown["metric"].map(lambda m: OVERALL.get(m, METRIC_TITLES.get(m, m)))
    shown["Δ [95% CI]"] = [
        fmt_ci(r.delta, r.ci_low, r.ci_high, signed=True) for r in shown.itertuples()
    ]
    st.dataframe(
        shown[["run", "reference", "class", "metric", "Δ [95% CI]", "significant"]],
        hide_index=True,
        width="stretch",
    )
    n_tests = len(shown)
    st.caption(
        f"'significant': the 95% interval excludes 0. {n_tests} intervals are shown, so about "
        f"{0.05 * n_tests:.1f} would exclude 0 by chance alone even with no real difference; "
        "read a single significant cell with care, and prefer effects that hold across seeds."
    )
    download_df(deltas, "deltas")


main()
