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
from open_mythos.main import MythosConfig, OpenMythos
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mythos_lens.atomic import atomic_path, write_json_atomic
from mythos_lens.errors import MythosLensError
from mythos_lens.model import (
    check_device,
    check_finite_weights,
    config_from_dict,
    config_to_dict,
    model_bytes,
    model_skeleton,
    require_openmythos,
)
from mythos_lens.readout_rule import readout_rule_of, set_readout_rule

FORMAT = "mythos-lens/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# The head is tied to the embedding; the RoPE tables are recomputed from the config.
DERIVED_KEYS = ("head.weight", "freqs_cis", "freqs_cis_mla")
# Floating dtypes a checkpoint may store; loading always gives a float32 model (upcasting is
# exact), because upstream 0.5.0 cannot run with bf16/fp16 weights (float32 mask, complex RoPE).
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _state_to_save(model: OpenMythos) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in DERIVED_KEYS}


def _weights_dtype(state: dict[str, torch.Tensor]) -> str:
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    names = [n for n, d in WEIGHT_DTYPES.items() if d in dtypes]
    if len(dtypes) != 1 or len(names) != 1:
        raise MythosLensError(
            f"model weights have dtypes {sorted(str(d) for d in dtypes)}",
            f"one floating dtype, one of {list(WEIGHT_DTYPES)}",
        )
    return names[0]


def save_checkpoint(
    model: OpenMythos, directory: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Save `model` to `directory` (created if needed) as safetensors + JSON; returns the directory.

    Weights are stored in the model's own floating dtype (float32, bfloat16 or float16; recorded
    as ``weights_dtype``); :func:`load_checkpoint` reads any of them back into a float32 model.
    """
    model = require_openmythos(model)
    state = _state_to_save(model)
    dtype = _weights_dtype(state)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = dict(metadata or {})
    if readout_rule_of(model) != "act":
        meta["readout_rule"] = readout_rule_of(model)
    config = {
        "format": FORMAT,
        "mythos_config": config_to_dict(model.cfg),
        "weights_dtype": dtype,
        "metadata": meta,
    }
    write_json_atomic(out / CONFIG_FILE, config)
    return out


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed and format-checked `config.json` of a checkpoint directory."""
    d = Path(directory)
    path = d / CONFIG_FILE
    if d.is_file() and d.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise MythosLensError(
            f"no {CONFIG_FILE}: {str(d)!r} is a pickled torch file",
            "a checkpoint directory; convert upstream training checkpoints with "
            "`mythos-lens import-checkpoint SRC.pt DST/`",
        )
    if not path.is_file():
        why = "" if d.is_dir() else (" (not a directory)" if d.exists() else " (does not exist)")
        raise MythosLensError(f"no {CONFIG_FILE} in {str(d)!r}{why}", "a checkpoint directory")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise MythosLensError(f"{path} is not valid JSON ({exc})", "a JSON config") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise MythosLensError(f"{path} has format {got!r}", f"format {FORMAT!r}")
    if "mythos_config" not in raw:
        raise MythosLensError(f"{path} has no 'mythos_config'", "the MythosConfig fields")
    if not isinstance(raw.get("metadata", {}), dict):
        raise MythosLensError(f"{path} has a non-object 'metadata'", "a JSON object")
    dtype = raw.get("weights_dtype", "float32")
    if dtype not in WEIGHT_DTYPES:
        raise MythosLensError(
            f"{path} has weights_dtype {dtype!r}", f"one of {list(WEIGHT_DTYPES)}"
        )
    return raw


def _expected_tensors(cfg: MythosConfig) -> tuple[dict[str, tuple[int, ...]], int]:
    """Names and shapes of the tensors a checkpoint of `cfg` stores, and the bytes the float32
    model will take (:func:`~mythos_lens.model.model_skeleton`: nothing is allocated)."""
    skeleton = model_skeleton(cfg)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if k not in DERIVED_KEYS}
    return shapes, model_bytes(cfg)


