"""Attributions: one image through each chosen run, side by side.

Image (an upload, or a test image of the runs' dataset) -> :func:`csba.attributions.explain_image`
per run -> prediction, per-branch logits and attention, Captum Integrated Gradients / Saliency /
Grad-CAM overlays, and per run the image's typicality (:func:`csba.typicality.score_image`: a
warning when the image lies outside the run's data).

The computations run in one background worker per server (:class:`csba.workqueue.WorkQueue`),
the first run's complete maps and every run's quick ones (prediction, Saliency, Grad-CAM,
typicality) of every waiting user before the other runs' Integrated Gradients, each once per
(run, weights, image hash, target). The script waits for the first run's maps at most
``CSBA_ATTRIBUTION_WAIT_S`` seconds (default 1.5); what is still computing then shows
its place in the queue; a small fragment polls the queue and reruns the page when more
computations have finished (the first run's at once, the others' at most every REDRAW_GAP_S
seconds, the last at once), so the page, and navigation away from it, never wait for other
users' attributions, and no figure is rebuilt while nothing changed.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from csba.attributions import METHODS, ImageExplanation, explain_image
from csba.data import IMAGE_EXTENSIONS, DataError, ImageLoadError, load_dataset, load_image
from csba.typicality import JSON_FILE, TypicalityError, TypicalityResult, score_image
from csba.workqueue import WorkQueue, redraw_due
from pages.attr_links import SOURCE, apply_link, linked_image, read_link
from pages.common import download_df, get_run, plotly_chart, run_labels, select_runs
from pages.fig_attributions import attribution_grid, attribution_grid_png
from pages.thumbs import bundle_for

MAX_RUNS = 5  # columns side by side (the paper's five variants)
SHOW_PX = 176  # display size of the small images (nearest-neighbour upscaling, no blur)
PREDICTED = "each run's predicted class"
QUICK = ("saliency", "gradcam")  # priority 0: every waiting user's before the IG of runs 2..
SLOW = ("integrated_gradients",)  # priority 1 (the first run: 0): 32 steps, most of the cost
POLL_S = 1.0  # how often a page with computations in flight looks again (s)
# While the other runs' maps finish, at most one page rerun per this many seconds: each redraws
# every column (script, messages and the browser's drawing take the CPU the worker needs; one
# rerun per finished computation made the last maps 3 s later). The first run's maps and the
# last computation are shown at once.
REDRAW_GAP_S = 2.0
INTERACTIVE_HELP = (
    "The same chart in plotly: hover for each channel's gate and each cell's exact value, zoom. "
    "Off by default: the picture is drawn once on the server, the interactive chart costs the "
    "browser about 0.3 s of drawing per view."
)
KEEP = ("attr_branch_cams", "attr_interactive")  # toggles drawn only in some runs (see main)
BRANCH_CAMS_HELP = (
    "Grad-CAM of the explained class on each branch's last layer, under the run's maps (off by "
    "default: three more images per run)."
)


def _wait_s() -> float:
    """Seconds the script waits for its computations before showing what is ready."""
    return float(os.environ.get("CSBA_ATTRIBUTION_WAIT_S", "1.5"))


# ---- cached work -----------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the test split...", max_entries=4)
def _test_split(name: str, size: int, data_root: str | None, split_seed: int):
    """(images uint8 (N, c, S, S), labels (N,), classes) of a dataset's test split."""
    bundle = load_dataset(name, size, data_root=data_root, split_seed=split_seed)
    return bundle.test.images, bundle.test.labels.numpy(), list(bundle.classes)


@st.cache_resource(show_spinner=False)
def _work_queue() -> WorkQueue:
    """The server's one attribution worker (see the module docstring); results kept for 512
    (run, image, target, stage) keys; torch on one thread there (csba.workqueue.WorkQueue)."""
    return WorkQueue(capacity=512, name="csba-attributions", threads=1)


def _explain_job(model, meta: dict, data: bytes, target: int | None, methods) -> ImageExplanation:
    return explain_image(model, meta, load_image(data), target, methods=methods)


def _typicality_job(run, data: bytes) -> TypicalityResult | str:
    """The image's typicality for one run, or a one-line reason it has none."""
    try:
        return score_image(run, load_image(data))
    except TypicalityError as e:
        return f"typicality: not available ({e})"


