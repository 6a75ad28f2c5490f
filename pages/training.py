"""Training: start short runs in a background thread; live progress, curves, cancel.

Widgets -> :class:`csba.jobs.JobManager` (one per server process, from ``st.cache_resource``, so
jobs survive page changes, reloads and other tabs) -> a fragment that polls its snapshot every
second while something is queued or running. No ``st.*`` call ever happens in the worker thread.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from csba import list_models, model_info
from csba.backbones import list_backbones
from csba.config import TrainConfig
from csba.data import DATASETS
from csba.heads import list_heads
from csba.jobs import FINISHED, Job, JobManager, RunProgress, check_data_root, default_device
from csba.methods import METHODS, list_methods
from csba.models import describe_heads, variant_name
from csba.options import train_option
from pages.common import clear_run_caches, job_manager, plotly_chart, runs_root, timm_picker
from pages.common import data_root as allowed_data_root

TIMM = "timm (search by name)"  # the backbone picker's entry for timm:NAME
NEEDS_ROOT = {"imagefolder": "a folder of class folders", "cifar10-lt": "CIFAR-10 batches"}
DATASET_HELP = {
    "elpv": "2,624 EL images of solar cells, 4 classes (installed with the elpv-dataset package)",
    "elpv8": "ELPV, 8 classes: defect probability x mono/poly",
    "imagefolder": "your own folder with one sub-folder per class",
    "cifar10-lt": "a local copy of CIFAR-10, made long-tailed (imbalance ratio 100)",
}
ICON = {
    "queued": ":material/schedule:",
    "running": ":material/autorenew:",
    "diagnosing": ":material/query_stats:",
    "completed": ":material/check_circle:",
    "cancelled": ":material/cancel:",
    "failed": ":material/error:",
}
VERSION_KEY = "_training_runs_version"


@st.cache_resource(show_spinner=False)
def device_name() -> str:
    return default_device()


# ---- the form --------------------------------------------------------------------------------


def _help(name: str) -> str:
    """A widget's help: the command line's help of the same TrainConfig field (csba.options)."""
    text = train_option(name).help_text()
    return text[0].upper() + text[1:]


def _settings() -> tuple[list[TrainConfig] | None, str | None]:
    """The form's widgets -> configs, or None and a one-line reason."""
    c1, c2, c3 = st.columns([2, 3, 2])
    dataset, data_root, allowed = _dataset_widgets(c1, c2)
    presets = c3.multiselect(
        "Variants",
        list_models(),
        default=["baseline", "csba"],
        help="Presets, each a head with a method:\n"
        + "\n".join(f"* **{v}**: {model_info(v)['description']}" for v in list_models()),
        key="train_variants",
    )
    pairs, why = _head_method_widgets()
    variants = list(dict.fromkeys([*presets, *pairs]))  # a pair equal to a preset once
    c4, c5, c6, c7 = st.columns(4)
    epochs = c4.number_input("Epochs", 1, 300, 3, key="train_epochs", help=_help("epochs"))
    size = c5.number_input(
        "Image size (px)", 16, 512, 64, step=16, key="train_size", help=_help("image_size")
    )
    seed = c6.number_input("Seed", 0, 10_000, 0, key="train_seed", help=_help("seed"))
    dev = _device_widget(c7)
    with st.expander("More settings (the paper's protocol by default)"):
        more = _more_settings()
    if why:  # after every widget, so the form keeps its shape
        return None, why
    if not variants:
        return None, "choose at least one variant, or a head and a method"
    root_str = None
    if dataset in NEEDS_ROOT:
        try:
            root_str = str(check_data_root(data_root, allowed))
        except ValueError as e:
            return None, str(e)
    common = dict(
        dataset=dataset,
        seed=int(seed),
        image_size=int(size),
        data_root=root_str,
        epochs=int(epochs),
        device=dev,
        out=str(runs_root()),
        **more,
    )
    return [TrainConfig(variant=v, **common) for v in variants], None


