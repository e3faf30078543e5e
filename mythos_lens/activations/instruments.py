"""Streaming instruments of a collect run: one :class:`~mythos_lens.analysis.collect.Collector`
per process (``streaming_only``), its sums saved with every finished shard and added over the
processes with ``all_reduce`` into the tables a single process writes.

What is summed: the CKA moments of h_t, Δh_t and the block output (one shared shift, broadcast
from rank 0), router overlaps, lenses, convergence and accuracy (token-weighted sums), the
effective-depth histogram and sums, and expert counts. Sums of floats in another order differ in
the last bits only (float64); counts are exact.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.activations.ranks import Ranks
from mythos_lens.analysis.collect import Collector
from mythos_lens.analysis.config import AnalyzeConfig
from mythos_lens.analysis.sums import Sums
from mythos_lens.analysis.tables import collector_tables
from mythos_lens.errors import MythosLensError
from mythos_lens.trace import Trace

# Sums of the collector and of its causal half, by attribute name.
SUMS = ("router", "lens", "conv", "ablation", "accuracy")
CAUSAL_SUMS = ("depth", "reads", "patch", "cross")


def make_collector(model: Any, n_loops: int, position: int, seed: int) -> Collector:
    """A collector of the instruments that are sums (start it with :func:`start`)."""
    return Collector(model, n_loops, position, 0, seed, streaming_only=True)


def start(col: Collector, first: Trace, ranks: Ranks) -> None:
    """Size the CKA sums from `first` and shift them by rank 0's mean of it, on every rank."""
    col.start(first)
    for acc in col.cka.values():
        st = acc.state_dict()
        acc.load_state_dict({**st, "shift": ranks.broadcast_(st["shift"])})


def _sums(col: Collector) -> dict[str, Sums]:
    out = {name: getattr(col, name) for name in SUMS}
    out.update({f"causal.{name}": getattr(col.causal, name) for name in CAUSAL_SUMS})
    return out


def state(col: Collector) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The collector's sums: tensors (CKA moments and shift, counts) and JSON (the rest)."""
    tensors = {f"cka.{role}.{k}": v for role, acc in col.cka.items()
               for k, v in acc.state_dict().items()}  # fmt: skip
    tensors["depth_counts"] = torch.from_numpy(col.causal.depth_counts.copy())
    if col.expert_counts is not None:
        tensors["expert_counts"] = col.expert_counts.clone()
    meta = {"sums": {name: s.records() for name, s in _sums(col).items()},
            "n_seen": col.n_seen, "n_tokens": col.n_tokens, "E": col.E, "k": col.k,
            "d": col.d}  # fmt: skip
    return tensors, meta


def load_state(col: Collector, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Replace the collector's sums by a saved :func:`state`."""
    for role, acc in col.cka.items():
        prefix = f"cka.{role}."
        part = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        if not part:
            raise MythosLensError(f"saved instrument state lacks CKA of {role!r}",
                                  "a state written by this collect run")  # fmt: skip
        acc.load_state_dict(part)
    col.causal.depth_counts = tensors["depth_counts"].numpy().astype(np.int64).copy()
    col.expert_counts = tensors.get("expert_counts")
    for name, records in meta["sums"].items():
        owner, attr = (col.causal, name.removeprefix("causal.")) if "." in name else (col, name)
        setattr(owner, attr, Sums.from_records(records))
    col.n_seen, col.n_tokens = meta["n_seen"], meta["n_tokens"]
    col.E, col.k, col.d = meta["E"], meta["k"], meta["d"]


def reduce(col: Collector, ranks: Ranks) -> None:
    """Add every rank's sums into `col` on every rank (``all_reduce``)."""
    if not ranks.distributed:
        return
    for acc in col.cka.values():
        st = acc.state_dict()
        moments = {k: ranks.sum_(st[k].clone()) for k in acc.MOMENTS}
        acc.load_state_dict({**st, **moments})
    counts = torch.from_numpy(col.causal.depth_counts.copy())
    col.causal.depth_counts = ranks.sum_(counts).numpy()
    E = int(ranks.max_(torch.tensor([col.E]))[0])
    if E:
        L = col.n_loops
        mine = col.expert_counts if col.expert_counts is not None else torch.zeros(L, E)
        col.expert_counts = ranks.sum_(mine.to(torch.int64).clone())
    sizes = ranks.max_(torch.tensor([col.E, col.k, col.d]))
    col.E, col.k, col.d = (int(v) for v in sizes)
    seen = ranks.sum_(torch.tensor([col.n_seen, col.n_tokens], dtype=torch.int64))
    col.n_seen, col.n_tokens = int(seen[0]), int(seen[1])
    for name, sums in _sums(col).items():
        keys = sorted({json.dumps(r[:-2]) for part in ranks.gather_json(sums.records())
                       for r in part})  # fmt: skip
        index = {k: i for i, k in enumerate(keys)}
        acc = torch.zeros(len(keys), 2, dtype=torch.float64)
        for r in sums.records():
            acc[index[json.dumps(r[:-2])]] = torch.tensor(r[-2:], dtype=torch.float64)
        ranks.sum_(acc)
        merged = [[*json.loads(k), *acc[i].tolist()] for k, i in index.items()]
        owner, attr = (col.causal, name.removeprefix("causal.")) if "." in name else (col, name)
        setattr(owner, attr, Sums.from_records(merged))


def tables(col: Collector, model: Any, name: str, seed: int) -> dict[str, pd.DataFrame]:
    """The non-empty analysis tables of a (reduced) streaming collector."""
    cfg = AnalyzeConfig(seed=seed, position=col.position, progress=False)
    out = collector_tables(col, model, cfg, name)
    return {k: v for k, v in out.items() if len(v) and not k.startswith("_")}
