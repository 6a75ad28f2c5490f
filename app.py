"""CSBA Explorer dashboard entry point (placeholder until the dashboard issue lands)."""

import streamlit as st

from csba.store import list_runs

st.set_page_config(page_title="CSBA Explorer", layout="wide")
st.title("CSBA Explorer")
runs = list_runs("checkpoints")
if not runs:
    st.info("No runs under checkpoints/. Train one: `python -m csba train --epochs 2`.")
for r in runs:
    st.write(str(r.path), r.error or r.meta["variant"])
