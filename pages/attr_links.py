"""The Attributions page opened from a thumbnail: query parameters ``run`` (a folder relative
to the runs root, as pages.common.run_ref writes it), ``split`` (train, val or test) and
``index``. Each is data, checked against what exists (a known run, a split name, an index in
range); anything else is ignored with a notice. Never a file path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from csba.data import DataError
from csba.diagnostics.browse import image
from csba.identity import dataset_name
from pages.common import linked_run

SPLITS = ("train", "val", "test")
SOURCE = "Linked image"


@dataclass(frozen=True)
class Link:
    info: object  # the RunInfo the link names
    split: str
    index: int


def read_link() -> Link | None:
    """The link in the page's query parameters, or None (a one-line notice for a bad one)."""
    qp = st.query_params
    if not any(k in qp for k in ("run", "split", "index")):
        return None
    run, split, index = qp.get("run", ""), qp.get("split", ""), qp.get("index", "")
    info = linked_run(run)
    problems = []
    if info is None:
        problems.append("it names no known run")
    if split not in SPLITS:
        problems.append("its split is not train, val or test")
    if not index.isdigit():
        problems.append("its index is not a number")
    if problems:
        st.info(f"The link was ignored: {'; '.join(problems)}.")
        return None
    return Link(info, split, int(index))


def apply_link(link: Link, picker_key: str) -> None:
    """Choose the linked run and image source once per link (later choices stay the user's)."""
    key = (link.info.path, link.split, link.index)
    if st.session_state.get("attr_link_applied") == key:
        return
    st.session_state["attr_link_applied"] = key
    st.session_state[f"{picker_key}_dataset"] = dataset_name(link.info.meta)
    st.session_state[f"{picker_key}_runs"] = [str(link.info.path)]
    st.session_state["attr_source"] = SOURCE


def linked_image(link: Link, bundle_fn) -> tuple[np.ndarray, str, str | None] | None:
    """(pixels (H, W, 3) uint8, caption, label) of the linked image; None after a notice when
    the index is out of range or the data cannot be read. ``bundle_fn(meta)``: the run's
    dataset (cached by the page)."""
    meta = link.info.meta
    try:
        bundle = bundle_fn(meta)
        px = image(bundle, link.split, link.index)
    except (DataError, KeyError, OSError, ValueError) as e:
        st.info(f"The link's image was ignored: {e}.")
        return None
    labels = bundle.split(link.split).labels
    noise = (meta.get("dataset") or {}).get("label_noise") or {}
    label = int(labels[link.index])
    if link.split == "train" and link.index in set(noise.get("flipped", [])):
        label = int(noise["to"][noise["flipped"].index(link.index)])  # the label it trained on
    name = bundle.classes[label]
    caption = f"{dataset_name(meta)} {link.split} image #{link.index}, label: {name}"
    return px, caption, name
