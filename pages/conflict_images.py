"""Gradient conflict page, tab "Images behind a conflict": from a class pair (a, b) to the
training images of a that pull against b and of b against a, per run side by side; candidate
label errors by a chosen score; how far two runs agree. The rankings are
csba.diagnostics.browse's, the scores the run's example_scores.safetensors (written by
``python -m csba diagnose``); thumbnails come through ``browse.image`` only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from csba.diagnostics.browse import (
    RANKINGS,
    agreement,
    label_error_candidates,
    pulling_against,
    ranking_values,
)
from csba.diagnostics.examples import FILE, ExampleScores, load_scores
from pages.common import clicked_cell, diagnostics_of, run_ref
from pages.thumbs import bundle_of, thumb_grid

MAX_RUNS = 3  # side by side
K = 4  # thumbnails per list (one row: the view draws 4 x 3 per run, not 6 x 3)
QUICK = 5  # one-click buttons: the most conflicting pairs
IMAGES = "Images behind a conflict"  # the conflict page's tab this module draws


@st.cache_resource(show_spinner=False, max_entries=64)
def _scores(path: str, mtime: float, split: str) -> ExampleScores | None:
    del mtime  # only part of the cache key: a re-diagnosed run is read again
    return load_scores(path, split)


def scores_of(info, split: str = "train") -> ExampleScores | None:
    """A run's per-example scores of one split (cached per file version), or None."""
    f = Path(info.path) / FILE
    return _scores(str(info.path), f.stat().st_mtime, split) if f.is_file() else None


