"""Gradient conflict: per-class gradient cosines per run and layer group, their difference,
the most adversarial pairs, the evolution over training, branch gradient shares and the
optimisation-generalisation table."""

import math
from functools import partial

import pandas as pd
import streamlit as st

from csba.conflict_gain import baselines_by_key, conflict_gain, match_key
from csba.diagnostics import off_diagonal_stats
from csba.diagnostics import sorted_pairs as adversarial_pairs
from csba.diagnostics.training import conflict_change
from csba.identity import backbone_name, head_and_method
from csba.stats import BOOT_SEED, N_RESAMPLES
from pages.common import (
    all_runs,
    dataset_name,
    default_size,
    diagnostics_of,
    download_df,
    download_fig,
    image_size,
    is_usable,
    plotly_chart,
    run_labels,
    sections,
    select_runs,
)
from pages.conflict_images import IMAGES, images_tab, open_pair
from pages.fig_base import as_matrix, matrix_frame, number
from pages.fig_conflict import (
    conflict_difference,
    conflict_gain_scatter,
    conflict_grid,
    conflict_heatmap,
    conflict_history_figure,
    shares_heatmap,
)

WHOLE = "whole model"
COLS = 3


def gcm_block(meta: dict, group: str) -> dict | None:
    """{"matrix", "classes", "mean", "std"} of the whole model or a layer group, or None."""
    diag = diagnostics_of(meta)
    if diag is None:
        return None
    block = diag.get("gcm") if group == WHOLE else (diag.get("layers") or {}).get(group)
    if not isinstance(block, dict):
        return None
    m = as_matrix(block.get("matrix"))
    if m is None or m.shape[0] != m.shape[1]:
        return None
    classes = [str(c) for c in (block.get("classes") or diag.get("classes") or meta["classes"])]
    if len(classes) != m.shape[0]:
        classes = [str(i) for i in range(m.shape[0])]
    mean, std = off_diagonal_stats(m)
    mean = number(block.get("mean")) if block.get("mean") is not None else mean
    std = number(block.get("std")) if block.get("std") is not None else std
    return {"matrix": m, "classes": classes, "mean": mean, "std": std}


def not_diagnosed_note(infos, labels) -> None:
    if not infos:
        return
    names = ", ".join(f"**{labels[str(i.path)]}**" for i in infos)
    cmds = "\n".join(f"python -m csba diagnose {i.path}" for i in infos)
    st.info(f"Not diagnosed yet: {names}. Run:")
    st.code(cmds, language="bash", wrap_lines=True)


def collect_blocks(diagnosed, labels, group) -> dict:
    """label -> gcm_block of each run that stores ``group``, with a notice for the others."""
    blocks = {}
    for i in diagnosed:
        b = gcm_block(i.meta, group)
        if b is not None:
            blocks[labels[str(i.path)]] = b | {"backbone": backbone_name(i.meta)}
    missing = [labels[str(i.path)] for i in diagnosed if labels[str(i.path)] not in blocks]
    if missing:
        st.warning(f"No '{group}' matrix stored for: {', '.join(missing)}")
    backbones = sorted({b["backbone"] for b in blocks.values()})
    if group != WHOLE and len(backbones) > 1:
        st.info(
            f"'{group}' names a different set of layers in each backbone "
            f"({', '.join(backbones)}): compare its matrices only within one backbone."
        )
    return blocks


def heatmaps_section(blocks, group) -> None:
    names = list(blocks)
    classes = blocks[names[0]]["classes"] if names else []
    if names and all(b["classes"] == classes for b in blocks.values()):
        # one figure for every run: the browser draws one chart, not one per run
        titles = [f"{n}: mean cos {b['mean']:+.3f}, std {b['std']:.3f}" for n, b in blocks.items()]
        mats = {n: b["matrix"] for n, b in blocks.items()}
        fig = conflict_grid(mats, classes, titles, cols=min(COLS, len(names)))
        key = f"gcm_{group}"
        plotly_chart(fig, width="stretch", key=key, on_click=partial(open_pair, key, classes))
        download_fig(fig, f"gcm_{group}")
    else:  # runs of other class sets: a chart each
        _per_run_heatmaps(blocks, group)
    if blocks:
        long = pd.concat(
            matrix_frame(b["matrix"], b["classes"], b["classes"])
            .rename_axis("class")
            .reset_index()
            .assign(run=name, group=group)
            for name, b in blocks.items()
        )
        download_df(long, f"gcm_{group}")


