"""Attention: per-branch, per-class mean attention, branch overlap and class-mean angles."""

import numpy as np
import pandas as pd
import streamlit as st

from csba.diagnostics import off_diagonal_stats
from csba.heads import get_head
from csba.identity import head_and_method
from csba.models import gated_variants, list_models
from pages.common import (
    diagnostics_of,
    download_df,
    download_fig,
    plotly_chart,
    run_labels,
    sections,
    select_runs,
)
from pages.fig_attention import angle_heatmap, attention_heatmaps, overlap_heatmap
from pages.fig_base import as_array, as_matrix, matrix_frame, number

ATTENTION_VARIANTS = tuple(gated_variants())  # ("csba", "class_heads") today


def intro_text() -> str:
    """Which registered variants have attention, from the registry (so none is left out)."""
    gated = " and ".join(f"**{v}**" for v in ATTENTION_VARIANTS)
    others = ", ".join(v for v in list_models() if v not in ATTENTION_VARIANTS)
    return (
        f"Only {gated} have attention (squeeze-excitation gates: one per branch in csba, one "
        f"per class head in class_heads), with any method (csba+ldam_drw too). The other "
        f"variants ({others}) have none, so only their class-mean angles are shown."
    )


def _gated(meta: dict) -> bool:
    """The run's head has attention gates (csba.heads), whatever its method."""
    head = head_and_method(meta)[0]
    return bool(head) and get_head(head).cls.gated


COLS = 3


def branch_names(meta: dict, k: int) -> list[str]:
    classes = [str(c) for c in meta["classes"]]
    if head_and_method(meta)[0] == "class_heads" and k == len(classes):
        return [f"head {c}" for c in classes]
    return [f"branch {b + 1}" for b in range(k)]


def attention_of(meta: dict) -> dict | None:
    att = (diagnostics_of(meta) or {}).get("attention")
    if not isinstance(att, dict):
        return None
    mean = as_array(att.get("mean"))
    if mean is None or mean.ndim != 3 or mean.shape[0] != len(meta["classes"]):
        return None
    return {**att, "mean_arr": mean}


def attention_section(with_att, labels) -> None:
    st.subheader("Mean attention per class and branch")
    names = {labels[str(i.path)]: i for i in with_att}
    c1, c2, c3 = st.columns([2, 3, 2])
    name = c1.selectbox("Run", list(names), key="att_run")
    info = names[name]
    att = attention_of(info.meta)
    mean = att["mean_arr"]  # (C, K, D)
    d = mean.shape[2]
    spread = np.nan_to_num(np.nanstd(mean, axis=0).max(axis=0))  # (D,) across classes
    options = ["all", "64", "128", "256"]
    choices = [o for o in options if o == "all" or int(o) < d]
    shown = c2.radio(
        "Channels",
        choices,
        index=choices.index("64") if "64" in choices else 0,
        horizontal=True,
        key="att_channels",
        format_func=lambda o: f"all {d}" if o == "all" else f"{o} most class-dependent",
        help="Most class-dependent: largest spread of the class means, in any branch.",
    )
    deviation = c3.toggle(
        "Class-specific part",
        key="att_dev",
        help="Show each class's attention minus the branch's mean over classes: what is "
        "specific to a class.",
    )
    channels = np.arange(d) if shown == "all" else np.sort(np.argsort(-spread)[: int(shown)])
    classes = [str(c) for c in info.meta["classes"]]
    bnames = branch_names(info.meta, mean.shape[1])
    fig = attention_heatmaps(
        mean,
        classes,
        channels,
        title=f"{name}: mean attention" + (" minus the class average" if deviation else ""),
        branch_names=bnames,
        deviation=deviation,
    )
    plotly_chart(fig, width="stretch", key="att_heat")
    download_fig(fig, f"attention_{name}")
    rows = [
        {"class": c, "branch": bnames[b], **{f"ch{j}": mean[ci, b, j] for j in range(d)}}
        for ci, c in enumerate(classes)
        for b in range(mean.shape[1])
    ]
    download_df(pd.DataFrame(rows), f"attention_{name}")
    st.caption(
        "Each row is the mean gate value over the training images of one class "
        f"(counts: {', '.join(f'{c} {n}' for c, n in zip(classes, att.get('counts') or []))}). "
        "Rows that differ within a panel mean the branch attends to different channels for "
        "different classes. The colour range spans the values shown, not 0 to 1."
    )


