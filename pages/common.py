"""Shared dashboard helpers: finding runs, picking them in the sidebar, caching, downloads.

The only module of the dashboard that knows where runs live. Every page imports from here:

* :func:`runs_root` / :func:`all_runs` - the run folders found (cached on run.json mtimes, so a
  run that finishes while the app is open appears on the next rerun without a restart);
* :func:`select_runs` - the sidebar dataset picker and run multiselect;
* :func:`get_run` - a loaded :class:`csba.store.Run` (model rebuilt once, cached as a resource);
* :func:`download_df` / :func:`download_fig` - CSV for tables, HTML (plotly) or PNG (matplotlib)
  for figures, generated only when the button is clicked;
* :func:`clear_run_caches` - to call after a training job finishes.

Streamlit lives here and in the page files only; ``csba/`` stays free of it.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import streamlit as st

from csba.identity import DEFAULT_BACKBONE, backbone_name, dataset_name, image_size, run_status
from csba.identity import run_label as identity_label
from csba.jobs import JobManager
from csba.models import list_models
from csba.paired import DEFAULT_BAR
from csba.stats import BOOT_SEED, N_RESAMPLES
from csba.store import WEIGHTS, Run, RunError, RunInfo, list_runs, load_run, read_run_json
from pages import fig_base  # noqa: F401 (plotly's default template: pages/training.py's too)
from pages.figcache import FIGURE_BUILDS

__all__ = [
    "FIGURE_BUILDS",
    "REPO_ROOT",
    "VARIANT_ORDER",
    "all_runs",
    "clear_run_caches",
    "clicked_cell",
    "compare",
    "dataset_name",
    "default_runs",
    "default_size",
    "diagnostics_of",
    "download_df",
    "download_fig",
    "extra_runs_input",
    "get_run",
    "image_size",
    "is_usable",
    "job_manager",
    "not_diagnosed",
    "parameter_table",
    "plotly_chart",
    "run_label",
    "run_labels",
    "run_stamp",
    "runs_root",
    "seed_mean_bootstrap",
    "select_runs",
    "sort_key",
]


def _route_through_app() -> None:
    """Make app.py's ``st.navigation`` route the request that started this process.

    A ``pages/`` folder beside app.py puts Streamlit in its old multipage mode until the first
    ``st.navigation`` call. When a fresh server's first request is a page's own URL (a bookmark
    of /protocols, say), that mode runs ``pages/<name>.py`` alone: app.py, and with it
    ``st.navigation``, never runs, and every session then gets a sidebar listing each module in
    ``pages/`` (common and figures too) until someone opens the root URL. Every page imports
    this module first, so here we leave that mode and rerun, which runs app.py. Uses
    Streamlit's internal flag (what ``st.navigation`` itself sets); if it moves, nothing
    happens."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if getattr(PagesManager, "uses_pages_directory", None):
        PagesManager.uses_pages_directory = False
        st.rerun()


_route_through_app()

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANT_ORDER = tuple(list_models())  # the registry's order: the paper's five first
EXTRA_KEY = "csba_extra_runs"  # session-state key of the sidebar "add run folders" input
META = "run.json"


# --------------------------------------------------------------------------------------------
# Where runs live
# --------------------------------------------------------------------------------------------


def _resolve(p: str | os.PathLike) -> Path:
    p = Path(p).expanduser()
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p.resolve()


def runs_root() -> Path:
    """``$CSBA_RUNS_ROOT`` or ``checkpoints``, relative paths taken from the repository root."""
    return _resolve(os.environ.get("CSBA_RUNS_ROOT") or "checkpoints")


def data_root() -> Path:
    """``$CSBA_DATA_ROOT`` or ``data``: typed dataset folders must lie under it."""
    return _resolve(os.environ.get("CSBA_DATA_ROOT") or "data")


def _allowed_roots() -> list[Path]:
    return [runs_root(), data_root()]


