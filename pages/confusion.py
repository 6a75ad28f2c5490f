"""Confusion matrices of chosen runs side by side, counts or row-normalised, and a difference."""

from functools import partial

import streamlit as st

from pages.common import (
    download_df,
    download_fig,
    plotly_chart,
    run_labels,
    sections,
    select_runs,
)
from pages.confusion_images import cell_images, open_cell
from pages.fig_confusion import confusion_difference, confusion_grid, confusion_long, confusion_of

COLS = 3  # matrices per row


def main() -> None:
    st.title("Confusion matrices")
    st.caption(
        "Rows: true class; columns: predicted class. Row-normalised cells are the share of "
        "each true class (recall on the diagonal), so classes of different sizes compare; "
        "a cell shows the rate (or the count); hover it for both."
    )
    runs = select_runs("confusion")
    if not runs:
        return
    c1, c2 = st.columns([1, 3])
    normalize = c1.toggle("Row-normalised", value=True, key="cm_norm")
    split = c2.radio("Split", ["test", "val"], horizontal=True, key="cm_split")
    labels = run_labels(runs)
    classes = [str(c) for c in runs[0].meta["classes"]]
    mats, infos = {}, {}
    for info in runs:
        name = labels[str(info.path)]
        if [str(c) for c in info.meta["classes"]] != classes:
            st.error(f"{name}: its classes differ from {labels[str(runs[0].path)]}'s; left out")
            continue
        cm = confusion_of(info.meta, split)
        if cm is None or cm.shape != (len(classes), len(classes)):
            st.error(f"{name}: run.json holds no {split} confusion matrix; left out")
            continue
        mats[name], infos[name] = cm, info
    if not mats:
        return
    names = list(mats)
    name, tab = sections(
        SECTIONS, key="cm_section", keep=("cm_a", "cm_b", "cm_true", "cm_pred", "cm_ra", "cm_rb")
    )  # one tab is built
    with tab:
        if name == SECTIONS[0]:
            _matrices(mats, classes, normalize, split)
            cell_images(infos, classes, split)
        else:
            _difference(mats, names, classes, normalize)


SECTIONS = ["Matrices", "Difference of two runs"]


def _matrices(mats, classes, normalize: bool, split: str) -> None:
    zmax = max(float(m.max()) for m in mats.values()) or 1.0  # one count scale for all runs
    # every run in one figure: one chart for the browser to draw instead of one per run
    fig = confusion_grid(mats, classes, normalize=normalize, zmax=zmax, cols=min(COLS, len(mats)))
    plotly_chart(
        fig, width="stretch", key="cm_grid", on_click=partial(open_cell, "cm_grid", classes)
    )
    c1, c2 = st.columns(2)
    with c1:
        download_fig(fig, f"confusion_{split}")
    with c2:
        download_df(confusion_long(mats, classes), f"confusion_{split}")


def _difference(mats, names, classes, normalize: bool) -> None:
    if len(names) < 2:
        st.info("Choose at least two runs in the sidebar to see their difference.")
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("Run A", names, index=len(names) - 1, key="cm_a")
    b = c2.selectbox("minus run B", names, index=0, key="cm_b")
    if a == b:
        st.info("Choose two different runs.")
        return
    fig = confusion_difference(mats[a], mats[b], classes, normalize=normalize, names=(a, b))
    left, right = st.columns([2, 1])
    with left:
        plotly_chart(fig, width="stretch", key="cm_diff")
        download_fig(fig, f"confusion_diff_{a}_minus_{b}")
    with right:
        st.markdown(
            f"Green: **{a}** puts more of the true class (row) in that cell than **{b}**; "
            "purple: less. On the diagonal green means A recalls the class better; off the "
            "diagonal green means A makes that mistake more often. A single test set and "
            "one seed per run: check the **Per-class F1** page for paired bootstrap intervals "
            "before reading a difference as real."
        )


main()