def memory_limit_bytes() -> int:
    """Physical memory of this machine: the most a model may take when loaded on the CPU."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit we can read
        return 1 << 62


def check_checkpoint(directory: str | os.PathLike, max_bytes: int | None = None) -> MythosConfig:
    """Validate a checkpoint without building the model: the config, that every file exists, that
    the safetensors header (read alone) holds exactly the tensors the config implies with their
    shapes and the recorded dtype, and that the model fits in `max_bytes` (default: physical
    memory). Returns the config; raises MythosLensError naming the first problem."""
    raw = read_config(directory)
    cfg = config_from_dict(raw["mythos_config"])
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise MythosLensError(f"no {WEIGHTS_FILE} in {str(directory)!r}", "a checkpoint directory")
    expected, n_bytes = _expected_tensors(cfg)
    limit = memory_limit_bytes() if max_bytes is None else max_bytes
    if n_bytes > limit:
        raise MythosLensError(
            f"this config needs {n_bytes / 2**30:.2f} GiB as a float32 model",
            f"at most {limit / 2**30:.2f} GiB (the memory available to load it)",
        )
    want_dtype = raw.get("weights_dtype", "float32")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            for name in sorted(expected):
                if name not in names:
                    raise MythosLensError(
                        f"{path} lacks tensor {name!r}", "every tensor the config builds"
                    )
                sl = f.get_slice(name)
                shape, dtype = tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(sl.get_dtype())
                if shape != expected[name] or dtype != want_dtype:
                    raise MythosLensError(
                        f"tensor {name!r} in {path} is {sl.get_dtype()} {shape}",
                        f"{want_dtype} {expected[name]} for this config",
                    )
    except MythosLensError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise MythosLensError(f"{path} could not be read ({exc})", "a safetensors file") from None
    extra = sorted(names - set(expected))
    if extra:
        raise MythosLensError(
            f"{path} has unexpected tensor {extra[0]!r}", "only the model's tensors"
        )
    return cfg


def load_checkpoint(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    max_bytes: int | None = None,
) -> OpenMythos:
    """Load a checkpoint into a fresh upstream OpenMythos (eval mode, float32) on `device`.

    :func:`check_checkpoint` runs first, so a bad or oversized checkpoint is refused before any
    weight is allocated. The weights file is read with safetensors only (no pickle). For bf16,
    run under ``torch.autocast(device_type, dtype=torch.bfloat16)``: upstream 0.5.0 cannot run
    with bf16 weights (its float32 attention mask and complex RoPE tables break
    ``model.to(bf16)``); bf16/fp16 checkpoints load upcast to float32, exactly.
    """
    dev = check_device(device)
    cfg = check_checkpoint(directory, max_bytes)
    path = Path(directory) / WEIGHTS_FILE
    try:
        loaded = load_file(str(path))
    except Exception as exc:
        raise MythosLensError(f"{path} could not be read ({exc})", "a safetensors file") from None
    model = OpenMythos(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in loaded.items()}, strict=False)
    model.head.weight = model.embed.weight  # keep the tie upstream sets up
    check_finite_weights(model)
    rule = read_config(directory).get("metadata", {}).get("readout_rule", "act")
    set_readout_rule(model, rule)  # what the coda reads is part of the recipe
    return model.to(device=dev).eval()


def checkpoint_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` block of our ``config.json``; ``{}`` for another format's directory
    (e.g. a transformers model saved with ``save_pretrained``)."""
    path = Path(directory) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return {}
    return read_config(directory).get("metadata", {})


def load_task(directory: str | os.PathLike):
    """The ground-truth task a checkpoint was trained on (``metadata.task``), or ``None``."""
    from mythos_lens.tasks.registry import task_from_spec

    spec = checkpoint_metadata(directory).get("task")
    return None if spec is None else task_from_spec(spec)
