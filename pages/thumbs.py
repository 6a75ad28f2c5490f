"""Thumbnails of a run's dataset images, shared by the pages that open a cell or a class pair
(Gradient conflict, Confusion matrices): the run's dataset decoded once per server, pictures
read through ``csba.diagnostics.browse.image`` only, captions as text (never HTML), each
thumbnail a link to the Attributions page on that image."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from csba.data import DataError, load_dataset
from csba.diagnostics.browse import image
from pages.common import attribution_link

__all__ = ["bundle_for", "bundle_of", "thumb_grid"]

PER_ROW = 4  # thumbnails per row (K of the pages: one row per list)


@st.cache_resource(show_spinner="Loading the images...", max_entries=4)
def _bundle(name: str, size: int, data_root: str | None, split_seed: int):
    return load_dataset(name, size, data_root=data_root, split_seed=split_seed)


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


def thumb_grid(info, bundle, split: str, idx, captions: Sequence[str]) -> None:
    """Images ``idx`` of ``split``, PER_ROW to a row, each with its caption and (for a run
    under the runs root) a link to the Attributions page on it."""
    if len(idx) == 0:
        st.caption("None.")
        return
    cols = st.columns(PER_ROW)
    for n, (i, cap) in enumerate(zip(idx, captions, strict=True)):
        link = attribution_link(info, split, int(i))
        cols[n % PER_ROW].image(
            image(bundle, split, int(i)), caption=cap, width="stretch", link=link
        )
