"""Confusion matrices page: from a cell (true a, predicted b) to its test images, per run side
by side, most confident first; with two runs, the images of class a that one gets right and the
other wrong, both ways. Predictions are run.json's stored test predictions (the ones the
matrix counts); thumbnails come through ``csba.diagnostics.browse.image`` (pages.thumbs)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from csba.diagnostics.browse import confusion_cell, right_wrong
from pages.common import clicked_cell, run_ref
from pages.thumbs import bundle_of, thumb_grid

K = 4  # thumbnails per list, one row each
MAX_RUNS = 3  # side by side


def open_cell(key: str, classes: list[str]) -> None:
    """``on_click`` of the clickable confusion grid ``key``: its clicked cell (true a,
    predicted b) becomes the pickers' choice (a callback runs before the rerun)."""
    cell = clicked_cell(key)
    if cell is not None:
        _, i, j = cell
        st.session_state["cm_true"], st.session_state["cm_pred"] = classes[i], classes[j]


def test_predictions(meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(y_true (N,), y_pred (N,), probs (N, C)) of a run's stored test predictions, or None."""
    p = (meta.get("predictions") or {}).get("test") or {}
    if not all(p.get(k) is not None for k in ("y_true", "y_pred", "probs")):
        return None
    return np.asarray(p["y_true"]), np.asarray(p["y_pred"]), np.asarray(p["probs"], float)


def _caption(i, classes, y_true, y_pred, probs) -> str:
    t, p = int(y_true[i]), int(y_pred[i])
    return f"#{int(i)} {classes[t]} → {classes[p]}, p={probs[i, p]:.2f}"


def cell_images(infos: dict, classes: list[str], split: str) -> None:
    """The section under the matrices: a cell picker (or a click on a cell) and the cell's
    test images per run; ``infos``: run label -> RunInfo, the runs the matrices show."""
    st.subheader("Images of a cell")
    if split != "test":
        st.caption("run.json stores test predictions only: choose the test split for images.")
        return
    preds = {n: test_predictions(i.meta) for n, i in infos.items()}
    runs = [n for n, p in preds.items() if p is not None][:MAX_RUNS]
    if not runs:
        st.info("None of the chosen runs stores its test predictions.")
        return
    for k in ("cm_true", "cm_pred"):
        if st.session_state.get(k) not in (None, *classes):  # a class of other runs
            st.session_state[k] = None
    a, b = st.session_state.get("cm_true"), st.session_state.get("cm_pred")
    chosen = f"{a} → {b}" if a is not None and b is not None else "none"
    # the pickers in a popover: drawn only when opened (~0.15 s off the page's view)
    with st.popover(f"Cell (true → predicted): {chosen}", icon=":material/grid_on:"):
        pick = {"index": None, "placeholder": "click a cell, or pick"}  # none until asked
        a = st.selectbox("True class (row)", classes, key="cm_true", **pick)
        b = st.selectbox("Predicted class (column)", classes, key="cm_pred", **pick)
    st.caption(
        "Click a cell of the matrices, or pick it with the button above. Most confident "
        "first; each thumbnail opens the Attributions page on that test image."
        + (
            " Runs added in the sidebar exist only in this browser session: no links."
            if any(run_ref(infos[n]) is None for n in runs)
            else ""
        )
    )
    if a is None or b is None:
        return
    a, b = classes.index(a), classes.index(b)
    for col, name in zip(st.columns(len(runs)), runs, strict=True):
        with col:
            _cell_column(infos[name], name, preds[name], classes, a, b)
    if len(runs) >= 2:
        _right_wrong(infos, preds, runs, classes, a)


def _cell_column(info, name: str, pred, classes, a: int, b: int) -> None:
    st.markdown(f"**{name}**")
    bundle = bundle_of(info.meta)
    if bundle is None:
        return
    y_true, y_pred, probs = pred
    idx = confusion_cell(y_true, y_pred, probs, a, b)
    st.caption(f"{len(idx)} test images of {classes[a]} predicted {classes[b]}")
    caps = [_caption(i, classes, y_true, y_pred, probs) for i in idx[:K]]
    thumb_grid(info, bundle, "test", idx[:K], caps)


def _right_wrong(infos, preds, runs, classes, a: int) -> None:
    st.subheader(f"{classes[a]}: right in one run, wrong in the other")
    c1, c2 = st.columns(2)
    x = c1.selectbox("Run A", runs, index=0, key="cm_ra")
    y = c2.selectbox("Run B", runs, index=1, key="cm_rb")
    if x == y:
        st.info("Choose two different runs.")
        return
    if not np.array_equal(preds[x][0], preds[y][0]):
        st.warning(f"{x} and {y} were tested on different images: nothing to pair.")
        return
    for col, (p, q) in zip(st.columns(2), ((x, y), (y, x)), strict=True):
        with col:
            y_true, pred_p, probs_p = preds[p]
            idx = right_wrong(y_true, pred_p, preds[q][1], probs_p, a)
            st.caption(f"Right in {p}, wrong in {q}: {len(idx)} images")
            bundle = bundle_of(infos[p].meta)
            if bundle is not None:
                _, pred_q, probs_q = preds[q]
                caps = [
                    f"#{int(i)}: {q} says {classes[pred_q[i]]} (p={probs_q[i, pred_q[i]]:.2f})"
                    for i in idx[:K]
                ]
                thumb_grid(infos[p], bundle, "test", idx[:K], caps)