def _per_run_heatmaps(blocks: dict, group: str) -> None:
    names = list(blocks)
    for start in range(0, len(names), COLS):
        for col, name in zip(st.columns(COLS), names[start : start + COLS]):
            with col:
                b = blocks[name]
                fig = conflict_heatmap(b["matrix"], b["classes"], title=name, click_tag=0)
                key = f"gcm_{group}_{name}"
                on_click = partial(open_pair, key, b["classes"])
                plotly_chart(fig, width="stretch", key=key, on_click=on_click)
                st.caption(f"mean off-diagonal cos **{b['mean']:+.3f}**, std {b['std']:.3f}")
                download_fig(fig, f"gcm_{group}_{name}")


def pairs_section(blocks) -> None:
    st.subheader("Most adversarial class pairs (paper Table 4)")
    top = int(st.columns(4)[0].number_input("Pairs per run", 1, 50, 3, key="gcm_top"))
    rows = []
    for name, b in blocks.items():
        for rank, (a, c, cos) in enumerate(adversarial_pairs(b["matrix"], b["classes"])[:top]):
            rows.append({"run": name, "rank": rank + 1, "class a": a, "class b": c, "cos": cos})
    df = pd.DataFrame(rows, columns=["run", "rank", "class a", "class b", "cos"])
    # a static table: a few rows need no data grid, whose script a fresh browser session
    # loads first (the page's last placeholder to go, ~2 s: docs/performance.md)
    st.table(df.style.format({"cos": "{:+.3f}"}).hide(axis="index"))
    download_df(df, "adversarial_pairs")


def difference_section(blocks, group) -> None:
    names = list(blocks)
    if len(names) < 2:
        st.info("Choose at least two diagnosed runs to compare their matrices.")
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("Run A", names, index=len(names) - 1, key="gcm_a")
    b = c2.selectbox("minus run B", names, index=0, key="gcm_b")
    if a == b:
        st.info("Choose two different runs.")
        return
    if blocks[a]["classes"] != blocks[b]["classes"]:
        st.error(f"{a} and {b} have different classes; no difference shown")
        return
    if blocks[a]["backbone"] != blocks[b]["backbone"]:
        what = f"{blocks[a]['backbone']} and {blocks[b]['backbone']}"
        if group != WHOLE:
            st.warning(
                f"{a} and {b} have different backbones ({what}): their '{group}' groups are "
                "different layers that share a name, so no difference is shown. Choose two runs "
                "of one backbone, or the whole model."
            )
            return
        st.info(
            f"{a} and {b} have different backbones ({what}): the two matrices are measured on "
            "different parameters; the difference compares how the classes' gradients relate, "
            "not the same layers."
        )
    fig = conflict_difference(
        blocks[a]["matrix"],
        blocks[b]["matrix"],
        blocks[a]["classes"],
        (a, b),
        f"{a} minus {b} ({group})",
        click_tag=0,
    )
    left, right = st.columns([2, 1])
    with left:
        on_click = partial(open_pair, "gcm_diff", blocks[a]["classes"])
        plotly_chart(fig, width="stretch", key="gcm_diff", on_click=on_click)
        download_fig(fig, f"gcm_diff_{a}_minus_{b}")
    with right:
        st.markdown(
            f"Blue: the pair's gradients agree more in **{a}** than in **{b}**; red: they "
            f"conflict more. Mean cos {blocks[a]['mean']:+.3f} vs {blocks[b]['mean']:+.3f} "
            f"(Δ {blocks[a]['mean'] - blocks[b]['mean']:+.3f}). Each matrix comes from one "
            "seed on a fixed class-balanced subset; compare seeds before calling a difference "
            "real."
        )


