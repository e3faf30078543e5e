"""The trace: every loop step of one forward pass, aligned on a leading loop axis."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from mythos_lens.atomic import atomic_path
from mythos_lens.errors import MythosLensError

TRACE_FORMAT = "mythos-lens-trace/1"
_GROUPS = ("loop", "stream", "layers", "params")


class LazyStack(MutableMapping):
    """Site name -> ``[loop (or layer), ...]`` tensor, stacked from per-step tensors on first read.

    Capture keeps references to the tensors upstream computed (it copies nothing), so a site that
    is captured but never read costs no copy; the first ``stack[site]`` builds the stacked tensor
    and keeps it.
    """

    def __init__(self, data: Mapping[str, torch.Tensor | list[torch.Tensor]] | None = None) -> None:
        self._data: dict[str, torch.Tensor | list[torch.Tensor]] = dict(data or {})

    def __getitem__(self, name: str) -> torch.Tensor:
        value = self._data[name]
        if isinstance(value, list):
            value = torch.stack(value)
            self._data[name] = value
        return value

    def __setitem__(self, name: str, value: torch.Tensor | list[torch.Tensor]) -> None:
        self._data[name] = value

    def __delitem__(self, name: str) -> None:
        del self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"LazyStack({list(self._data)})"


@dataclass
class Trace:
    """Tensors captured from one forward pass.

    - ``loop[site]``: ``[step, batch, pos, ...]`` for every step that actually ran, of the
      site's step kind (``site_steps[site]``: ``"loop"`` for OpenMythos; ``"L"`` / ``"H"`` for
      HRM-Text). ``n_loops`` counts the primary kind's steps (ACT may stop before
      ``n_loops_requested``); ``steps[kind]`` holds each step's label.
    - ``stream[site]``: ``[batch, pos, ...]`` (e.g. embed, logits).
    - ``layers[site]``: ``[layer, batch, pos, ...]`` (e.g. OpenMythos's prelude and coda).
    - ``params``: the model's per-model parameters (OpenMythos: ``injection_A`` / ``injection_B``
      ``[d]``, ``lora_scale`` ``[max_loop_iters, rank]``, ``router_bias`` ``[n_experts]``).
    - ``input_ids``: ``[batch, seq]`` (always the full sequence); ``positions``: ``[pos]``, the
      sequence positions kept on the ``pos`` axis.
    - ``meta``: JSON-ready facts (adapter, model config, shapes of the sites, ...).
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    n_loops: int
    n_loops_requested: int
    loop: MutableMapping[str, torch.Tensor] = field(default_factory=LazyStack)
    stream: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: MutableMapping[str, torch.Tensor] = field(default_factory=LazyStack)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, list[Any]] = field(default_factory=dict)
    site_steps: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.loop, LazyStack):
            self.loop = LazyStack(self.loop)
        if not isinstance(self.layers, LazyStack):
            self.layers = LazyStack(self.layers)

    # -- access -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        for group in (self.loop, self.stream, self.layers, self.params):
            if name in group:
                return group[name]
        known = list(self.loop) + list(self.stream) + list(self.layers) + list(self.params)
        if name in self.meta.get("site_shapes", {}):
            raise MythosLensError(f"site {name!r} was not captured", f"one of {known}")
        raise MythosLensError(f"unknown site {name!r}", f"one of {known}")

    def __contains__(self, name: str) -> bool:
        return any(name in g for g in (self.loop, self.stream, self.layers, self.params))

    @property
    def logits(self) -> torch.Tensor:
        """Final logits ``[batch, pos, vocab]``."""
        return self.stream["logits"]

    @property
    def sites(self) -> list[str]:
        """Names of every captured site."""
        return list(self.loop) + list(self.stream) + list(self.layers)

    # -- tables -------------------------------------------------------------------------------
    def to_frame(self, site: str) -> pd.DataFrame:
        """Tidy table of one site: one row per element, index columns named after the axes
        (``loop``/``layer``, ``batch``, ``pos`` (sequence position), then ``channel``/``expert``/
        ``slot``), and ``value``."""
        x = self[site]
        names = axis_names(self.meta.get("site_shapes", {}).get(site, ""), x.dim())
        if site in self.loop and names[0] != "loop":
            names[0] = "loop"
        elif site in self.layers:
            names[0] = "layer"
        arr = x.detach().float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
        grids = np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")
        df = pd.DataFrame({n: g.ravel() for n, g in zip(names, grids, strict=True)})
        if "pos" in df.columns:
            df["pos"] = self.positions.cpu().numpy()[df["pos"].to_numpy()]
        df["value"] = arr.ravel()
        return df

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace as one safetensors file (tensors) with its JSON facts in the header."""
        path = Path(path)
        tensors = {"input_ids": self.input_ids, "positions": self.positions}
        for gname in _GROUPS:
            for k, v in getattr(self, gname).items():
                tensors[f"{gname}/{k}"] = v.detach().cpu().contiguous()
        header = {
            "format": TRACE_FORMAT,
            "n_loops": self.n_loops,
            "n_loops_requested": self.n_loops_requested,
            "meta": self.meta,
            "steps": self.steps,
            "site_steps": self.site_steps,
        }
        with atomic_path(path) as tmp:
            save_file(
                {k: v.cpu().contiguous() for k, v in tensors.items()},
                str(tmp),
                metadata={"mythos_lens": json.dumps(header)},
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trace:
        """Read a trace written by :meth:`save` (safetensors only, never pickle)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                header = json.loads((f.metadata() or {}).get("mythos_lens", "{}"))
            tensors = load_file(str(path))
        except Exception as exc:
            raise MythosLensError(f"{path} could not be read ({exc})", "a saved trace") from None
        if header.get("format") != TRACE_FORMAT:
            raise MythosLensError(f"{path} has format {header.get('format')!r}", TRACE_FORMAT)
        groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in _GROUPS}
        for k, v in tensors.items():
            if "/" in k:
                g, name = k.split("/", 1)
                groups[g][name] = v
        return cls(
            input_ids=tensors["input_ids"],
            positions=tensors["positions"],
            n_loops=header["n_loops"],
            n_loops_requested=header["n_loops_requested"],
            meta=header["meta"],
            steps={k: [tuple(x) if isinstance(x, list) else x for x in v]
                   for k, v in header.get("steps", {}).items()},
            site_steps=header.get("site_steps", {}),
            **groups,
        )  # fmt: skip


# How a site's shape string names its axes in tables.
_AXIS_NAMES = {"d": "channel", "n_experts": "expert", "vocab": "token", "q": "pos"}


def axis_names(shape: str, ndim: int) -> list[str]:
    """Column names for a site's axes from its shape string, e.g. ``"[loop, batch, pos, d]"``
    -> ``loop, batch, pos, channel``; attention ``[…, head, q, k]`` -> ``…, head, pos, key``;
    ``k`` elsewhere is a top-k ``slot``. Unknown shapes get ``batch, pos, channel``."""
    tokens = [t.strip() for t in shape.strip("[]").split(",") if t.strip()]
    if len(tokens) != ndim:
        tokens = (["batch", "pos"] + ["channel"] * ndim)[:ndim]
    key = "key" if "q" in tokens else "slot"
    return [_AXIS_NAMES.get(t, key if t == "k" else t) for t in tokens]
