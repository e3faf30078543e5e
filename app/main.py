"""mythos-lens app: `streamlit run app/main.py` (or `make run`).

The sidebar picks a checkpoint, an input and a loop count; each page composes library calls on
the cached trace of that selection. Every error a user can cause is a MythosLensError, shown with
``st.error``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts app/ on sys.path, AppTest puts nothing: make `import app` work in both.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from app.sidebar import sidebar  # noqa: E402
from app.state import use_threads  # noqa: E402
from mythos_lens.errors import MythosLensError  # noqa: E402

PAGES = [
    st.Page("views/trajectories.py", title="Trajectories", default=True),
    st.Page("views/experts.py", title="Experts"),
    st.Page("views/loops.py", title="Loops compared"),
    st.Page("views/causal.py", title="Causal"),
    st.Page("views/lora.py", title="Depth-wise LoRA"),
    st.Page("views/compare.py", title="Compare"),
]

st.set_page_config(page_title="mythos-lens", layout="wide")
use_threads()
page = st.navigation(PAGES)
selection = sidebar()
if selection is None:
    st.stop()
st.session_state["selection"] = selection
try:
    page.run()
except MythosLensError as exc:
    st.error(str(exc))