def history_section(runs, labels) -> None:
    st.subheader("Evolution over training")
    hist = {
        labels[str(i.path)]: i.meta["conflict_history"]
        for i in runs
        if isinstance(i.meta.get("conflict_history"), list) and i.meta["conflict_history"]
    }
    if not hist:
        st.info(
            "No conflict history in these runs: it is recorded during training with "
            "`python -m csba train --conflict-every N` (or the option on the Training page)."
        )
        return
    fig = conflict_history_figure(hist)
    plotly_chart(fig, width="stretch", key="gcm_hist")
    download_fig(fig, "gcm_history")
    c1, c2 = st.columns([1, 2])
    name = c1.selectbox("Run", list(hist), key="gcm_hist_run")
    entries = [h for h in hist[name] if as_matrix(h.get("matrix")) is not None]
    if not entries:
        st.info(f"{name}: the history holds no matrices.")
        return
    epochs = [int(h.get("epoch", k + 1)) for k, h in enumerate(entries)]
    if len(epochs) > 1:
        epoch = c2.select_slider("Epoch", epochs, value=epochs[-1], key="gcm_hist_epoch")
    else:
        epoch = epochs[0]
        c2.caption(f"One recorded epoch: {epoch}")
    h = entries[epochs.index(epoch)]
    m = as_matrix(h["matrix"])
    info = next(i for i in runs if labels[str(i.path)] == name)
    classes = [str(c) for c in info.meta["classes"]]
    if len(classes) != m.shape[0]:
        classes = [str(k) for k in range(m.shape[0])]
    mean, std = off_diagonal_stats(m)
    fig = conflict_heatmap(m, classes, title=f"{name}, epoch {epoch}")
    left, right = st.columns([1, 1])
    with left:
        plotly_chart(fig, width="stretch", key="gcm_hist_mat")
        download_fig(fig, f"gcm_{name}_epoch{epoch}")
    with right:
        st.metric("mean off-diagonal cos", f"{mean:+.3f}")
        st.metric("std over pairs", f"{std:.3f}")
        rows = [
            {
                "epoch": x.get("epoch"),
                "mean": number(x.get("mean")),
                "std": number(x.get("std")),
            }
            for x in hist[name]
        ]
        download_df(pd.DataFrame(rows), f"gcm_history_{name}")


def shares_section(diagnosed, labels) -> None:
    st.subheader("Branch gradient shares")
    st.caption(
        "Share of each class's gradient norm that falls on each branch's parameters (rows sum "
        "to 1). Equal shares mean the branches do not specialise by class."
    )
    shown = 0
    cols = st.columns(COLS)
    for i in diagnosed:
        br = (diagnostics_of(i.meta) or {}).get("branches")
        s = as_matrix(br.get("shares")) if isinstance(br, dict) else None
        if s is None:
            continue
        name = labels[str(i.path)]
        classes = [str(c) for c in i.meta["classes"]]
        if len(classes) != s.shape[0]:
            continue
        if head_and_method(i.meta)[0] == "class_heads" and s.shape[1] == len(classes):
            branches = [f"head {c}" for c in classes]
        else:
            branches = [f"branch {k + 1}" for k in range(s.shape[1])]
        with cols[shown % COLS]:
            fig = shares_heatmap(s, classes, branches, title=name)
            plotly_chart(fig, width="stretch", key=f"shares_{name}")
            download_fig(fig, f"branch_shares_{name}")
        shown += 1
    if not shown:
        st.info("No branch gradient shares stored in the diagnosed runs chosen.")