def _parse_extra(text: str) -> tuple[list[Path], list[str]]:
    """Split the sidebar text into allowed folders and one-line refusals."""
    paths, errors = [], []
    roots = _allowed_roots()
    for raw in re.split(r"[\n,;]+", text or ""):
        raw = raw.strip().strip("'\"")
        if not raw:
            continue
        p = _resolve(raw)
        if not any(p == r or p.is_relative_to(r) for r in roots):
            where = " or ".join(f"'{r}'" for r in roots)
            errors.append(f"'{raw}' refused: run folders must lie under {where}")
        elif not p.is_dir():
            errors.append(f"'{raw}': no such folder")
        else:
            paths.append(p)
    return paths, errors


def extra_runs_input() -> None:
    """The sidebar text input for extra run folders (rendered once per script run by app.py)."""
    roots = " or ".join(str(r) for r in _allowed_roots())
    st.sidebar.text_input(
        "Add run folders",
        key=EXTRA_KEY,
        placeholder="path/to/run, path/to/folder_of_runs",
        help=f"Comma-separated folders holding run.json (or folders of runs), under {roots}.",
    )
    _, errors = _parse_extra(st.session_state.get(EXTRA_KEY, ""))
    for e in errors:
        st.sidebar.error(e)


def _scan(roots: Sequence[Path]) -> tuple[tuple[str, float], ...]:
    """Every run.json under ``roots`` with its mtime (the cache key of :func:`all_runs`)."""
    stamps = {}
    for root in roots:
        if not root.is_dir():
            continue
        for meta in root.rglob(META):
            try:
                stamps[str(meta.parent)] = meta.stat().st_mtime_ns
            except OSError:
                continue
    return tuple(sorted(stamps.items()))


# cache_resource, not cache_data: the RunInfo list (every run.json, 5 MB for the shipped runs) is
# handed out as is instead of unpickled on every rerun; pages read it and never change it.
@st.cache_resource(show_spinner=False, max_entries=8)
def _read_runs(roots: tuple[str, ...], stamps: tuple[tuple[str, float], ...]) -> list[RunInfo]:
    del stamps  # only part of the cache key
    seen: dict[str, RunInfo] = {}
    for root in roots:
        for info in list_runs(root):
            seen.setdefault(str(Path(info.path).resolve()), info)
    return sorted(seen.values(), key=lambda i: str(i.path))


def all_runs() -> list[RunInfo]:
    """Runs under :func:`runs_root` plus the folders added in the sidebar (errors included)."""
    extra, _ = _parse_extra(st.session_state.get(EXTRA_KEY, ""))
    roots = [runs_root(), *extra]
    return _read_runs(tuple(str(r) for r in roots), _scan(roots))


def run_ref(info: RunInfo) -> str | None:
    """A run's name in a link (query parameter ``run``): its folder relative to the runs root,
    POSIX; None for a run outside it (added in the sidebar, which exists in that browser
    session only)."""
    try:
        return Path(info.path).resolve().relative_to(runs_root().resolve()).as_posix()
    except (OSError, ValueError):
        return None


def linked_run(ref: str) -> RunInfo | None:
    """The known run a link names: compared with every run's :func:`run_ref`, never joined to
    a path, so no string reaches a folder that is not a listed run."""
    for info in all_runs():
        if info.meta is not None and run_ref(info) == ref:
            return info
    return None


def attribution_link(info: RunInfo, split: str, index: int) -> str | None:
    """The Attributions page on one dataset image of a run (percent-encoded query: run, split,
    index), or None for a run outside the runs root."""
    from urllib.parse import urlencode

    ref = run_ref(info)
    if ref is None:
        return None
    return "attributions?" + urlencode({"run": ref, "split": split, "index": int(index)})


RECORDS = REPO_ROOT / "benchmarks" / "results"  # our archived runs: run.json + logs, no weights


@st.cache_resource(show_spinner="Unpacking the bundled run records...")
def bundled_records() -> dict[Path, tuple[str, list[RunInfo]]]:
    """``{folder: (label, its runs)}`` for ``benchmarks/results/*.tgz``, unpacked once per server
    into a temporary folder. These are the project's own archives of runs whose weights are not
    shipped (e.g. the 224 px protocol on a GPU); pages that only read run.json (Protocols) can
    pair them with other runs. An archive that cannot be read is skipped."""
    out: dict[Path, tuple[str, list[RunInfo]]] = {}
    for archive in sorted(RECORDS.glob("*.tgz")):
        dest = Path(tempfile.mkdtemp(prefix=f"csba-{archive.stem}-"))
        atexit.register(shutil.rmtree, dest, ignore_errors=True)  # gone with the server
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")  # refuses links, absolute paths and ../
        except (OSError, tarfile.TarError):
            continue
        for info in list_runs(dest):
            if info.meta is not None:
                folder = Path(info.path).parent
                out.setdefault(folder, (f"{archive.stem}/{folder.name}", []))[1].append(info)
    return out


