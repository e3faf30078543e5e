"""Checkpoints: `model.safetensors` + `config.json`, validated on load, never unpickled.

Layout of a checkpoint directory::

    config.json        {"format": "mythos-lens/1", "mythos_config": {...}, "metadata": {...}}
    model.safetensors  every parameter and persistent buffer except those derived from the config
    metrics.json       optional, written by training
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from open_mythos.main import OpenMythos
from safetensors import safe_open
from safetensors.torch import save_file

from mythos_lens.atomic import atomic_path, write_json_atomic
from mythos_lens.errors import MythosLensError
from mythos_lens.model import (
    check_finite_weights,
    config_from_dict,
    config_to_dict,
    require_openmythos,
)

FORMAT = "mythos-lens/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# The head is tied to the embedding; the RoPE tables are recomputed from the config.
DERIVED_KEYS = ("head.weight", "freqs_cis", "freqs_cis_mla")


def _state_to_save(model: OpenMythos) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in DERIVED_KEYS}


def save_checkpoint(
    model: OpenMythos, directory: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Save `model` to `directory` (created if needed) as safetensors + JSON; returns the directory."""
    model = require_openmythos(model)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(_state_to_save(model), str(tmp), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "mythos_config": config_to_dict(model.cfg),
        "metadata": metadata or {},
    }
    write_json_atomic(out / CONFIG_FILE, config)
    return out


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed and format-checked `config.json` of a checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise MythosLensError(f"no {CONFIG_FILE} in {str(directory)!r}", "a checkpoint directory")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MythosLensError(f"{path} is not valid JSON ({exc})", "a JSON config") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise MythosLensError(f"{path} has format {got!r}", f"format {FORMAT!r}")
    if "mythos_config" not in raw:
        raise MythosLensError(f"{path} has no 'mythos_config'", "the MythosConfig fields")
    return raw


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> OpenMythos:
    """Load a checkpoint into a fresh upstream OpenMythos (eval mode, float32) on `device`.

    Every tensor's name, shape and dtype is checked against what the config builds; the first
    mismatch is named. The weights file is read with safetensors only (no pickle). For bf16, run
    under ``torch.autocast(device_type, dtype=torch.bfloat16)``: upstream 0.5.0 cannot run with
    bf16 weights (its float32 attention mask and complex RoPE tables break ``model.to(bf16)``).
    """
    raw = read_config(directory)
    cfg = config_from_dict(raw["mythos_config"])
    model = OpenMythos(cfg)
    expected = _state_to_save(model)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise MythosLensError(f"no {WEIGHTS_FILE} in {str(directory)!r}", "a checkpoint directory")
    loaded: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            for name in sorted(expected):
                if name not in names:
                    raise MythosLensError(
                        f"{path} lacks tensor {name!r}", "every tensor the config builds"
                    )
                t = f.get_tensor(name)
                want = expected[name]
                if tuple(t.shape) != tuple(want.shape) or t.dtype != want.dtype:
                    raise MythosLensError(
                        f"tensor {name!r} in {path} is {t.dtype} {tuple(t.shape)}",
                        f"{want.dtype} {tuple(want.shape)} for this config",
                    )
                loaded[name] = t
    except MythosLensError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise MythosLensError(f"{path} could not be read ({exc})", "a safetensors file") from None
    extra = sorted(names - set(expected))
    if extra:
        raise MythosLensError(
            f"{path} has unexpected tensor {extra[0]!r}", "only the model's tensors"
        )
    model.load_state_dict(loaded, strict=False)
    model.head.weight = model.embed.weight  # keep the tie upstream sets up
    check_finite_weights(model)
    return model.to(device=device).eval()


def load_task(directory: str | os.PathLike):
    """The ground-truth task a checkpoint was trained on (``metadata.task``), or ``None``."""
    from mythos_lens.tasks.registry import task_from_spec

    spec = read_config(directory).get("metadata", {}).get("task")
    return None if spec is None else task_from_spec(spec)