def _pairs(runs, C: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Unordered class pairs, most negative mean cosine over the runs first, and that (C, C)
    mean."""
    mats = [np.array(diagnostics_of(i.meta)["gcm"]["matrix"], float) for i in runs]
    mean = np.nanmean(np.stack(mats), 0) if mats else np.zeros((C, C))
    pairs = [(a, b) for a in range(C) for b in range(a + 1, C)]
    return sorted(pairs, key=lambda p: (np.nan_to_num(mean[p], nan=2.0), p)), mean


def thumbs(info, bundle, s: ExampleScores, idx, classes, values, what: str) -> None:
    """Training-image thumbnails with label, prediction and the score."""
    caps = [
        f"#{int(i)} {classes[int(s.labels[i])]} → {classes[int(s.prediction[i])]}, "
        f"{what} {values[i]:.2f}"
        for i in idx
    ]
    thumb_grid(info, bundle, "train", idx, caps)


def open_pair(key: str, classes: list[str], section_key: str = "gcm_section") -> None:
    """``on_click`` of a clickable conflict heatmap ``key``: its clicked cell (a, b) becomes
    this tab's pair and the tab opens (a callback runs before the rerun, so it may set both)."""
    cell = clicked_cell(key)
    if cell is not None:
        _, i, j = cell
        st.session_state["img_a"], st.session_state["img_b"] = classes[i], classes[j]
        st.session_state[section_key] = IMAGES


def images_tab(runs, labels) -> None:
    """The tab: pair picker, the images of the pair per run, label-error candidates,
    agreement of two runs."""
    scored = [i for i in runs if diagnostics_of(i.meta) and scores_of(i) is not None]
    missing = [labels[str(i.path)] for i in runs if i not in scored]
    if missing:
        st.caption(
            "No per-example scores (run `python -m csba diagnose RUN`, or `--scores-only` for "
            f"a diagnosed run; runs without weights have none): {', '.join(missing)}."
        )
    classes = [str(c) for c in scored[0].meta["classes"]] if scored else []
    scored = [i for i in scored if [str(c) for c in i.meta["classes"]] == classes][:MAX_RUNS]
    if not scored:
        st.info("None of the chosen runs has per-example scores yet.")
        return
    if any(run_ref(i) is None for i in scored):
        st.caption(
            "Thumbnails open the Attributions page on that image. Runs added in the sidebar "
            "exist only in this browser session, so their thumbnails carry no link."
        )
    a, b = _pair_picker(scored, classes)
    cols = st.columns(len(scored))
    for col, info in zip(cols, scored, strict=True):
        with col:
            _pair_column(info, labels[str(info.path)], classes, a, b)
    _label_errors(scored, labels, classes)


def _quick(pairs, classes) -> None:
    k = st.session_state.get("img_quick")
    if k is not None:  # a button, not a state: the two pickers hold the pair
        st.session_state["img_a"], st.session_state["img_b"] = (classes[c] for c in pairs[k])
        st.session_state["img_quick"] = None


def _pair_picker(scored, classes) -> tuple[int, int]:
    """Class a and class b (indices): a cell clicked in any heatmap of the Matrices tab, a
    one-click button of the most conflicting pairs, or the two pickers; the diagonal (a, a)
    asks which images of a pull against their own class."""
    pairs, mean = _pairs(scored, len(classes))
    top = pairs[:QUICK]
    for k, default in (("img_a", top[0][0] if top else 0), ("img_b", top[0][1] if top else 0)):
        if st.session_state.get(k) not in classes:  # unset, or a class of other runs
            st.session_state[k] = classes[default]
    st.pills(
        "Most conflicting pairs (one click; or click a cell of any heatmap in Matrices)",
        list(range(len(top))),
        format_func=lambda k: f"{classes[top[k][0]]} ↔ {classes[top[k][1]]} ({mean[top[k]]:+.2f})",
        key="img_quick",
        on_change=_quick,
        args=(top, classes),
    )
    c1, c2 = st.columns(2)
    a = c1.selectbox("Class a", classes, key="img_a")
    b = c2.selectbox("Class b", classes, key="img_b")
    return classes.index(a), classes.index(b)


def _pair_column(info, label: str, classes, a: int, b: int) -> None:
    st.markdown(f"**{label}**")
    bundle, s = bundle_of(info.meta), scores_of(info)
    if bundle is None:
        return
    for x, y in ((a, b), (b, a)) if a != b else ((a, a),):
        st.caption(
            f"Training images of {classes[x]} most against {classes[y]} (alignment)"
            if x != y
            else f"Training images of {classes[x]} least aligned with their own class "
            "(leave-one-out alignment)"
        )
        idx = pulling_against(s, x, y, K)
        thumbs(info, bundle, s, idx, classes, s.alignment[:, y], "align")


def _label_errors(scored, labels, classes) -> None:
    st.subheader("Candidate label errors")
    c1, c2 = st.columns(2)
    ranking = c1.selectbox(
        "Ranked by",
        list(RANKINGS),
        key="img_ranking",
        help="Self-influence |g|² highest first (TracIn at one checkpoint); "
        "own-class alignment or confidence lowest first.",
    )
    cls = c2.selectbox(
        "Class", range(len(classes)), format_func=lambda c: classes[c], key="img_class"
    )
    cols = st.columns(len(scored))
    for col, info in zip(cols, scored, strict=True):
        with col:
            st.markdown(f"**{labels[str(info.path)]}**")
            s, bundle = scores_of(info), bundle_of(info.meta)
            if bundle is not None:
                idx = label_error_candidates(s, ranking, K, label=cls)
                thumbs(info, bundle, s, idx, classes, ranking_values(s, ranking), "score")
    if len(scored) >= 2:
        _agreement(scored, labels, ranking)


def _agreement(scored, labels, ranking) -> None:
    rows = []
    for j in range(1, len(scored)):
        x, y = scores_of(scored[0]), scores_of(scored[j])
        if not np.array_equal(x.labels, y.labels):
            continue  # other images or labels: nothing to pair
        k = max(1, round(0.05 * len(x.labels)))
        agr = agreement(ranking_values(x, ranking), ranking_values(y, ranking), k)
        rows.append(
            {
                "runs": f"{labels[str(scored[0].path)]} vs {labels[str(scored[j].path)]}",
                f"top-{k} overlap": agr["top_k_overlap"],
                "Spearman": agr["spearman"],
            }
        )
    if rows:
        st.caption(f"Agreement of the rankings ({ranking}) over the same training images")
        df = pd.DataFrame(rows)  # a static table: a data grid's script would load first
        st.table(df.style.format(precision=3).hide(axis="index"))