def opt_gen_section(runs, labels) -> None:
    st.subheader("Optimisation and generalisation")
    # the same-seed baseline of the same backbone, size and kind of device
    baselines = baselines_by_key([i.meta for i in all_runs() if is_usable(i)])

    def baseline_mean(meta):
        b = baselines.get(match_key(meta))
        b = gcm_block(b, WHOLE) if b is not None else None
        return b["mean"] if b else None

    def change_cell(meta, mean) -> str:
        """'-' for a baseline against itself (as in docs/results.md), '' without a baseline."""
        if baselines.get(match_key(meta)) is meta:
            return "-"
        change = conflict_change(mean, baseline_mean(meta))
        return "" if change is None or math.isnan(change) else f"{change:+.3f}"

    rows = []
    for i in runs:
        m = i.meta
        b = gcm_block(m, WHOLE)
        mean = b["mean"] if b else None
        change = change_cell(m, mean)
        test = (m.get("metrics") or {}).get("test") or {}
        rows.append(
            {
                "run": labels[str(i.path)],
                "variant": m["variant"],
                "seed": m["config"].get("seed"),
                "generalisation gap": number(m.get("generalisation_gap")),
                "mean conflict (cos)": mean if mean is not None else math.nan,
                "Δ vs baseline (same seed)": change,
                "macro-F1": number(test.get("macro_f1")),
                "best epoch": m.get("best_epoch"),
            }
        )
    df = pd.DataFrame(rows)
    st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        column_config={
            "generalisation gap": st.column_config.NumberColumn(format="%+.3f"),
            "mean conflict (cos)": st.column_config.NumberColumn(format="%+.3f"),
            "macro-F1": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    st.caption(
        "Generalisation gap: validation minus training loss at the kept epoch. Mean conflict: "
        "mean off-diagonal cosine of the whole-model matrix (higher = less conflict); Δ: this "
        "run minus the baseline of the same dataset, image size, backbone, kind of device and "
        "seed (positive = less conflict than the baseline; empty when that baseline is missing "
        "or undiagnosed; '-' for the baseline itself). "
        "Focal runs train with a different loss, so their loss gap is on another scale."
    )
    download_df(df, "optimisation_generalisation")


@st.cache_resource(show_spinner="Ranking methods by their conflict change...", max_entries=16)
def _gain(stamps: tuple, _metas: list[dict]) -> dict:
    """csba.conflict_gain over the runs, with the resamples and seed of docs/results.md; keyed
    by the runs' (path, mtime) stamps."""
    del stamps
    return conflict_gain(_metas, n_resamples=N_RESAMPLES, seed=BOOT_SEED)


def _gain_pool(runs) -> tuple[list, int | None]:
    """Every finished run of the selection's dataset at one image size (picked here, by default
    the size docs/results.md reports), and that size."""
    ds = dataset_name(runs[0].meta)
    pool = [i for i in all_runs() if is_usable(i) and dataset_name(i.meta) == ds]
    counts: dict[int, int] = {}
    for i in pool:
        if image_size(i.meta):
            counts[image_size(i.meta)] = counts.get(image_size(i.meta), 0) + 1
    if not counts:
        return [], None
    sizes = sorted(counts)
    size = st.selectbox(
        "Image size",
        sizes,
        index=sizes.index(default_size(pool)),
        format_func=lambda x: f"{x}px ({counts[x]} runs)",
        key="gain_size",
        help="The analysis ranks methods over every finished run of one image size.",
    )
    st.caption(
        f"Every finished **{ds}** run at **{size}px** ({counts[size]} runs), not only those "
        f"chosen in the sidebar; {N_RESAMPLES} resamples over methods, seed {BOOT_SEED} "
        "(as docs/results.md)."
    )
    return [i for i in pool if image_size(i.meta) == size], size


def conflict_gain_section(runs) -> None:
    """Does reducing conflict help the minority class? Every finished run of one dataset and
    image size, each method against its same-seed baseline (docs/diagnostics.md)."""
    st.subheader("Does reducing conflict help the minority class?")
    pool, size = _gain_pool(runs)
    if not pool:
        st.info("No finished run with a recorded image size.")
        return
    stamps = tuple(sorted((str(i.path), (i.path / "run.json").stat().st_mtime) for i in pool))
    res = _gain(stamps, [i.meta for i in pool])
    if not res["backbones"]:
        st.info(
            f"No method at {size}px has a diagnosed same-seed baseline yet "
            "(python -m csba diagnose RUN)."
        )
        return
    for backbone, e in res["backbones"].items():
        st.markdown(f"**{backbone}.** {e['sentence']} {e['global_sentence']}".strip())
        table = pd.DataFrame(e["methods"]).rename(columns=GAIN_COLUMNS)
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                c: st.column_config.NumberColumn(format="%+.3f")
                for c in GAIN_COLUMNS.values()
                if c not in ("method", "seeds")
            },
        )
        fig = conflict_gain_scatter(e["methods"], f"{backbone}: change against the baseline")
        plotly_chart(fig, width="stretch", key=f"gain_{backbone}")
    download_df(pd.DataFrame(res["runs"]), "conflict-gain-runs.csv")