def run_stamp(info_or_path: RunInfo | str | os.PathLike) -> tuple[str, int]:
    """``(path, run.json mtime)``: a cache key that changes when the run is rewritten."""
    path = Path(getattr(info_or_path, "path", info_or_path))
    try:
        return str(path), (path / META).stat().st_mtime_ns
    except OSError:
        return str(path), 0


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def _seed(meta: dict) -> int:
    try:
        return int((meta.get("config") or {}).get("seed", 0))
    except (TypeError, ValueError):
        return 0


@st.cache_resource(show_spinner=False)
def job_manager() -> JobManager:
    """The process-wide training job queue (shared by every tab and session)."""
    return JobManager()


def busy_runs() -> dict[str, str]:
    """``{resolved run folder: "running" | "diagnosing"}``: runs the Training page is still
    writing (their run.json, if any, is not final)."""
    return job_manager().busy_run_dirs()


def run_state(info: RunInfo, busy: dict[str, str] | None = None) -> str:
    """``completed`` for a run that ran to its end; else why not: ``cancelled``,
    ``interrupted``, ``running`` or ``diagnosing`` (still being written by the Training page)."""
    busy = busy_runs() if busy is None else busy
    state = busy.get(str(Path(info.path).resolve()))
    return state or run_status(info.meta or {})


def is_usable(info: RunInfo, busy: dict[str, str] | None = None) -> bool:
    """The run finished and nothing is writing it: the only kind a page chooses by default."""
    return info.meta is not None and run_state(info, busy) == "completed"


def run_label(info: RunInfo, *, protocol: bool = False, busy: dict[str, str] | None = None) -> str:
    """``"baseline s0 (resnet18, 128px)"`` (csba.identity.run_label): the seed always, the
    backbone when not the default, ``[cancelled]`` / ``[running]`` for a run not finished."""
    m = info.meta or {}
    if "variant" not in m:
        return f"? s{_seed(m)}"
    state = run_state(info, busy)  # the stored status, or the Training page's live one
    label = identity_label({**m, "status": "completed"}, protocol=protocol)
    return label if state == "completed" else f"{label} [{state}]"


def run_labels(infos: Sequence[RunInfo]) -> dict[str, str]:
    """Path -> label, unique: runs that share a label are told apart by their protocol
    settings, then by their parent folder."""
    busy = busy_runs()
    labels = {str(i.path): run_label(i, busy=busy) for i in infos}

    def clashes() -> set[str]:
        counts = pd.Series(list(labels.values())).value_counts()
        return {lab for lab, n in counts.items() if n > 1}

    for pass_ in ("protocol", "folder"):
        dup = clashes()
        if not dup:
            break
        for i in infos:
            lab = labels[str(i.path)]
            if lab not in dup:
                continue
            if pass_ == "protocol":
                labels[str(i.path)] = run_label(i, protocol=True, busy=busy)
            else:
                labels[str(i.path)] = f"{lab} [{Path(i.path).parent.name}/{Path(i.path).name}]"
    return labels


def sort_key(info: RunInfo):
    """Variant in the registry's order, the default backbone before others, then seed, image
    size and path."""
    m = info.meta or {}
    v = m.get("variant", "")
    order = VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER)
    bb = backbone_name(m) if v else ""
    return (order, v, bb != DEFAULT_BACKBONE, bb, _seed(m), image_size(m) or 0, str(info.path))


