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

from app import state  # noqa: E402
from app.sidebar import sidebar  # noqa: E402
from app.state import use_threads  # noqa: E402
from mythos_lens.errors import MythosLensError  # noqa: E402

# Page key (as adapters list them in ``pages``) -> page. A model shows only the pages it has.
PAGES = {
    "trajectories": ("views/trajectories.py", "Trajectories"),
    "experts": ("views/experts.py", "Experts"),
    "loops": ("views/loops.py", "Loops compared"),
    "causal": ("views/causal.py", "Causal"),
    "lora": ("views/lora.py", "Depth-wise LoRA"),
    "compare": ("views/compare.py", "Compare"),
}

st.set_page_config(page_title="mythos-lens", layout="wide")
use_threads()
selection = sidebar()
if selection is None:
    st.navigation([st.Page(PAGES["trajectories"][0], title="Trajectories", default=True)])
    st.stop()
try:
    keys = state.adapter_of(selection.directory).pages
except MythosLensError as exc:
    st.error(str(exc))
    st.stop()
pages = [st.Page(PAGES[k][0], title=PAGES[k][1], default=i == 0) for i, k in enumerate(keys)]
page = st.navigation(pages)
st.session_state["selection"] = selection
try:
    page.run()
except MythosLensError as exc:
    st.error(str(exc))