def _dataset_widgets(c1, c2) -> tuple[str, str | None, str]:
    """Dataset picker and, where it needs one, its data root: (dataset, root, allowed root)."""
    dataset = c1.selectbox(
        "Dataset",
        DATASETS,
        index=DATASETS.index("elpv"),
        format_func=lambda d: d,
        help="\n".join(f"* **{k}**: {v}" for k, v in DATASET_HELP.items()),
        key="train_dataset",
    )
    allowed = str(allowed_data_root())  # typed folders must lie under it (never the whole disk)
    data_root = None
    if dataset in NEEDS_ROOT:
        data_root = c2.text_input(
            f"Data root ({NEEDS_ROOT[dataset]})",
            value=allowed or "",
            key=f"train_root_{dataset}",
            help="A folder on this server"
            + f", inside `{allowed}` (set CSBA_DATA_ROOT to change it)"
            + ". Nothing is downloaded.",
        )
    else:
        c2.caption(f"**{dataset}**: {DATASET_HELP[dataset]}.")
    return dataset, data_root, allowed


def _head_method_widgets() -> tuple[list[str], str | None]:
    """Heads x methods beyond the presets: every chosen head with every chosen method, under
    its canonical name (a preset's, else HEAD+METHOD); or a one-line reason."""
    h1, h2, h3 = st.columns([2, 2, 3])
    heads = h1.multiselect(
        "Also: heads",
        list_heads(),
        key="train_heads",
        help="Classifier topologies (python -m csba parts):\n"
        + "\n".join(f"* **{k}**: {v}" for k, v in describe_heads().items()),
    )
    methods = h2.multiselect(
        "× methods",
        list_methods(),
        key="train_methods",
        help="Training recipes, each with its paper:\n"
        + "\n".join(f"* **{k}**: {m.description} ({m.paper})" for k, m in METHODS.items()),
    )
    if bool(heads) != bool(methods):
        return [], "choose at least one head and one method to combine (or neither)"
    pairs = [variant_name(h, m) for h in heads for m in methods]
    if pairs:
        h3.caption("Trains " + ", ".join(f"**{p}**" for p in pairs))
    return pairs, None


def _device_widget(col) -> str:
    device = device_name()
    if device.startswith("cuda"):
        label = col.radio("Device", [f"GPU: {device}", "CPU"], key="train_device")
        return "cuda" if label.startswith("GPU") else "cpu"
    col.markdown("**Device**")
    col.caption("CPU: no GPU found")
    return "cpu"


def _more_settings() -> dict:
    """The expander's settings, as TrainConfig fields."""
    d1, d2, d3, d4, d5 = st.columns(5)
    out = {
        "batch_size": int(
            d1.number_input("Batch size", 1, 1024, 32, key="train_batch", help=_help("batch_size"))
        ),
        "lr": float(
            d2.number_input(
                "Learning rate",
                1e-6,
                1.0,
                1e-4,
                step=1e-5,
                format="%.0e",
                key="train_lr",
                help=_help("lr"),
            )
        ),
        "patience": int(
            d3.number_input(
                "Early-stop patience", 1, 300, 20, key="train_patience", help=_help("patience")
            )
        ),
        "precision": d4.selectbox(
            "Precision",
            train_option("precision").choices,
            key="train_precision",
            help=_help("precision"),
        ),
        "conflict_every": int(
            d5.number_input(
                "Conflict matrix every N epochs",
                0,
                300,
                0,
                key="train_conflict",
                help=_help("conflict_every") + "; for the Gradient conflict page's evolution plot",
            )
        ),
    }
    e1, e2, e3, e4, _ = st.columns([1, 1, 1, 1, 1])
    out["lr_schedule"] = e1.selectbox(
        "Learning-rate schedule",
        train_option("lr_schedule").choices,
        key="train_schedule",
        help=_help("lr_schedule"),
    )
    out["keep"] = e2.selectbox(
        "Weights kept", train_option("keep").choices, key="train_keep", help=_help("keep")
    )
    backbone = e3.selectbox(
        "Backbone",
        [*list_backbones(), TIMM],
        key="train_backbone",
        help=_help("backbone") + "; every head sits on its last feature map",
    )
    if backbone == TIMM:  # timm's ~1,400 models: searched by name, not listed
        picked = timm_picker(st.columns([2, 3])[0], "train_timm")
        backbone = picked[0] if picked else "trifire"
        if not picked:
            st.caption("No timm model picked yet: trifire until one is.")
    pretrained = e4.selectbox(
        "Pretrained weights",
        ["none", "imagenet"],
        key="train_pretrained",
        disabled=backbone == "trifire",
        help="imagenet: torchvision's or timm's ImageNet weights (downloaded where the server "
        "has internet). A local safetensors file: python -m csba train --pretrained PATH.",
    )
    out["backbone"] = backbone
    out["pretrained"] = None if pretrained == "none" or backbone == "trifire" else pretrained
    return out