def default_size(infos: Sequence[RunInfo], busy: dict[str, str] | None = None) -> int | None:
    """The image size whose runs a page shows by default: the size ``report`` summarises
    (docs/results.md), i.e. the one with the most finished runs, ties to the larger."""
    busy = busy_runs() if busy is None else busy
    counts: dict[int, int] = {}
    for i in infos:
        size = image_size(i.meta or {})
        if size and is_usable(i, busy):
            counts[size] = counts.get(size, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda s: (counts[s], s))


def default_runs(infos: Sequence[RunInfo], *, every: bool = False) -> list[RunInfo]:
    """The runs a picker starts with: finished runs at :func:`default_size`; ``every`` gives all
    of them, else one per variant (the default backbone and the smallest seed first)."""
    busy = busy_runs()
    size = default_size(infos, busy)
    pool = [i for i in infos if is_usable(i, busy) and image_size(i.meta) == size]
    if every:
        return pool
    out, seen = [], set()
    for i in sorted(pool, key=sort_key):
        if i.meta["variant"] not in seen:
            seen.add(i.meta["variant"])
            out.append(i)
    return out


# --------------------------------------------------------------------------------------------
# Picking runs
# --------------------------------------------------------------------------------------------

NO_RUNS = (
    "No runs found under `{root}`. Train one on the **Training** page, or from a shell: "
    "`python -m csba train --epochs 2` (then reload this page). Runs elsewhere can be added in "
    "the sidebar, or point `CSBA_RUNS_ROOT` at their folder."
)


def has_weights(info: RunInfo) -> bool:
    """The run folder holds its model's weights (run records shipped without them do not)."""
    return (Path(info.path) / WEIGHTS).is_file()


def _dataset_runs(key: str, needs_weights: bool) -> list[RunInfo]:
    """The sidebar's dataset picker: the readable runs of the chosen dataset, sorted."""
    good = sorted((i for i in all_runs() if i.meta is not None), key=sort_key)
    if needs_weights:
        records = [i for i in good if not has_weights(i)]
        good = [i for i in good if has_weights(i)]
        if records:
            st.sidebar.caption(
                f"{len(records)} run record(s) without weights not listed: this page needs the "
                "model (docs/results.md gives the command that retrains a shipped record)."
            )
    if not good:
        st.info(NO_RUNS.format(root=runs_root()))
        return []
    datasets = sorted({dataset_name(i.meta) for i in good})
    if len(datasets) > 1:
        ds = st.sidebar.selectbox("Dataset", datasets, key=f"{key}_dataset")
    else:
        ds = datasets[0]
        st.sidebar.caption(f"Dataset: **{ds}**")
    return [i for i in good if dataset_name(i.meta) == ds]


def select_runs(
    key: str,
    *,
    multi: bool = True,
    label: str = "Runs",
    default_all: bool = False,
    needs_weights: bool = False,
) -> list[RunInfo]:
    """Sidebar dataset picker, then the runs of that dataset (sorted by variant, backbone,
    seed, size).

    The default choice is what docs/results.md reports: finished runs at the most common image
    size (:func:`default_runs`; ``default_all``: all of them, else one per variant). Runs that
    did not finish are listed with their state in brackets and never chosen by default.
    ``needs_weights``: offer only runs whose folder holds the model (the page rebuilds it); the
    sidebar says how many run records without weights it left out. Returns the chosen
    :class:`RunInfo` objects (all with metadata), or ``[]`` after showing an ``st.info`` when
    there is no usable run.
    """
    runs = _dataset_runs(key, needs_weights)
    if not runs:
        return []
    labels = run_labels(runs)
    options = [str(i.path) for i in runs]
    by_path = {str(i.path): i for i in runs}
    default = [str(i.path) for i in default_runs(runs, every=default_all)]
    if not multi:
        chosen = st.sidebar.selectbox(
            label,
            options,
            index=options.index(default[0]) if default else 0,
            format_func=labels.__getitem__,
            key=f"{key}_run",
        )
        return [by_path[chosen]] if chosen else []
    chosen = st.sidebar.multiselect(
        label, options, default=default, format_func=labels.__getitem__, key=f"{key}_runs"
    )
    unfinished = sum(not is_usable(i) for i in runs)
    if unfinished:
        st.sidebar.caption(
            f"{unfinished} run(s) that did not finish are listed with their state in brackets "
            "and not chosen by default."
        )
    if not chosen:
        st.info("Choose at least one run in the sidebar.")
    return [by_path[p] for p in chosen]


