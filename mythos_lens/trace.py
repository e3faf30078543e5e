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
from mythos_lens.sites import ALL_SITES, ATTENTION_SITES, LAYER_SITES, LOOP_SITES, STREAM_SITES

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

    - ``loop[site]``: ``[loop, batch, pos, ...]`` for every loop step that actually ran
      (``n_loops`` of them; ACT may stop before ``n_loops_requested``).
    - ``stream[site]``: ``[batch, pos, ...]`` (embed, e, act_out, logits).
    - ``layers["prelude" | "coda"]``: ``[layer, batch, pos, d]``.
    - ``params``: ``injection_A`` / ``injection_B`` ``[d]``, ``lora_scale`` ``[max_loop_iters, rank]``,
      ``router_bias`` ``[n_experts]``.
    - ``input_ids``: ``[batch, seq]`` (always the full sequence); ``positions``: ``[pos]``, the
      sequence positions kept on the ``pos`` axis.
    - ``meta``: JSON-ready facts (model config, act threshold, loop_dim, lora row used per loop, ...).
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
        if name in ALL_SITES:
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
        if site in LOOP_SITES:
            lead = ["loop", "batch", "pos"]
        elif site in LAYER_SITES:
            lead = ["layer", "batch", "pos"]
        elif site in STREAM_SITES:
            lead = ["batch", "pos"]
        else:
            lead = ["index"]
        tail = {
            "router_logits": ["expert"],
            "expert_ids": ["slot"],
            "expert_weights": ["slot"],
            "logits": ["token"],
        }.get(site, ["channel"])
        if site in ATTENTION_SITES:  # [loop|layer, batch, head, q, k]: q is the position
            lead, tail = [lead[0], "batch", "head", "pos"], ["key"]
        names = (lead + tail)[: x.dim()]
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
            **groups,
        )
