"""Home: the runs found, the dataset's class distribution and the parameter table (Table 2)."""

from pathlib import Path

import streamlit as st

from csba.report import shipping_bar_parts
from csba.store import RunError
from pages.common import (
    NO_RUNS,
    all_runs,
    dataset_name,
    download_df,
    download_fig,
    parameter_table,
    results_summary,
    run_labels,
    runs_root,
    sort_key,
    timm_picker,
)
from pages.fig_runs import (
    class_distribution,
    class_distribution_figure,
    class_distribution_png,
    runs_table,
)

MAX_ERRORS = 10
INTRO = (
    "Multi-branch CNNs under class imbalance: per-class results with bootstrap intervals, "
    "gradient conflict between classes and class-specific branch attention. Every number "
    "below is a point estimate on one test set from one training seed; the **Per-class F1** page "
    "gives their 95% bootstrap intervals and aggregates seeds."
)


def verdict_section(good) -> None:
    """Per dataset with runs under the runs folder: does CSBA beat the baseline (the README's
    verdict, computed from the runs found), the shipping bar (ELPV) and the whole results
    section (docs/results.md) in an expander."""
    root = runs_root().resolve()
    local = [i for i in good if Path(i.path).resolve().is_relative_to(root)]
    for ds in sorted({dataset_name(i.meta) for i in local}):
        try:
            markdown, info = results_summary(ds)
        except (ValueError, RunError) as e:
            st.caption(f"No summary for {ds}: {e}")
            continue
        verdict = info["verdict"]
        icon = ":material/check_circle:" if verdict.get("csba_better") else ":material/balance:"
        st.info(f"**Does CSBA beat the baseline?** {verdict['sentence']}", icon=icon)
        single = info.get("verdict_single_view")
        if single:
            st.info(
                f"**Without test-time views:** {single['sentence']}", icon=":material/looks_one:"
            )
        bar = info.get("bar")
        if bar:
            bar_section(bar)
        more = st.expander(
            f"All results for {ds} ({len(info['runs'])} runs, as in docs/results.md)",
            key=f"home_results_{ds}",
            on_change="rerun",  # built only when opened: dozens of tables for the browser
        )
        if more.open:
            more.markdown(markdown)


def bar_section(bar) -> None:
    """The shipping bar: met or not met, its two parts, then the per-run statuses as detail."""
    parts = shipping_bar_parts(bar)
    n = bar["counts"]
    text = (
        f"**{parts['head']}** (accuracy {bar['accuracy']:.2f}, macro-F1 {bar['macro_f1']:.2f})\n\n"
        f"- **Runs:** {parts['runs']}\n- **Variants:** {parts['variants']}\n\n"
        f"Per-run statuses (detail): {bar['meet']} of {bar['runs']} runs reach both thresholds "
        f"({n['clearly meets']} with both intervals above them); {n['misses within noise']} miss "
        f"within test-set noise and {n['clearly misses']} clearly. The Per run table in the "
        "results below gives each run's interval."
    )
    if parts["met"]:
        st.success(text, icon=":material/check_circle:")
    else:
        st.error(text, icon=":material/cancel:")


def runs_section(good, bad) -> None:
    st.subheader(f"Runs ({len(good)})")
    df = runs_table(good)
    if not df.empty:
        st.dataframe(
            df,
            hide_index=True,
            width="stretch",
            column_config={
                "parameters": st.column_config.NumberColumn(format="localized"),
                "accuracy": st.column_config.NumberColumn(format="%.3f"),
                "macro-F1": st.column_config.NumberColumn(format="%.3f"),
                "minority F1": st.column_config.NumberColumn(
                    format="%.3f", help="Test F1 of the class with the fewest training images"
                ),
                "views": st.column_config.NumberColumn(
                    help="Test-time views averaged for the stored metrics (1: plain forward; "
                    "8: the flips x 90-degree rotations of EL cells; 4: flips)"
                ),
                "protocol": st.column_config.TextColumn(
                    help="Training settings that differ from the pinned protocol "
                    "(docs/design.md §2); 'pinned' when none do"
                ),
                "diagnosed": st.column_config.CheckboxColumn(
                    help="python -m csba diagnose RUN_DIR has been run"
                ),
                "path": st.column_config.TextColumn(width="medium"),
            },
        )
        download_df(df, "runs")
    if bad:
        st.markdown(f"**{len(bad)} run folder(s) could not be read** and are left out everywhere:")
        for i in bad[:MAX_ERRORS]:
            st.error(i.error, icon=":material/error:")
        if len(bad) > MAX_ERRORS:
            st.caption(f"... and {len(bad) - MAX_ERRORS} more.")