# --------------------------------------------------------------------------------------------
# Loaded runs and diagnostics
# --------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading model...", max_entries=16)
def _load_run(path: str, sha: str) -> Run:
    del sha  # only part of the cache key
    return load_run(path)


def get_run(path: str | os.PathLike) -> Run | None:
    """The run with its model rebuilt (cached per path and weights checksum), or None after a
    one-line ``st.error``."""
    try:
        meta = read_run_json(path)
        return _load_run(str(Path(path).resolve()), str(meta.get("weights_sha256") or ""))
    except RunError as e:
        st.error(str(e))
    except Exception as e:  # a broken run must not take the page down
        st.error(f"'{path}': cannot load the run ({type(e).__name__}: {e})")
    return None


def diagnostics_of(meta: dict) -> dict | None:
    """The run's ``diagnostics`` block, or None when it was never diagnosed."""
    d = meta.get("diagnostics")
    return d if isinstance(d, dict) and d else None


def not_diagnosed(info: RunInfo, what: str = "") -> None:
    """The standard note for a run without (part of) its diagnostics."""
    part = f" ({what})" if what else ""
    st.info(
        f"**{run_label(info)}**: not diagnosed yet{part}: run `python -m csba diagnose {info.path}`"
    )


# --------------------------------------------------------------------------------------------
# Figures, built once per inputs
# --------------------------------------------------------------------------------------------

# The figure builders are cached where they are defined (pages/fig_*.py, @cached_figure of
# pages.figcache): a page imports them by name. FIGURE_BUILDS counts the figures actually built
# (a cached one is not); tests read it here.


def clear_run_caches() -> None:
    """Forget cached run lists, loaded models and per-run results (after a training job)."""
    _read_runs.clear()
    _compare.clear()
    _seed_mean.clear()
    _load_run.clear()


# --------------------------------------------------------------------------------------------
# Cached computations (keyed on run.json mtimes, so a rewritten run is recomputed). Results are
# read-only, so they are shared (cache_resource) rather than unpickled per rerun (cache_data):
# the copy cost a fifth of the Per-class F1 page's warm script time.
# --------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Bootstrapping...", max_entries=32)
def _compare(stamps: tuple[tuple[str, int], ...], n_resamples: int, seed: int) -> dict:
    from csba.report import compare_runs

    return compare_runs([p for p, _ in stamps], n_resamples=n_resamples, seed=seed)


def compare(
    paths: Sequence[str | os.PathLike], n_resamples: int = N_RESAMPLES, seed: int = BOOT_SEED
) -> dict:
    """:func:`csba.report.compare_runs` (first path = reference), cached on the runs' mtimes.

    Raises RunError / ValueError like compare_runs (the page shows them in one line)."""
    return _compare(tuple(run_stamp(p) for p in paths), int(n_resamples), int(seed))


@st.cache_resource(show_spinner="Summarising the runs...", max_entries=16)
def _results(root: str, dataset: str, stamps, n_resamples: int) -> tuple[str, dict]:
    from csba.report import render_results_markdown

    del stamps  # only part of the cache key
    # ELPV runs are held to the shipping bar (issue 8), as in the README; other data to none.
    # The section's command (bar flags included) is the one render_results_markdown writes.
    bar = DEFAULT_BAR if dataset == "elpv" else None
    return render_results_markdown(root, dataset, n_resamples=n_resamples, bar=bar)


def results_summary(dataset: str, n_resamples: int = N_RESAMPLES) -> tuple[str, dict]:
    """:func:`csba.report.render_results_markdown` for the runs of ``dataset`` under
    :func:`runs_root` (the README's results section, verdict included), cached on the runs'
    mtimes. Raises ValueError when there are no usable runs of ``dataset``."""
    root = runs_root()
    return _results(str(root), dataset, _scan([root]), int(n_resamples))


@st.cache_resource(show_spinner="Pairing the runs...", max_entries=16)
def _pair(folder_a: str, folder_b: str, dataset: str, stamps, bar, n_resamples: int) -> dict:
    from csba.paired import compare_protocols

    return compare_protocols(folder_a, folder_b, dataset=dataset, bar=bar, n_resamples=n_resamples)


