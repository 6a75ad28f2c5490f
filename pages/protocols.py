"""Two training protocols compared run by run: the same variants and seeds under two folders,
paired, with intervals and a validation verdict (csba.paired; docs/design.md §2)."""

from pathlib import Path

import pandas as pd
import streamlit as st

from csba.report import shipping_bar_parts
from csba.stats import N_RESAMPLES
from pages.common import (
    all_runs,
    bundled_records,
    dataset_name,
    download_df,
    download_fig,
    pair_folders,
    plotly_chart,
    runs_root,
)
from pages.fig_base import fmt_ci
from pages.fig_per_class import paired_differences

SHOWN = ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1")


def folder_label(folder: Path, infos: list) -> str:
    """A folder of runs, relative to the runs root where it lies under it, with its contents."""
    root = runs_root()
    name = str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)
    return f"{name} ({contents(infos)})"


def contents(infos: list) -> str:
    """'15 runs, 224 px': how many runs and at which image sizes."""
    sizes = sorted({(i.meta.get("dataset") or {}).get("image_size") for i in infos} - {None})
    return f"{len(infos)} runs" + (f", {'/'.join(map(str, sizes))} px" if sizes else "")


def main() -> None:
    st.title("Protocols")
    st.caption(
        "Is one way of training better than another? Runs of the same variant and seed under "
        "two folders are paired, so seed-to-seed noise cancels within each pair. A is the "
        "reference (usually the pinned protocol), B the candidate. docs/design.md §2 lets a pinned "
        "value change only when the validation split supports it; the test set is for "
        "reporting. Same as `python -m csba pair A B`."
    )
    folders: dict[Path, list] = {}
    for info in all_runs():
        if info.meta is not None:
            folders.setdefault(Path(info.path).parent, []).append(info)
    names = sorted(folders, key=str)
    labels = {f: folder_label(f, folders[f]) for f in names}
    # then the bundled records (benchmarks/results: run.json only, e.g. the 224 px GPU protocol)
    # of a dataset that some folder above holds, so that the pair has something to pair with
    datasets = {dataset_name(infos[0].meta) for infos in folders.values()}
    for folder, (name, infos) in bundled_records().items():
        if dataset_name(infos[0].meta) not in datasets:
            continue
        folders[folder] = infos
        names.append(folder)
        labels[folder] = f"bundled record {name} ({contents(infos)}; run.json only)"
    if len(folders) < 2:
        st.info(
            "Pairing needs two folders of runs (for example checkpoints/elpv and a folder "
            "trained with another protocol: `python -m csba protocol --lr-schedule cosine "
            "--out runs/cosine`, then add it in the sidebar)."
        )
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("A: reference", names, index=0, format_func=labels.get, key="pair_a")
    b = c2.selectbox("B: candidate", names, index=1, format_func=labels.get, key="pair_b")
    c3, c4, c5 = st.columns(3)
    bar_acc = c3.number_input("Bar: test accuracy", 0.0, 1.0, 0.60, 0.01, key="pair_bar_acc")
    bar_f1 = c4.number_input("Bar: test macro-F1", 0.0, 1.0, 0.45, 0.01, key="pair_bar_f1")
    n_res = c5.select_slider(
        "Bootstrap resamples",
        [200, 500, 1000, 2000, 5000],
        value=N_RESAMPLES,
        key="pair_nres",
        help=f"{N_RESAMPLES}, as python -m csba pair (docs/performance.md)",
    )
    if a == b:
        st.info("Choose two different folders.")
        return
    dataset = dataset_name(folders[a][0].meta)
    try:
        res = pair_folders(a, b, dataset, (bar_acc, bar_f1), n_res)
    except (ValueError, KeyError) as e:
        st.error(f"Cannot pair these folders: {e}")
        return

    st.info(res["verdict"], icon=":material/balance:")
    for side, folder in (("a", a), ("b", b)):
        s = res[side]
        p = shipping_bar_parts(s["bar"])
        st.markdown(
            f"**{side.upper()}** `{labels[folder]}`: {s['protocol']}. **{p['head']}.** "
            f"{p['runs']} {p['variants']} ({s['bar']['meet']} of {s['bar']['runs']} runs reach "
            f"test accuracy {bar_acc:.2f} and macro-F1 {bar_f1:.2f} on their point values.)"
        )
        for note in s["notes"]:
            st.caption(note)

    fig = paired_differences(res, SHOWN)
    plotly_chart(fig, width="stretch", key="pair_fig")
    download_fig(fig, "paired_differences")

    summary = pd.DataFrame(
        [
            {
                "metric": s["label"],
                "pairs": s["pairs"],
                "mean A": s["mean_a"],
                "mean B": s["mean_b"],
                "B - A": s["mean_diff"],
                "SE": s["se"],
                "95% t interval": fmt_ci(s["mean_diff"], *s["ci"], signed=True),
                "B higher": f"{s['b_better']}/{s['pairs']}",
            }
            for s in res["summary"].values()
        ]
    )
    st.dataframe(summary, hide_index=True, width="stretch")
    tb = res["test_bootstrap"]
    st.caption(
        "t intervals over pairs hold seed and test-set noise together. The test set alone "
        "(paired bootstrap of the pair means on the same resampled images): accuracy "
        f"{fmt_ci(tb['accuracy']['diff'], *tb['accuracy']['ci'], signed=True)}, macro-F1 "
        f"{fmt_ci(tb['macro_f1']['diff'], *tb['macro_f1']['ci'], signed=True)}."
    )
    download_df(summary, "paired_summary")

    st.subheader("Per pair")
    pairs = pd.DataFrame(
        [
            {
                "variant": p["variant"],
                "seed": p["seed"],
                "kept epoch A": p["kept_epoch"]["a"],
                "kept epoch B": p["kept_epoch"]["b"],
                **{
                    f"{res['summary'][k]['label']} {side}": p[k][side]
                    for k in SHOWN
                    for side in ("a", "b", "diff")
                },
            }
            for p in res["pairs"]
        ]
    )
    st.dataframe(pairs, hide_index=True, width="stretch")
    download_df(pairs, "paired_runs")
    for side in ("a", "b"):
        if res["unpaired"][side]:
            st.caption(f"Not paired, only in {side.upper()}: {', '.join(res['unpaired'][side])}")


main()
