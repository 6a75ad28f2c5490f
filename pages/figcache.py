"""The dashboard's figure cache: :func:`cached_figure`, a decorator for figure builders.

A page calls a builder by name (``from pages.fig_conflict import conflict_heatmap``); the
decorated builder is built once per arguments (hashed by Streamlit: arrays, frames, plain
values) and the figure shared by every session, so a rerun that changes nothing builds no
figure. Figures are read-only once built.

One cache for every builder (``st.cache_resource``, 512 figures at most, keyed by the builder's
module and name and its arguments), so the most recently used figures stay whatever page made
them. :data:`FIGURE_BUILDS` counts the figures actually built (a cached one is not); tests read
it. The builder itself stays reachable as ``<cached>.__wrapped__`` (what :mod:`pages.figures`
exports: the builders uncached, as they always were there).

No figure code here: the builders' modules (``pages/fig_*.py``) import this one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

__all__ = ["FIGURE_BUILDS", "cached_figure"]

FIGURE_BUILDS = {"count": 0}  # figures actually built (a cached one is not): tests read it

# "module.name" -> the undecorated builder, filled at import by cached_figure. The cache's key
# is this name (a string Streamlit hashes cheaply), not the function object.
_BUILDERS: dict[str, Callable[..., Any]] = {}

Builder = TypeVar("Builder", bound=Callable[..., Any])


@st.cache_resource(show_spinner=False, max_entries=512)
def _figure(name: str, args: tuple, kwargs: dict):
    """The figure of builder ``name`` for these arguments: built on a miss, counted."""
    FIGURE_BUILDS["count"] += 1
    return _BUILDERS[name](*args, **kwargs)


def cached_figure(build: Builder) -> Builder:
    """``build`` through the shared figure cache: equal arguments (positional and keyword as
    given) return the figure built the first time, in any session. The decorated function
    keeps ``build``'s name, signature and docstring; ``.__wrapped__`` is ``build`` itself."""
    name = f"{build.__module__}.{build.__qualname__}"
    _BUILDERS[name] = build  # a reimport (Streamlit's file watcher) replaces it

    @functools.wraps(build)
    def cached(*args: Any, **kwargs: Any) -> Any:
        return _figure(name, args, kwargs)

    return cached  # type: ignore[return-value]
