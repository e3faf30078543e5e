"""Helpers for the app tests: read the plotly spec JSON that AppTest sees."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest


def decode_arrays(obj: Any) -> Any:
    """Plotly JSON with every ``{"dtype", "bdata", "shape"}`` typed array turned into numpy."""
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            shape = obj.get("shape")
            if shape is not None:
                dims = [int(s) for s in str(shape).split(",")]
                arr = arr.reshape(dims)
            return arr
        return {k: decode_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_arrays(v) for v in obj]
    return obj


def figures(at: AppTest) -> list[dict]:
    """Every rendered plotly figure as a decoded spec dict."""
    return [decode_arrays(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def figure(at: AppTest, title_part: str) -> dict:
    """The one figure whose title contains ``title_part``."""
    found = [f for f in figures(at) if title_part in f["layout"].get("title", {}).get("text", "")]
    titles = [f["layout"].get("title", {}).get("text") for f in figures(at)]
    assert len(found) == 1, f"{title_part!r} in {titles}"
    return found[0]


def z(fig: dict, trace: int = 0) -> np.ndarray:
    """The z grid of a heatmap trace as a float array (None -> NaN)."""
    v = fig["data"][trace]["z"]
    return np.asarray(v, dtype=float) if not isinstance(v, np.ndarray) else v.astype(float)