GAIN_COLUMNS = {  # conflict_gain's method keys -> the column names of docs/results.md
    "method": "method",
    "seeds": "seeds",
    "d_cos_minority": "d cos minority",
    "d_conflict": "d mean cos",
    "d_f1_minority": "d F1 minority",
    "d_macro_f1": "d macro-F1",
}


def matrices_tab(diagnosed, labels, difference: bool = False) -> None:
    """The matrices of one layer group and their most adversarial pairs, or (``difference``)
    the difference of two of them."""
    if not diagnosed:
        st.info("None of the chosen runs is diagnosed yet.")
        return
    groups = [WHOLE]
    for i in diagnosed:
        for g in diagnostics_of(i.meta).get("layers") or {}:
            if g not in groups:
                groups.append(g)
    group = st.selectbox(
        "Layer group",
        groups,
        key="gcm_group",
        help="Conflict measured on the gradients of one group of layers only.",
    )
    blocks = collect_blocks(diagnosed, labels, group)
    if difference:
        difference_section(blocks, group)
        return
    heatmaps_section(blocks, group)
    if blocks:
        pairs_section(blocks)


MATRICES, GAIN, HISTORY = "Matrices", "Conflict vs minority gain", "Over training"
DIFFERENCE = "Difference of two runs"
SHARES, OPT_GEN = "Branch shares", "Optimisation and generalisation"
SECTIONS = {  # tab -> what it shows; only the open tab is built
    MATRICES: "Per-run matrices of one layer group and their most adversarial pairs. Click a "
    "cell of any matrix to see the training images behind it.",
    DIFFERENCE: "One run's matrix minus another's, for one layer group (a click on a cell opens "
    "its images too).",
    IMAGES: "For a class pair, the training images of each class that pull against the other "
    "(per-example alignment with the class's mean gradient), candidate label errors, and how "
    "far two runs agree.",
    GAIN: "Each method against its same-seed baseline: does less conflict go with a better "
    "minority class? (Spearman over methods, per backbone.)",
    HISTORY: "The mean conflict and the matrix at each recorded epoch.",
    SHARES: "How each class's gradient falls on the branches.",
    OPT_GEN: "Generalisation gap against the conflict change, per run.",
}


def main() -> None:
    st.title("Gradient conflict")
    st.caption(
        "Cosine between the mean loss gradients of two classes on a fixed class-balanced "
        "training subset: **red = conflict** (negative: a step that helps one class hurts the "
        "other), **blue = agreement**, one colour scale from -1 to +1 for every matrix."
    )
    runs = select_runs("conflict")
    if not runs:
        return
    labels = run_labels(runs)
    diagnosed = [i for i in runs if diagnostics_of(i.meta)]
    not_diagnosed_note([i for i in runs if not diagnostics_of(i.meta)], labels)
    name, tab = sections(
        list(SECTIONS),
        key="gcm_section",
        keep=["gcm_group", "img_a", "img_b", "img_ranking", "img_class"],
    )
    with tab:
        st.caption(SECTIONS[name])
        if name in (MATRICES, DIFFERENCE):
            matrices_tab(diagnosed, labels, difference=name == DIFFERENCE)
        elif name == IMAGES:
            images_tab(runs, labels)
        elif name == GAIN:
            conflict_gain_section(runs)
        elif name == HISTORY:
            history_section(runs, labels)
        elif name == SHARES:
            if diagnosed:
                shares_section(diagnosed, labels)
            else:
                st.info("None of the chosen runs is diagnosed yet.")
        else:
            opt_gen_section(runs, labels)


main()
