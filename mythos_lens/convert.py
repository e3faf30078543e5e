"""Convert upstream OpenMythos training checkpoints (pickled ``.pt`` files) to ours.

Upstream's trainers (``training/*.py`` in the OpenMythos repository) save ``torch.save({"model":
state_dict, "cfg": MythosConfig, "optimizer": ..., "rng": ..., ...})``. Unpickling runs whatever
code a file names, so :func:`import_upstream_checkpoint` first reads it with
``torch.load(weights_only=True)``, allowing only tensors, plain containers, upstream's
``MythosConfig`` dataclass and numpy arrays (the RNG states). A file that needs anything else is
refused with the list of what it asked for, unless the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from open_mythos.main import MythosConfig, OpenMythos

from mythos_lens.checkpoint import DERIVED_KEYS, check_checkpoint, save_checkpoint
from mythos_lens.errors import MythosLensError
from mythos_lens.model import check_config, config_from_dict

# Wrappers that prefix parameter names: torch.compile, DDP/FSDP, plain nn.Module wrapping.
_PREFIXES = ("_orig_mod.", "module.", "model.")


def _safe_globals() -> list[Any]:
    """What a weights-only load may construct besides tensors: the config dataclass and the
    numpy containers of an RNG snapshot (data only, no code)."""
    import numpy as np
    from torch.torch_version import TorchVersion  # torch.__version__ is saved as this str

    allowed: list[Any] = [MythosConfig, np.ndarray, np.dtype, TorchVersion]
    try:
        from numpy.core.multiarray import _reconstruct
    except ImportError:  # numpy 2 moved it
        from numpy._core.multiarray import _reconstruct
    allowed.append(_reconstruct)
    allowed += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32", "bool")]
    return allowed


def read_upstream_checkpoint(
    src: str | os.PathLike, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], MythosConfig]:
    """The model state dict and config of an upstream ``.pt`` file (see the module docstring)."""
    src = Path(src)
    if not src.is_file():
        raise MythosLensError(f"{src} does not exist", "an upstream .pt checkpoint file")
    if trust_pickle:
        payload = torch.load(src, map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals(_safe_globals()):
                payload = torch.load(src, map_location="cpu", weights_only=True)
        except Exception:  # torch raises UnpicklingError / RuntimeError with the reason
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(src)
            except Exception:
                names = ["(unreadable)"]
            ok = {f"{g.__module__}.{g.__qualname__}" for g in _safe_globals()}
            unsafe = [n for n in names if n not in ok] or names
            raise MythosLensError(
                f"{src} can only be unpickled by running code it names ({', '.join(unsafe[:6])})",
                "a checkpoint of tensors, plain containers and MythosConfig; if you trust the "
                "file, --trust-pickle unpickles it fully (unpickling can execute arbitrary code)",
            ) from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise MythosLensError(f"{src} holds a {type(payload).__name__}",
                              "a dict with 'model' (state dict) and 'cfg'")  # fmt: skip
    state, cfg = payload["model"], payload.get("cfg")
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    if not isinstance(cfg, MythosConfig):
        raise MythosLensError(f"{src}: 'cfg' is a {type(cfg).__name__}", "a MythosConfig or dict")
    check_config(cfg)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MythosLensError(f"{src}: 'model' is not a state dict", "names -> tensors")
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state, cfg


def import_upstream_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, trust_pickle: bool = False
) -> Path:
    """Write our checkpoint (``model.safetensors`` + ``config.json``) at `dst` from upstream's
    `src` ``.pt`` file, and validate it by reading it back. `dst` must not exist yet."""
    dst = Path(dst)
    if dst.exists():
        raise MythosLensError(f"{dst} exists", "a new checkpoint directory")
    state, cfg = read_upstream_checkpoint(src, trust_pickle)
    model = OpenMythos(cfg)
    expected = {k for k in model.state_dict() if k not in DERIVED_KEYS}
    given = {k for k in state if k not in DERIVED_KEYS}
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise MythosLensError(
            f"{src}: state dict does not match its config (missing {missing[:3]}, "
            f"unexpected {extra[:3]})",
            "the tensors of an OpenMythos built from 'cfg'",
        )
    try:
        model.load_state_dict({k: state[k].float() for k in given}, strict=False)
    except RuntimeError as exc:
        raise MythosLensError(f"{src}: {str(exc).splitlines()[0]}", "matching shapes") from None
    model.head.weight = model.embed.weight
    meta = {"imported_from": str(src), "upstream_config": dataclasses.asdict(cfg)}
    save_checkpoint(model, dst, metadata=meta)
    check_checkpoint(dst)
    return dst