@dataclass
class _RunTasks:
    """One run's computations for the shown image: the worker's keys and futures."""

    keys: dict[str, tuple]  # "quick" | "slow" | "typicality" -> the queue key
    quick: Future  # ImageExplanation: report, Saliency, Grad-CAM (+ per branch)
    slow: Future  # ImageExplanation: report, Integrated Gradients
    typicality: Future  # TypicalityResult | str

    def futures(self) -> list[Future]:
        return [self.quick, self.slow, self.typicality]


def _submit(infos, digest: str, target: int | None, data: bytes) -> dict[str, _RunTasks | str]:
    """Queue (or find) each run's computations, by run path; a one-line reason for a run that
    cannot load. At priority 0: the first run's quick work (prediction, Saliency, Grad-CAM,
    typicality) and its Integrated Gradients, then the other runs' quick work; at priority 1
    (after every waiting user's priority 0) the other runs' IG. One run's maps are complete
    first, then every column has its quick maps."""
    q = _work_queue()
    prepared, out = {}, {}
    for info in infos:  # in the queue: the first run's quick work, then its IG, then the rest
        run = get_run(info.path)
        if run is None:
            out[str(info.path)] = "the run could not be loaded (see above)"
            continue
        path, sha = str(info.path), str(run.meta.get("weights_sha256", ""))
        ref = Path(info.path) / JSON_FILE
        ref_key = str(ref.stat().st_mtime_ns) if ref.is_file() else ""  # a backfilled reference
        keys = {
            "quick": (path, sha, digest, target, "quick"),
            "slow": (path, sha, digest, target, "ig"),
            "typicality": (path, sha, ref_key, digest, "typicality"),
        }
        job = partial(_explain_job, run.model, run.meta, data, target)
        quick = q.submit(keys["quick"], partial(job, QUICK), 0)
        typicality = q.submit(keys["typicality"], partial(_typicality_job, run, data), 0)
        slow = q.submit(keys["slow"], partial(job, SLOW), 0) if not prepared else None
        prepared[path] = (keys, job, quick, typicality, slow)
    for path, (keys, job, quick, typicality, slow) in prepared.items():
        slow = slow or q.submit(keys["slow"], partial(job, SLOW), 1)
        out[path] = _RunTasks(keys=keys, quick=quick, slow=slow, typicality=typicality)
    return {str(i.path): out[str(i.path)] for i in infos}


def _queue_note(key: tuple, what: str) -> str:
    """'what: computing...' or 'what: queued, N computations ahead (all users')'."""
    ahead = _work_queue().position(key)
    if not ahead:
        return f"{what}: computing..."
    return f"{what}: queued, {ahead} computation{'s' if ahead > 1 else ''} ahead (all users')"


def _failure(fut: Future) -> str | None:
    if fut.cancelled():
        return "cancelled (the server is stopping)"
    exc = fut.exception()
    return None if exc is None else f"{type(exc).__name__}: {exc}"


# ---- small renderers -------------------------------------------------------------------------