def pair_folders(
    folder_a: str | os.PathLike,
    folder_b: str | os.PathLike,
    dataset: str,
    bar: tuple[float, float],
    n_resamples: int = N_RESAMPLES,
) -> dict:
    """:func:`csba.paired.compare_protocols` of two run folders, cached until a run changes."""
    stamps = _scan([Path(folder_a), Path(folder_b)])
    return _pair(str(folder_a), str(folder_b), dataset, stamps, tuple(bar), n_resamples)


@st.cache_resource(show_spinner="Bootstrapping seed means...", max_entries=64)
def _seed_mean(stamps, ref_stamps, n_resamples: int, seed: int) -> dict:
    from csba.stats import bootstrap_seed_mean

    def preds(stamps_):
        out = []
        for path, _ in stamps_:
            p = read_run_json(path)["predictions"]["test"]
            out.append((p["y_true"], p["y_pred"]))
        return out

    group = preds(stamps)
    ref = preds(ref_stamps) if ref_stamps else None
    y_true = group[0][0]
    num_classes = len(read_run_json(stamps[0][0])["classes"])
    for yt, _ in group + (ref or []):
        if list(yt) != list(y_true):
            raise ValueError("the runs were evaluated on different test sets")
    return bootstrap_seed_mean(
        y_true,
        [yp for _, yp in group],
        num_classes,
        n_resamples,
        seed,
        reference=[yp for _, yp in ref] if ref else None,
    )


def seed_mean_bootstrap(
    infos: Sequence[RunInfo | str],
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOT_SEED,
    reference: Sequence[RunInfo | str] | None = None,
) -> dict:
    """Bootstrap interval of the metrics averaged over ``infos`` (the seeds of one variant on one
    test set), or of its paired difference to the mean over ``reference``:
    :func:`csba.stats.bootstrap_seed_mean`, cached on the runs' mtimes."""
    ref = tuple(run_stamp(i) for i in reference) if reference else ()
    return _seed_mean(tuple(run_stamp(i) for i in infos), ref, int(n_resamples), int(seed))


def timm_picker(where, key: str, multi: bool = False) -> list[str]:
    """timm backbones by name search (timm has ~1,400 models: pickers search rather than list
    them): a text box, then a pick among its first 50 matches (``multi``: several). Returns the
    picked ``timm:NAME``s; [] until one is picked."""
    from csba.timm_backbone import search_timm

    query = where.text_input(
        "timm backbone: name contains",
        key=f"{key}_q",
        placeholder="e.g. resnet10t, efficientnet_b0, convnext",
        help="Any timm model that builds with features_only: --backbone timm:NAME",
    )
    kept = st.session_state.get(key) or []
    kept = kept if isinstance(kept, list) else [kept]
    found = search_timm(query)
    hits = list(dict.fromkeys([*found, *kept]))  # a kept pick stays an option
    if query.strip() and not found:
        where.caption(f"No timm model name contains '{query.strip()}' (or timm is not installed).")
    if not hits:
        return []
    if multi:
        return where.multiselect("timm backbones", hits, key=key)
    pick = where.selectbox("timm model", hits, key=key)
    return [pick] if pick else []


@st.cache_resource(show_spinner="Counting parameters...")
def parameter_table(num_classes: int, backbones: tuple[str, ...] = ()) -> pd.DataFrame:
    """Paper Table 2: every registered variant's trainable parameters at ``num_classes`` on
    trifire ("parameters", "vs baseline"), plus one column per other backbone asked for."""
    from csba.models import list_models, model_info, parameter_counts

    counts = parameter_counts(
        int(num_classes), ["trifire", *[b for b in backbones if b != "trifire"]]
    )
    rows = []
    for name in list_models():
        info = model_info(name)
        row = {
            "variant": name,
            "head": info["head"],
            "method": info["method"],
            "parameters": counts["trifire"].get(name),
            "loss": info["loss"],
            "description": info["description"],
        }
        row.update({f"on {b}": counts[b].get(name) for b in counts if b != "trifire"})
        rows.append(row)
    df = pd.DataFrame(rows)
    base = df.loc[df["variant"] == "baseline", "parameters"]
    if len(base):
        df.insert(4, "vs baseline", df["parameters"] - int(base.iloc[0]))
    return df