def overlap_section(with_att, labels) -> None:
    st.subheader("Branch overlap")
    first = with_att[0].meta
    frac = number(attention_of(first).get("top_fraction"))
    pct = f"{100 * frac:.0f}%" if np.isfinite(frac) else "top"
    st.caption(
        f"Jaccard: overlap of each pair of branches' top-{pct} channels; cosine: similarity of "
        "their mean attention vectors. 1 on the whole matrix = the branches attend alike."
    )
    classes = [str(c) for c in first["classes"]]
    which = st.selectbox(
        "Attention averaged over", ["all classes", *classes], key="att_overlap_class"
    )
    for info in with_att:
        name = labels[str(info.path)]
        att = attention_of(info.meta)
        cols = st.columns(2)
        for col, (key, what) in zip(cols, (("jaccard", "Jaccard"), ("cosine", "cosine"))):
            if which == "all classes":
                m = as_matrix(att.get(key))
            else:
                per = as_array(att.get(f"{key}_per_class"))
                ci = [str(c) for c in info.meta["classes"]].index(which)
                m = per[ci] if per is not None and per.ndim == 3 else None
            with col:
                if m is None:
                    st.info(f"{name}: no {what} overlap stored.")
                    continue
                fig = overlap_heatmap(
                    m,
                    title=f"{name}: {what} ({which})",
                    what=what,
                    branch_names=branch_names(info.meta, len(m)),
                )
                plotly_chart(fig, width="stretch", key=f"ov_{key}_{name}")
                download_fig(fig, f"overlap_{key}_{name}")


def angles_section(diagnosed, labels) -> None:
    st.subheader("Angles between class means")
    st.caption(
        "Angle in degrees between the mean feature vectors (global-average-pooled backbone "
        "output) of two classes on the training split: larger = better separated classes."
    )
    mats = {}
    for i in diagnosed:
        ang = (diagnostics_of(i.meta) or {}).get("class_angles")
        m = as_matrix(ang.get("matrix")) if isinstance(ang, dict) else None
        if m is not None and m.shape[0] == len(i.meta["classes"]):
            mats[labels[str(i.path)]] = (m, [str(c) for c in i.meta["classes"]])
    if not mats:
        st.info("No class-mean angles stored in the diagnosed runs chosen.")
        return
    zmax = max(float(np.nanmax(m)) if np.isfinite(m).any() else 0 for m, _ in mats.values())
    zmax = max(zmax, 1.0)
    names = list(mats)
    rows = []
    for start in range(0, len(names), COLS):
        for col, name in zip(st.columns(COLS), names[start : start + COLS]):
            m, classes = mats[name]
            mean, _ = off_diagonal_stats(m)
            with col:
                fig = angle_heatmap(m, classes, title=name, zmax=zmax)
                plotly_chart(fig, width="stretch", key=f"ang_{name}")
                st.caption(f"mean off-diagonal angle **{mean:.1f}°**")
                download_fig(fig, f"class_angles_{name}")
            rows.append(
                matrix_frame(m, classes, classes)
                .rename_axis("class")
                .reset_index()
                .assign(run=name)
            )
    download_df(pd.concat(rows), "class_angles")


SECTIONS = ["Attention per class and branch", "Branch overlap", "Angles between class means"]


def main() -> None:
    st.title("Attention")
    st.caption(intro_text())
    runs = select_runs("attention")
    if not runs:
        return
    labels = run_labels(runs)
    diagnosed = [i for i in runs if diagnostics_of(i.meta)]
    undiagnosed = [i for i in runs if not diagnostics_of(i.meta)]
    if undiagnosed:
        st.info(
            "Not diagnosed yet: "
            + ", ".join(f"**{labels[str(i.path)]}**" for i in undiagnosed)
            + ". Run:"
        )
        cmds = "\n".join(f"python -m csba diagnose {i.path}" for i in undiagnosed)
        st.code(cmds, "bash", wrap_lines=True)
    with_att = [i for i in diagnosed if attention_of(i.meta) is not None]
    no_att = [
        labels[str(i.path)]
        for i in diagnosed
        if attention_of(i.meta) is None and not _gated(i.meta)
    ]
    broken = [
        labels[str(i.path)] for i in diagnosed if attention_of(i.meta) is None and _gated(i.meta)
    ]
    if no_att:
        st.caption(f"No attention (variant without gates): {', '.join(no_att)}.")
    if broken:
        st.warning(f"Diagnosed but no usable attention block stored: {', '.join(broken)}.")
    if not diagnosed:
        return
    name, tab = sections(
        SECTIONS, key="att_section", keep=["att_run", "att_dev", "att_overlap_class"]
    )  # only the open tab is built
    with tab:
        if name == SECTIONS[2]:
            angles_section(diagnosed, labels)
        elif not with_att:
            st.info(
                "None of the chosen diagnosed runs has attention: choose a csba or class_heads "
                "run in the sidebar."
            )
        elif name == SECTIONS[0]:
            attention_section(with_att, labels)
        else:
            overlap_section(with_att, labels)


main()