# ---- rendering -------------------------------------------------------------------------------


def _curves(job: Job) -> go.Figure:
    """Loss (per batch, and per epoch on validation) and validation macro-F1 of a job's runs."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("Loss", "Validation macro-F1"), horizontal_spacing=0.1
    )
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for i, r in enumerate(job.runs):
        if not r.batch_losses and not r.history:
            continue
        colour = palette[i % len(palette)]
        if r.batch_losses:
            xs, ys = zip(*r.batch_losses)
            fig.add_scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": colour, "width": 1},
                opacity=0.35,
                name=f"{r.variant} train (batch)",
                legendgroup=r.variant,
                row=1,
                col=1,
            )
        if r.history:
            ep = [h["epoch"] for h in r.history]
            fig.add_scatter(
                x=ep,
                y=[h["train_loss"] for h in r.history],
                mode="lines+markers",
                line={"color": colour},
                name=f"{r.variant} train (epoch)",
                legendgroup=r.variant,
                row=1,
                col=1,
            )
            fig.add_scatter(
                x=ep,
                y=[h["val_loss"] for h in r.history],
                mode="lines+markers",
                line={"color": colour, "dash": "dash"},
                name=f"{r.variant} validation",
                legendgroup=r.variant,
                row=1,
                col=1,
            )
            fig.add_scatter(
                x=ep,
                y=[h["val_macro_f1"] for h in r.history],
                mode="lines+markers",
                line={"color": colour},
                name=f"{r.variant} val macro-F1",
                legendgroup=r.variant,
                showlegend=False,
                row=1,
                col=2,
            )
    epochs = max([r.epochs for r in job.runs] + [1])
    fig.update_xaxes(title_text="epoch", range=[0, max(epochs, 1) + 0.05])
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_layout(
        height=330,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": -0.25},
        uirevision=job.id,  # keep zoom while the curves grow
    )
    return fig


def _run_line(r: RunProgress) -> str:
    if r.status == "running" and not r.num_batches:
        return f"**{r.variant}** s{r.seed}: loading data..."
    if r.status == "running":
        return (
            f"**{r.variant}** s{r.seed}: epoch {max(r.epoch, 1)}/{r.epochs}, "
            f"batch {r.batch}/{r.num_batches} on {r.device} ({r.precision})"
        )
    if r.status == "diagnosing":
        return f"**{r.variant}** s{r.seed}: trained; computing diagnostics..."
    return f"**{r.variant}** s{r.seed}: {r.status}"


def _elapsed(job: Job) -> str:
    if not job.started:
        return ""
    end = job.finished or dt.datetime.now().timestamp()
    return f"{end - job.started:.0f} s"


def _show_running(job: Job, manager: JobManager) -> None:
    head, button = st.columns([5, 1])
    state = "Cancelling" if job.cancel_requested else "Running"
    head.markdown(f"{ICON['running']} **{state} {job.id}**: {job.label} ({_elapsed(job)})")
    if button.button(
        "Cancel",
        key=f"cancel_{job.id}",
        icon=":material/stop_circle:",
        disabled=job.cancel_requested,
    ):
        manager.cancel(job.id)
        st.toast(f"Cancelling {job.id}: it stops before its next batch.")
    for r in job.runs:
        st.progress(r.fraction, text=_run_line(r))
        if r.note:
            st.caption(r.note)
    if any(r.batch_losses or r.history for r in job.runs):
        plotly_chart(_curves(job), key=f"curves_{job.id}")
    else:
        st.caption("Loss and validation curves appear once the first batches are done.")


def _show_finished(job: Job, curves: bool = False) -> None:
    when = dt.datetime.fromtimestamp(job.finished or job.submitted).strftime("%H:%M:%S")
    st.markdown(
        f"{ICON.get(job.status, '')} **{job.id}** {job.status} at {when} "
        f"({_elapsed(job)}): {job.label}"
    )
    if curves and any(r.history for r in job.runs):
        plotly_chart(_curves(job), key=f"curves_{job.id}")
    for r in job.runs:
        res = r.result
        if r.status == "failed":
            st.error(f"{r.variant} s{r.seed} failed: {r.error}")
            if r.traceback:
                with st.expander(f"Details ({r.variant})"):
                    st.code(r.traceback, language="text")
        elif r.status == "completed":
            f1 = res.get("test_macro_f1")
            acc = res.get("test_accuracy")
            score = (
                f"test macro-F1 {f1:.3f}, accuracy {acc:.3f}"
                if isinstance(f1, float) and isinstance(acc, float)
                else "metrics stored"
            )
            st.success(
                f"{r.variant} s{r.seed}: {score}; kept epoch {res.get('best_epoch')} of "
                f"{res.get('epochs_run')}. Stored in `{r.run_dir}`; diagnostics: {r.diagnostics}."
            )
        else:
            st.warning(f"{r.variant} s{r.seed}: {r.status}" + (f" ({r.note})" if r.note else ""))
        if r.note and r.status in ("completed", "failed"):
            st.caption(r.note)


def _jobs_panel() -> None:
    manager = job_manager()
    version = manager.runs_version
    if st.session_state.get(VERSION_KEY, version) != version:
        clear_run_caches()  # a run was written: every page sees it on its next run
    st.session_state[VERSION_KEY] = version
    jobs = manager.snapshot()
    running = [j for j in jobs if j.status == "running"]
    queued = [j for j in jobs if j.status == "queued"]
    finished = [j for j in jobs if j.status in FINISHED]
    if not jobs:
        st.caption("No jobs yet in this server session.")
    for job in running:
        _show_running(job, manager)
    if queued:
        st.markdown(f"**Queue** ({len(queued)} waiting; one job runs at a time)")
        for job in queued:
            q1, q2 = st.columns([5, 1])
            q1.markdown(f"{ICON['queued']} {job.id}: {job.label}")
            if q2.button("Remove", key=f"remove_{job.id}", icon=":material/delete:"):
                manager.cancel(job.id)
                st.rerun(scope="fragment")
            for r in job.runs:
                if r.note:
                    q1.caption(f"{r.variant}: {r.note}")
    if finished:
        st.markdown("**Finished** (newest first)")
        for n, job in enumerate(reversed(finished[-10:])):
            _show_finished(job, curves=n == 0 and not running)
        table = pd.DataFrame(
            [
                {
                    "job": j.id,
                    "variant": r.variant,
                    "seed": r.seed,
                    "status": r.status,
                    "test macro-F1": r.result.get("test_macro_f1"),
                    "run folder": r.run_dir,
                }
                for j in finished
                for r in j.runs
            ]
        )
        with st.expander(f"All finished runs of this session ({len(table)})"):
            st.dataframe(table, hide_index=True)
    active = bool(running or queued)
    if st.session_state.get("_training_was_active") and not active:
        st.session_state["_training_was_active"] = False
        st.rerun()  # leave polling mode: the page re-renders once, statically
    st.session_state["_training_was_active"] = active


def main() -> None:
    st.title("Training")
    st.caption(
        "Train short runs in the background. They keep going while you look at other pages or "
        f"reload; finished runs are stored under `{runs_root()}` (evaluated, diagnosed) and "
        "appear on every page."
    )
    configs, problem = _settings()
    start = st.button(
        "Start training", type="primary", icon=":material/play_arrow:", key="train_start"
    )
    manager = job_manager()
    if start:
        if problem:
            st.error(problem)
        else:
            try:
                job_id = manager.submit(configs)
            except (ValueError, RuntimeError) as e:
                st.error(str(e))
            else:
                busy = manager.running not in (None, job_id)
                st.toast(f"{job_id} queued" if busy else f"{job_id} started")
                job = manager.job(job_id)
                for r in job.runs if job else []:
                    if r.note:
                        st.info(f"{r.variant}: {r.note} (nothing is overwritten).")
    active = any(j.status in ("queued", "running") for j in manager.snapshot())
    st.subheader("Jobs")
    panel = st.fragment(_jobs_panel, run_every=1.0 if active else None)
    panel()


main()
