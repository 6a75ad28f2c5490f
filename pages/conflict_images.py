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

from csba.data import DataError, load_dataset
from csba.diagnostics.browse import (
    RANKINGS,
    agreement,
    image,
    label_error_candidates,
    pulling_against,
    ranking_values,
)
from csba.diagnostics.examples import FILE, ExampleScores, load_scores
from pages.common import attribution_link, diagnostics_of, run_ref

MAX_RUNS = 3  # side by side
K = 6  # thumbnails per list


@st.cache_resource(show_spinner="Loading the images...", max_entries=4)
def _bundle(name: str, size: int, data_root: str | None, split_seed: int):
    return load_dataset(name, size, data_root=data_root, split_seed=split_seed)


@st.cache_resource(show_spinner=False, max_entries=64)
def _scores(path: str, mtime: float, split: str) -> ExampleScores | None:
    del mtime  # only part of the cache key: a re-diagnosed run is read again
    return load_scores(path, split)


def scores_of(info, split: str = "train") -> ExampleScores | None:
    """A run's per-example scores of one split (cached per file version), or None."""
    f = Path(info.path) / FILE
    return _scores(str(info.path), f.stat().st_mtime, split) if f.is_file() else None


def bundle_for(meta: dict):
    """The run's dataset, decoded once per server (cached); raises DataError, KeyError,
    OSError or ValueError when it cannot be read."""
    ds, cfg = meta.get("dataset") or {}, meta.get("config") or {}
    root = ds.get("data_root") or cfg.get("data_root")
    return _bundle(ds["name"], int(ds["image_size"]), root, int(ds["split_seed"]))


def bundle_of(meta: dict):
    """The run's dataset (cached), or None with a one-line notice."""
    try:
        return bundle_for(meta)
    except (DataError, KeyError, OSError, ValueError) as e:
        st.warning(f"Images not available: {e}")
        return None


def _pairs(runs, C: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Unordered class pairs, most negative mean cosine over the runs first, and that (C, C)
    mean."""
    mats = [np.array(diagnostics_of(i.meta)["gcm"]["matrix"], float) for i in runs]
    mean = np.nanmean(np.stack(mats), 0) if mats else np.zeros((C, C))
    pairs = [(a, b) for a in range(C) for b in range(a + 1, C)]
    return sorted(pairs, key=lambda p: (np.nan_to_num(mean[p], nan=2.0), p)), mean


def thumbs(info, bundle, s: ExampleScores, idx, classes, values, what: str) -> None:
    """Thumbnails with label, prediction and the score (text, never HTML); each opens the
    Attributions page on that training image (runs under the runs root)."""
    if len(idx) == 0:
        st.caption("None.")
        return
    cols = st.columns(3)
    for n, i in enumerate(idx):
        label, pred = classes[int(s.labels[i])], classes[int(s.prediction[i])]
        cap = f"#{int(i)} {label} → {pred}, {what} {values[i]:.2f}"
        link = attribution_link(info, "train", int(i))
        px = image(bundle, "train", int(i))
        cols[n % 3].image(px, caption=cap, width="stretch", link=link)


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
    pairs, mean = _pairs(scored, len(classes))
    choice = st.pills(
        "Class pair (most conflicting first; one click)",
        list(range(len(pairs))),
        default=0,
        format_func=lambda k: (
            f"{classes[pairs[k][0]]} ↔ {classes[pairs[k][1]]} ({mean[pairs[k]]:+.2f})"
        ),
        key="img_pair",
        required=True,
    )
    a, b = pairs[choice if choice is not None else 0]
    cols = st.columns(len(scored))
    for col, info in zip(cols, scored, strict=True):
        with col:
            _pair_column(info, labels[str(info.path)], classes, a, b)
    _label_errors(scored, labels, classes)


def _pair_column(info, label: str, classes, a: int, b: int) -> None:
    st.markdown(f"**{label}**")
    bundle, s = bundle_of(info.meta), scores_of(info)
    if bundle is None:
        return
    for x, y in ((a, b), (b, a)):
        st.caption(f"Training images of {classes[x]} most against {classes[y]} (alignment)")
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
        st.dataframe(pd.DataFrame(rows), hide_index=True)
