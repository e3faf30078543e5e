"""The columns of an activation dataset, their Arrow types, and one batch of rows.

One row per input sequence (as SAELens's ``CacheActivationsRunner`` writes): ``seq`` (index of
the sequence in the inputs), ``positions`` and ``token_ids`` (the kept positions and their
tokens), then one column per site and step named by the hook name
(:meth:`~mythos_lens.adapters.base.Adapter.hook_name`: ``recurrent.loop.3.hook_resid_post``).
A column of a ``[d]``-valued site is ``Array2D((P, d))``; of a scalar site (``halt_prob``)
``Sequence(length=P)``. P is the sequence length (positions ``all``), 1 (``last``) or varies per
row (``mask``: ``Array2D((None, d))``). Arrow has no bfloat16: bf16 values are stored exactly as
float32 (bf16 ⊂ float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mythos_lens.adapters.base import Adapter
from mythos_lens.errors import MythosLensError
from mythos_lens.sites import LAYER
from mythos_lens.trace import Trace

SEQ, POSITIONS, TOKENS = "seq", "positions", "token_ids"
POSITION_MODES = ("all", "last", "mask")
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ARROW_FLOAT = {"float32": "float32", "float16": "float16", "bfloat16": "float32"}


@dataclass(frozen=True)
class Column:
    """One activation column: `site` at `step` (stepped sites) or `layer` (layer sites);
    ``width`` is one token's shape (``()`` or ``(d,)``), ``dtype`` its Arrow dtype."""

    name: str
    site: str
    step: int | None
    layer: int | None
    width: tuple[int, ...]
    dtype: str

    def spec(self, n_positions: int | None) -> dict[str, Any]:
        """JSON-ready description (manifest): name, site, step / layer, shape per row, dtype."""
        return {"name": self.name, "site": self.site, "step": self.step, "layer": self.layer,
                "shape": [n_positions, *self.width], "dtype": self.dtype}  # fmt: skip


def check_sites(adapter: Adapter, sites: Any) -> list[str]:
    """The sites to store (default: the model's carried state), each one value per token."""
    if sites is None:
        sites = [adapter.roles["state"]]
    chosen = list(adapter.sites.resolve(sites))
    for s in chosen:
        spec = adapter.sites[s]
        if spec.attention or spec.pos_axis != 1:
            raise MythosLensError(
                f"site {s!r} is not one value per token ({spec.shape})",
                "per-token sites such as " + ", ".join(adapter.sites.names(stepped=True)[:4]),
            )
    return chosen


def _arrow_dtype(x: torch.Tensor, store_dtype: str) -> str:
    if x.is_floating_point():
        return ARROW_FLOAT[store_dtype]
    if x.dtype == torch.bool:
        return "bool"
    return str(x.dtype).removeprefix("torch.")


def _values(trace: Trace, site: str, index: int | None) -> torch.Tensor:
    """``[batch, pos, ...]`` of `site` at step / layer `index` (None: a stream site)."""
    x = trace[site]
    return x if index is None else x[index]


def columns_of(adapter: Adapter, trace: Trace, sites: list[str], store_dtype: str) -> list[Column]:
    """One :class:`Column` per site and step (or layer) that ran in `trace`, in site order."""
    cols = []
    for site in sites:
        spec = adapter.sites[site]
        x = trace[site]
        if spec.stepped:
            index = [(t, t, None) for t in range(x.shape[0])]
        elif spec.step == LAYER:
            index = [(i, None, i) for i in range(x.shape[0])]
        else:
            index = [(None, None, None)]
        for i, step, layer in index:
            v = _values(trace, site, i)
            width = tuple(v.shape[2:])
            if len(width) > 1:
                raise MythosLensError(f"site {site!r} has {width} values per token",
                                      "a scalar or a vector per token")  # fmt: skip
            cols.append(Column(adapter.hook_name(site, step, layer), site, step, layer, width,
                               _arrow_dtype(v, store_dtype)))  # fmt: skip
    return cols


def features(columns: list[Column], n_positions: int | None):
    """The ``datasets.Features`` of a dataset with `columns` (``n_positions`` None: ragged)."""
    from datasets import Array2D, Features, Sequence, Value

    length = -1 if n_positions is None else n_positions
    out = {SEQ: Value("int64"), POSITIONS: Sequence(Value("int32"), length=length),
           TOKENS: Sequence(Value("int32"), length=length)}  # fmt: skip
    for c in columns:
        if c.width:
            out[c.name] = Array2D(shape=(n_positions, c.width[0]), dtype=c.dtype)
        else:
            out[c.name] = Sequence(Value(c.dtype), length=length)
    return Features(out)


def kept_positions(mode: str, ids: torch.Tensor, mask: torch.Tensor | None) -> list[np.ndarray]:
    """Per row of ``ids [B, T]``, the positions stored: all, the last one, or the mask's."""
    B, T = ids.shape
    if mode == "all":
        return [np.arange(T)] * B
    if mode == "last":
        return [np.array([T - 1])] * B
    assert mask is not None
    return [np.flatnonzero(mask[i].numpy()) for i in range(B)]


def to_store_dtype(x: torch.Tensor, store_dtype: str, name: str) -> np.ndarray:
    """`x` as stored: floats rounded to `store_dtype` (bf16 values kept as float32, exactly);
    values float16 cannot hold raise."""
    if not x.is_floating_point():
        return x.numpy()
    y = x.to(STORE_DTYPES[store_dtype])
    if store_dtype == "float16" and bool((torch.isinf(y) & ~torch.isinf(x)).any()):
        raise MythosLensError(f"{name} holds values beyond float16's range (±65504)",
                              "--dtype bfloat16 or float32")  # fmt: skip
    return y.float().numpy() if store_dtype == "bfloat16" else y.numpy()


def rows(
    trace: Trace,
    columns: list[Column],
    seq: np.ndarray,
    ids: torch.Tensor,
    keep: list[np.ndarray],
    ragged: bool,
    store_dtype: str,
) -> dict[str, Any]:
    """One batch of rows: ``seq`` ``[B]``, ``ids [B, T]`` and the positions `keep` per row
    (all rows alike unless `ragged`), activations read from `trace` (every position)."""
    out: dict[str, Any] = {SEQ: seq}
    tok = ids.cpu().numpy().astype(np.int32)
    if ragged:
        out[POSITIONS] = [k.astype(np.int32) for k in keep]
        out[TOKENS] = [tok[i, k] for i, k in enumerate(keep)]
    else:
        out[POSITIONS] = np.tile(keep[0].astype(np.int32), (len(keep), 1))
        out[TOKENS] = tok[:, keep[0]]
    for c in columns:
        index = c.step if c.step is not None else c.layer
        x = to_store_dtype(_values(trace, c.site, index).detach().cpu(), store_dtype, c.name)
        out[c.name] = [x[i, k] for i, k in enumerate(keep)] if ragged else x[:, keep[0]]
    return out