def dataset_section(good) -> int | None:
    """Class distribution of one dataset; returns its number of classes."""
    datasets = sorted({dataset_name(i.meta) for i in good})
    st.subheader("Dataset")
    ds = st.selectbox("Dataset", datasets, key="home_dataset") if len(datasets) > 1 else datasets[0]
    runs = [i for i in good if dataset_name(i.meta) == ds]
    latest = max(runs, key=lambda i: str(i.meta.get("created") or ""))
    meta = latest.meta
    dist = class_distribution(meta)
    splits = {
        str((i.meta.get("dataset") or {}).get("split_seed")): run_labels([i])[str(i.path)]
        for i in runs
    }
    info = meta.get("dataset") or {}
    train = dist["train"].dropna()
    ratio = (
        f"{train.max() / train.min():.1f} : 1" if len(train) and train.min() > 0 else "undefined"
    )
    cols = st.columns([3, 2])
    with cols[0]:
        title = f"{ds}: images per class and split"
        st.image(class_distribution_png(dist, title))  # a picture: see the builder
        download_fig(class_distribution_figure(dist, title), f"class_distribution_{ds}")
    with cols[1]:
        shares = ", ".join(f"{c} {v:.0%}" for c, v in zip(dist["class"], dist["train share"]))
        st.caption(
            f"{len(dist)} classes; imbalance (largest / smallest training class) {ratio}; "
            f"training shares: {shares}; split seed {info.get('split_seed', '?')}; fingerprint "
            f"`{str(info.get('fingerprint', '?'))[:12]}`; counts from run "
            f"`{latest.path.parent.name}/{latest.path.name}`."
        )
        table = st.expander("As a table", key="home_dist_table", on_change="rerun")
        if table.open:  # built when opened: each data grid costs the browser a redraw
            table.dataframe(
                dist,
                hide_index=True,
                width="stretch",
                column_config={"train share": st.column_config.NumberColumn(format="percent")},
            )
        download_df(dist, f"class_distribution_{ds}")
        if len(splits) > 1:
            st.warning(
                f"Runs of {ds} use {len(splits)} different split seeds "
                f"({', '.join(sorted(splits))}); their test sets differ and they cannot be "
                "compared pairwise."
            )
    return int(meta.get("num_classes") or len(dist))


@st.fragment  # its widgets rerun this section only, not the runs table and charts above
def parameter_section(num_classes: int | None) -> None:
    box = st.expander(  # open at first when there are no runs: then it is all there is
        "Parameters of every variant (paper Table 2)",
        expanded=num_classes is None,
        key="home_params",
        on_change="rerun",
    )
    if box.open:  # built when opened (a data grid, a model built per variant)
        with box:
            _parameter_table(num_classes)


def _parameter_table(num_classes: int | None) -> None:
    c = num_classes or st.columns(4)[0].number_input(
        "Number of classes", 2, 1000, 4, key="home_classes"
    )
    from csba.backbones import list_backbones

    c1, c2 = st.columns(2)
    others = c1.multiselect(
        "Also on backbones",
        [b for b in list_backbones() if b != "trifire"],
        default=[],
        key="home_backbones",
        help="torchvision backbones (python -m csba train --backbone NAME); counts at the "
        "number of classes above",
    )
    others += timm_picker(c2, "home_timm", multi=True)
    df = parameter_table(int(c), tuple(others))
    st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        column_config={
            col: st.column_config.NumberColumn(format="localized")
            for col in df.columns
            if col in ("parameters", "vs baseline") or col.startswith("on ")
        },
    )
    st.caption(f"Trainable parameters of each registered variant, built for C = {c} classes.")
    download_df(df, f"parameters_C{c}")


def main() -> None:
    st.title("CSBA Explorer")
    st.markdown(INTRO)
    infos = all_runs()
    good = sorted(
        (i for i in infos if i.meta is not None), key=lambda i: (dataset_name(i.meta), sort_key(i))
    )
    bad = [i for i in infos if i.meta is None]
    if not good:
        st.info(NO_RUNS.format(root=runs_root()))
    if good:
        verdict_section(good)
    if good or bad:
        runs_section(good, bad)
    num_classes = dataset_section(good) if good else None
    parameter_section(num_classes)


main()