def _big(pixels: np.ndarray, px: int = SHOW_PX) -> Image.Image:
    """Display copy: small inputs upscaled nearest-neighbour (crisp pixels), large ones shrunk."""
    im = Image.fromarray(pixels)
    if max(im.size) > 2 * px:
        im.thumbnail((2 * px, 2 * px), Image.Resampling.LANCZOS)
        return im
    scale = max(1, px // max(im.size))
    return im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _overlap_text(e: ImageExplanation) -> str:
    """Branch pairs of this image's attention: Jaccard of the top-10% channels and cosine."""
    r = e.report
    short = [n.removeprefix("branch ").removeprefix("head ") for n in r["branch_labels"]]
    pairs = [
        f"{short[i]}/{short[j]}: J {float(r['jaccard'][i, j]):.2f}, "
        f"cos {float(r['cosine'][i, j]):.2f}"
        for i in range(len(short))
        for j in range(i + 1, len(short))
    ]
    return "Branch overlap, this image (J: Jaccard of the top-10% channels): " + "; ".join(pairs)


# ---- choosing the image ----------------------------------------------------------------------


def _test_image(info, sizes: list[int]) -> tuple[bytes, str, str | None] | None:
    """Widgets for a test image of the runs' dataset -> (PNG bytes, caption, true class)."""
    ds = info.meta["dataset"]
    name, size = ds["name"], max(sizes)
    root = ds.get("data_root") or info.meta["config"].get("data_root")
    try:
        images, labels, classes = _test_split(name, size, root, int(ds.get("split_seed", 0)))
    except (DataError, OSError, ValueError) as e:
        st.error(f"Cannot load the {name} test split: {e}. Upload an image instead.")
        return None
    if len(labels) == 0:
        st.error(f"The {name} test split is empty. Upload an image instead.")
        return None
    c1, c2 = st.columns([1, 2])
    pick = c1.selectbox("True class", ["any", *classes], key="attr_class")
    pool = (
        np.arange(len(labels)) if pick == "any" else np.flatnonzero(labels == classes.index(pick))
    )
    if len(pool) == 0:
        st.info(f"No test image of class {pick}.")
        return None
    k = c2.number_input(
        f"Test image (0 to {len(pool) - 1} of {len(pool)})",
        0,
        len(pool) - 1,
        0,
        key=f"attr_idx_{pick}",
    )
    idx = int(pool[int(k)])
    px = images[idx].permute(1, 2, 0).numpy()
    if px.shape[2] == 1:
        px = np.repeat(px, 3, axis=2)
    true = classes[int(labels[idx])]
    return (
        _png(np.ascontiguousarray(px)),
        f"{name} test image #{idx}, true: {true}",
        true,
    )


def _chosen_image(source: str, link, infos, sizes) -> tuple[bytes, str, str | None] | None:
    """The image the source radio names: a test image, an upload, or the linked one."""
    if source == SOURCE and link is not None:
        got = linked_image(link, bundle_for)
        return None if got is None else (_png(got[0]), got[1], got[2])
    return _test_image(infos[0], sizes) if source == "Test image" else _uploaded()


def _uploaded() -> tuple[bytes, str, None] | None:
    limit = int(st.get_option("server.maxUploadSize"))
    up = st.file_uploader(
        f"Image file (PNG, JPEG, BMP, TIFF, WEBP or GIF; up to {limit} MB)",
        type=[e.lstrip(".") for e in IMAGE_EXTENSIONS],
        key="attr_upload",
    )
    if up is None:
        st.info("Upload an image to explain, or switch to a test image.")
        return None
    return up.getvalue(), f"uploaded: {up.name}", None


# ---- the page --------------------------------------------------------------------------------


def main() -> None:
    st.title("Attributions")
    # The toggles keep their state through a run that does not draw them (an early return
    # below, e.g. an upload not chosen yet): Streamlit forgets a widget a run did not draw.
    for k in KEEP:
        if k in st.session_state:
            st.session_state[k] = st.session_state[k]
    st.caption(
        "One image through each chosen run: prediction, per-branch logits and attention, and "
        "where the evidence lies (Captum Integrated Gradients, Saliency, Grad-CAM on the last "
        "backbone layer and per branch). Integrated Gradients and Saliency are scaled as Captum's "
        "visualiser does (the strongest 2% of the evidence saturates); Grad-CAM to its maximum. "
        "Each run also says how typical the image is of its own validation images."
    )
    link = read_link()
    if link is not None:
        apply_link(link, "attributions")
    infos = select_runs("attributions", label="Runs", needs_weights=True)
    if not infos:
        return
    if len(infos) > MAX_RUNS:
        st.warning(f"Showing the first {MAX_RUNS} of the {len(infos)} chosen runs side by side.")
        infos = infos[:MAX_RUNS]
    labels = run_labels(infos)
    sizes = [int(i.meta["dataset"]["image_size"]) for i in infos]

    src, tgt = st.columns([2, 2])
    source = src.radio(
        "Image",
        ["Test image", "Upload", *([SOURCE] if link is not None else [])],
        horizontal=True,
        key="attr_source",
        label_visibility="collapsed",
    )
    classes = list(infos[0].meta["classes"])
    same_classes = all(list(i.meta["classes"]) == classes for i in infos)
    options = [PREDICTED, *classes] if same_classes else [PREDICTED]
    explained = tgt.selectbox("Explain class", options, key="attr_target")
    target = None if explained == PREDICTED else classes.index(explained)

    chosen = _chosen_image(source, link, infos, sizes)
    if chosen is None:
        return
    data, caption, true_class = chosen
    try:
        original = load_image(data)
    except ImageLoadError as e:
        st.error(str(e))
        return
    digest = hashlib.sha256(data).hexdigest()

    tasks = _submit(infos, digest, target, data)
    runs = [t for t in tasks.values() if isinstance(t, _RunTasks)]
    futures = [f for t in runs for f in t.futures()]
    # The first answer waits (at most _wait_s()) for the first run's complete maps, no longer;
    # a rerun the watcher asked for waits for nothing.
    first = runs[0].futures() if runs else []
    if not st.session_state.pop("attr_watched", False) and not all(f.done() for f in first):
        with st.spinner("Computing attributions..."):
            wait_futures(first, timeout=_wait_s())
    done = sum(f.done() for f in futures)
    if done < len(futures):
        _watch(futures, done, first, sum(f.done() for f in first), time.monotonic())
    _runs_section(infos, labels, tasks, original, caption, true_class, digest, done == len(futures))


@st.fragment(run_every=POLL_S)
def _watch(
    futures: list[Future], shown: int, first: list[Future], first_shown: int, drawn_at: float
) -> None:
    """While computations are in flight: a status line, redrawn every POLL_S seconds (cheap:
    no figure is built); when more have finished, the page reruns to show them (redraw_due).
    Its arguments are those of the page's last full run (drawn at `drawn_at`, monotonic s)."""
    done = sum(f.done() for f in futures)
    first_news = sum(f.done() for f in first) != first_shown
    since = time.monotonic() - drawn_at
    if redraw_due(done, shown, len(futures), first_news, since, REDRAW_GAP_S):
        st.session_state["attr_watched"] = True
        st.rerun()
    waiting = _work_queue().pending()
    st.caption(
        f":material/hourglass_top: {done} of {len(futures)} computations for this image done; "
        f"{waiting} waiting or running on this server (all users'). The columns fill in as "
        "they finish."
    )


def _runs_section(
    infos, labels, tasks, original, caption, true_class, digest, all_done: bool
) -> None:
    """Input row and one column per run with what is ready (the probabilities' download once
    nothing is pending)."""
    # each run's ready quick result: the input row first (no placeholder that blanks while
    # the page reruns), then the columns
    results: dict[str, ImageExplanation] = {}
    for info in infos:
        t = tasks[str(info.path)]
        if isinstance(t, _RunTasks) and t.quick.done() and _failure(t.quick) is None:
            results[str(info.path)] = t.quick.result()
    views: dict[tuple[int, bool], tuple[np.ndarray, list[str]]] = {}
    for info in infos:
        e = results.get(str(info.path))
        if e is not None:
            grey = int(info.meta["dataset"].get("channels", 3)) == 1
            views.setdefault((e.pixels.shape[0], grey), (e.pixels, []))[1].append(
                labels[str(info.path)]
            )
    st.subheader("Input")
    n = 1 + len(views)
    cols = st.columns([1] * n + [max(1, 5 - n)])
    w, h = original.size
    cols[0].image(
        _big(np.asarray(original.convert("RGB"))), width=SHOW_PX, caption=f"{caption}, {w}x{h}"
    )
    for col, ((s, grey), (px, who)) in zip(cols[1:], views.items()):
        col.image(
            _big(px),
            width=SHOW_PX,
            caption=f"as the model sees it: {s}x{s}{', grey' if grey else ''} ({', '.join(who)})",
        )

    ready = [(labels[str(i.path)], results[str(i.path)]) for i in infos if str(i.path) in results]
    if ready:  # every ready run's numbers in one chart (the same classes: see main)
        st.subheader("Probabilities, branch logits and attention")
        interactive = st.toggle("Interactive chart", key="attr_interactive", help=INTERACTIVE_HELP)
        same = len({tuple(e.report["classes"]) for _, e in ready}) == 1
        for part in [ready] if same else [[x] for x in ready]:
            grid = [(label, e.report, e.target) for label, e in part]
            if interactive:
                fig = attribution_grid(grid)
                plotly_chart(fig, width="stretch", key=f"attr_numbers_{part[0][0]}")
            else:  # built once per (runs, image, target): cached like any figure
                st.image(attribution_grid_png(grid))

    st.subheader("Each run")
    st.caption(
        "Each column appears as soon as its run is explained. Integrated Gradients (baseline: "
        "the training mean image), Saliency |d logit / d x| and Grad-CAM for the explained "
        "class; red = more evidence."
    )
    # Always drawn (also while the maps compute): Streamlit forgets a widget not drawn in a run.
    branch_cams = st.toggle("Grad-CAM per branch", key="attr_branch_cams", help=BRANCH_CAMS_HELP)
    if branch_cams and (note := _no_branch_cams_note(infos, labels, results)):
        st.caption(note)
    rows = []
    for col, info in zip(st.columns(len(infos)), infos):
        label = labels[str(info.path)]
        t = tasks[str(info.path)]
        with col:
            st.markdown(f"#### {label}")
            if isinstance(t, str):
                st.error(f"{label}: {t}")
                continue
            e = results.get(str(info.path))
            if e is None:  # (one that finished since the input row: shown on the next rerun)
                problem = _failure(t.quick) if t.quick.done() else None
                if problem:  # one run's failure must not hide the others
                    st.error(f"{label}: {problem}")
                else:
                    st.info(_queue_note(t.keys["quick"], "Prediction and maps"))
                continue
            _show_run(info, e, true_class, t, branch_cams)
            r = e.report
            rows += [
                {"run": label, "class": c, "probability": float(p)}
                for c, p in zip(r["classes"], r["probs"])
            ]
    if rows and all_done:
        download_df(pd.DataFrame(rows), f"probabilities_{digest[:8]}")


def _no_branch_cams_note(infos, labels, results: dict[str, ImageExplanation]) -> str | None:
    """One line naming the explained runs that have no per-branch Grad-CAM, and why; None when
    every explained run has it. csba.attributions.explain makes per-branch maps only for heads
    with attention gates (csba: one per branch; class_heads: the explained class's head)."""
    without = [
        labels[str(i.path)]
        for i in infos
        if str(i.path) in results
        and not any(k.startswith("gradcam_") for k in results[str(i.path)].maps)
    ]
    if not without:
        return None
    them = "its head has" if len(without) == 1 else "their heads have"
    return (
        f"No per-branch Grad-CAM for {', '.join(without)}: {them} no attention gates. "
        "Per-branch Grad-CAM is made only for gated heads (csba: one map per branch; "
        "class_heads: the explained class's head)."
    )


def _show_run(info, e: ImageExplanation, true_class: str | None, t: _RunTasks, branch_cams: bool):
    """One run's column: prediction, typicality, branch overlap, then the maps as one image list
    (one element, not one per map: the browser lays out each element; PNGs encoded once per
    result, see _shown)."""
    r = e.report
    pred = r["classes"][r["pred"]]
    verdict = ""
    if true_class is not None:
        verdict = " (correct)" if pred == true_class else f" (true: {true_class})"
    st.markdown(
        f"Predicted **{pred}**, p = {r['probs'][r['pred']]:.2f}{verdict}  \n"
        f"Explaining **{r['classes'][e.target]}**"
    )
    notes = []
    if not t.typicality.done():
        notes.append(_queue_note(t.keys["typicality"], "Typicality"))
    else:
        typ = _failure(t.typicality) or t.typicality.result()
        if isinstance(typ, str):
            notes.append(typ if typ.startswith("typicality") else f"typicality: {typ}")
        elif typ.outside:
            st.warning(typ.message)
        else:
            notes.append(typ.message)
    if r["attention"] is None:
        notes.append(f"{info.meta['variant']}: no attention gates.")
    else:
        notes.append(_overlap_text(e))
    overlays, titles, made_by = dict(e.overlays), dict(e.titles), dict.fromkeys(e.overlays, "quick")
    if not t.slow.done():
        notes.append(_queue_note(t.keys["slow"], "Integrated Gradients"))
    elif problem := _failure(t.slow):
        notes.append(f"Integrated Gradients: {problem}")
    else:
        overlays |= t.slow.result().overlays
        titles |= t.slow.result().titles
        made_by |= dict.fromkeys(t.slow.result().overlays, "slow")
    st.caption("  \n".join(notes))
    shown = [k for k in METHODS if k in overlays]
    if branch_cams:
        shown += [k for k in e.maps if k.startswith("gradcam_") and k in overlays]
    if shown:
        st.image(
            [_shown(t.keys[made_by[k]], k, overlays[k]) for k in shown],
            width=SHOW_PX,
            caption=[titles[k] for k in shown],
        )


@st.cache_resource(show_spinner=False, max_entries=2048)
def _shown(key: tuple, name: str, _pixels: np.ndarray) -> bytes:
    """PNG of a map's display copy, encoded once per (computation key, map name), not on every
    rerun (a column's maps are redrawn on each of the page's reruns while others compute)."""
    buf = io.BytesIO()
    _big(_pixels).save(buf, format="PNG")
    return buf.getvalue()


main()
