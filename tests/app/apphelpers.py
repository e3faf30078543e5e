"""Helpers for the app tests: small real checkpoints, and the plotly spec JSON AppTest sees."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest

from mythos_lens.checkpoint import save_checkpoint
from mythos_lens.model import build_model
from mythos_lens.tasks.registry import get_task
from mythos_lens.train import TrainConfig, disable_lora, model_config_for, reinit_embedding

APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
LOOPS = 4


def make_checkpoint(directory: Path, lora: bool, seed: int = 0, task_name: str = "pointer") -> Path:
    """An untrained upstream OpenMythos for a task (default pointer), saved as a checkpoint (the
    same construction `mythos_lens.train` uses before its first step)."""
    task = get_task(task_name)
    cfg = TrainConfig(loops=LOOPS, lora=lora, seed=seed)
    model = build_model(model_config_for(cfg, task), seed=seed)
    reinit_embedding(model, 1.0, seed=seed + 7919)
    if not lora:
        disable_lora(model)
    # as the shipped presets record it: loops drawn from 2-6 per batch, evaluated at LOOPS
    train = {"loops": 6, "loops_min": 2, "eval_loops": LOOPS, "lora": lora}
    meta = {"task": task.spec(), "train_config": train}
    return save_checkpoint(model, directory, meta)


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