# --------------------------------------------------------------------------------------------
# Sections on demand
# --------------------------------------------------------------------------------------------


def sections(names: Sequence[str], key: str, keep: Sequence[str] = ()):
    """Tabs of which only the open one runs: returns (its name, its container).

    ``st.tabs(on_change="rerun")``: a page builds and sends the figures of one section, not of
    all of them (the browser's drawing of many plotly figures was most of a view's time). The
    open tab is ``st.session_state[key]`` (a name), so a test or a link can choose it. ``keep``:
    widget keys of the tabs (ones without an explicit default) whose choice survives a visit to
    another tab; Streamlit forgets the state of a widget that a run did not draw.
    """
    for k in keep:
        if k in st.session_state:
            st.session_state[k] = st.session_state[k]
    tabs = st.tabs(list(names), key=key, on_change="rerun")
    for name, tab in zip(names, tabs, strict=True):
        if tab.open:
            return name, tab
    return names[0], tabs[0]  # not reached: one tab is always open


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "download"


def plotly_chart(fig, key: str, on_click: Callable[[], None] | None = None, **kwargs) -> None:
    """``st.plotly_chart`` drawn with the figure's own template (pages.fig_base: plotly_white,
    our font) rather than Streamlit's theme, which the browser merges into every figure before
    drawing it: about a quarter of a chart's drawing time (benchmarks/bench_dashboard.py, the
    'cpu' column). No plotly logo in the toolbar. ``on_click``: called when a click selects a
    point (a cell of a heatmap drawn with pages.fig_base.clickable_cells: read it with
    :func:`clicked_cell`)."""
    if on_click is not None:
        kwargs |= {"on_select": on_click, "selection_mode": "points"}
    st.plotly_chart(fig, key=key, theme=None, config={"displaylogo": False}, **kwargs)


def clicked_cell(key: str) -> tuple[int, int, int] | None:
    """(tag, row i, column j) of the heatmap cell last clicked in chart ``key`` (see
    pages.fig_base.clickable_cells), or None."""
    state = st.session_state.get(key) or {}
    points = (state.get("selection") or {}).get("points") or []
    data = points[0].get("customdata") if points else None
    if isinstance(data, dict):  # a row of a binary-sent array comes back as {"0": v, ...}
        data = [data.get(str(k), data.get(k)) for k in range(3)]
    try:
        return int(data[0]), int(data[1]), int(data[2])
    except (IndexError, KeyError, TypeError, ValueError):  # no cell, or not our overlay
        return None


def download_df(df: pd.DataFrame, name: str, *, index: bool = False) -> None:
    """A "CSV" download button for a table."""
    fname = _safe_name(name)
    st.download_button(
        "Download CSV",
        data=lambda: df.to_csv(index=index).encode(),  # written only when clicked
        file_name=f"{fname}.csv",
        mime="text/csv",
        key=f"dl_csv_{fname}",
        on_click="ignore",
        icon=":material/download:",
    )


def _fig_bytes(fig) -> tuple[bytes, str, str]:
    if hasattr(fig, "to_html"):  # plotly: self-contained, nothing fetched from the internet
        return fig.to_html(include_plotlyjs=True, full_html=True).encode(), "html", "text/html"
    buf = io.BytesIO()  # matplotlib
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    return buf.getvalue(), "png", "image/png"


def download_fig(fig, name: str) -> None:
    """A download button for a figure: HTML for plotly (plotly.js embedded), PNG for matplotlib.

    The file is generated only when the button is clicked.
    """
    fname = _safe_name(name)
    is_plotly = hasattr(fig, "to_html")
    ext, mime = ("html", "text/html") if is_plotly else ("png", "image/png")
    st.download_button(
        f"Download figure ({ext.upper()})",
        data=lambda: _fig_bytes(fig)[0],
        file_name=f"{fname}.{ext}",
        mime=mime,
        key=f"dl_fig_{fname}",
        on_click="ignore",
        icon=":material/download:",
    )
