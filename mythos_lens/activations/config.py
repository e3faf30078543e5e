"""What a collect run is: its knobs (:class:`CollectConfig`), the identity of its model and
inputs (fingerprints), and its *plan* — everything a resumed run must share with the run it
continues (``collect.json``; :func:`plan_mismatch` names the first difference)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mythos_lens.activations.layout import POSITION_MODES, STORE_DTYPES
from mythos_lens.errors import MythosLensError, check_int

FORMAT = "mythos-lens-activations/1"


@dataclass
class CollectConfig:
    """Knobs of ``mythos-lens collect`` (checked here, before any work).

    ``sites``: sites to store (default: the model's carried state); ``n_loops``: primary steps
    (default the model's); ``positions``: ``all``, ``last`` or ``mask``; ``store_dtype``:
    ``float32``, ``float16`` or ``bfloat16``; ``shard_size``: sequences per shard (the unit of
    work, of resuming and of memory); ``instruments``: stream CKA, router, lens, effective depth
    too; ``position``: the query position those read; ``store_device``: where captured tensors
    go before they are written.
    """

    sites: list[str] | None = None
    n_loops: int | None = None
    positions: str = "all"
    store_dtype: str = "float32"
    batch_size: int = 16
    shard_size: int = 256
    instruments: bool = True
    position: int = -1
    seed: int = 0
    step_options: dict[str, Any] = field(default_factory=dict)
    store_device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        self.batch_size = check_int("batch_size", self.batch_size, 1)
        self.shard_size = check_int("shard_size", self.shard_size, 1)
        self.seed = check_int("seed", self.seed, 0)
        self.position = check_int("position", self.position)
        if self.n_loops is not None:
            self.n_loops = check_int("n_loops", self.n_loops, 1)
        if self.positions not in POSITION_MODES:
            raise MythosLensError(f"positions={self.positions!r}", f"one of {POSITION_MODES}")
        if self.store_dtype not in STORE_DTYPES:
            raise MythosLensError(
                f"store dtype {self.store_dtype!r}", f"one of {list(STORE_DTYPES)}"
            )
        if isinstance(self.sites, str):
            self.sites = [s for s in self.sites.split(",") if s]
        for name in ("instruments", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise MythosLensError(f"{name}={getattr(self, name)!r}", "true or false")


def tensor_sha256(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """SHA-256 of every parameter and buffer (names, shapes, dtypes, values) of an undispatched
    model; a model whose weights accelerate offloaded (meta tensors) needs
    :func:`directory_fingerprint` of the directory it came from."""
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise MythosLensError(f"weight {name!r} is offloaded (meta)",
                                  "the fingerprint of the model directory (model_info=...)")  # fmt: skip
        h.update(name.encode())
        h.update(tensor_sha256(t).encode())
    return h.hexdigest()


def directory_fingerprint(directory: str | os.PathLike) -> str:
    """SHA-256 of a model directory's config and weight files (read in 1 MB chunks)."""
    d = Path(directory)
    h = hashlib.sha256()
    for p in sorted([d / "config.json", *d.glob("*.safetensors")]):
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# The order in which a mismatch is reported: the likeliest mistakes first.
_PLAN_ORDER = ("format", "world_size", "model", "inputs")


def plan_mismatch(old: dict[str, Any], new: dict[str, Any], out: Path) -> MythosLensError | None:
    """The error that says how `new` (this run) differs from `old` (the run in `out`), or None."""
    keys = [*_PLAN_ORDER, *sorted((set(old) | set(new)) - set(_PLAN_ORDER))]
    for key in keys:
        a, b = old.get(key), new.get(key)
        if key == "model" and isinstance(a, dict) and isinstance(b, dict):
            same = [k for k in ("adapter", "fingerprint") if a.get(k) == b.get(k)]
            if len(same) == 2:  # a renamed directory holds the same model
                continue
        if a == b:
            continue
        if key == "world_size":
            return MythosLensError(
                f"{out} was started by {a} process(es); this run has {b}",
                f"the same world size to resume (torchrun --nproc-per-node {a}), or a new --out",
            )
        if key == "model":
            was = f"{a.get('name')} ({a.get('fingerprint', '')[:12]})" if isinstance(a, dict) else a
            now = f"{b.get('name')} ({b.get('fingerprint', '')[:12]})"
            return MythosLensError(f"{out} holds activations of model {was}, not {now}",
                                   "the same model to resume, or a new --out")  # fmt: skip
        return MythosLensError(f"{out} was started with {key}={a!r}; this run has {b!r}",
                               "the same settings to resume, or a new --out")  # fmt: skip
    return None
