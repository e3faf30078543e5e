"""Activation patching per loop step, batched: a whole loop × position sweep is one forward.

The target input is repeated once per patched cell and a visitor writes the source run's value
into each copy's cell; a second, unpatched forward of the same repeated batch is the baseline.
(Identical rows of one batch can differ by ~1e-6 because matrix kernels treat row blocks
differently; a row compared with the same row of a same-shaped forward cannot, so a copy patched
with its own values changes its logits by exactly 0.)

- :func:`patch_sweep`: clean → corrupted ("denoise": run the corrupted input, restore one clean
  cell) or corrupted → clean ("noise") for ``resid_post`` (h_t), ``block_out`` or ``lora_delta``.
- :func:`lora_cross_patch`: loop t computed with LoRA scale row t′, for every (t, t′) at once.
- Cross-step transplants (h from loop t into loop t′) are ``Patch.from_trace(..., to_loop=t′)``.

The tables (logit difference, restored fraction, answer flips) are computed by
``probes.patching`` from the logits returned here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from mythos_lens.adapters import adapter_for
from mythos_lens.capture import capture, run
from mythos_lens.errors import MythosLensError, check_int
from mythos_lens.events import SiteEvent
from mythos_lens.inputs import as_input_ids
from mythos_lens.model import check_n_loops, loop_embedding, require_openmythos

SWEEP_SITES = ("resid_post", "block_out", "lora_delta")


@dataclass
class SweepResult:
    """Logits at the query position of every patched copy.

    ``cells``: one row per patched copy (``loop``, ``pos``); ``patched``: ``[cell, batch,
    vocab]``; ``baseline``: ``[cell, batch, vocab]`` the same copies unpatched (a same-shaped
    forward); ``source``: ``[batch, vocab]`` the run the patched values come from.
    """

    cells: pd.DataFrame
    patched: torch.Tensor
    baseline: torch.Tensor
    source: torch.Tensor
    site: str
    direction: str
    query: int


class _CellWriter:
    """At `site`, loop t, write the source run's value into copy c's row at position p, for
    every cell (c, t, p). `source` is ``[loop, copies · B, T, ...]``: the source input repeated
    like the target, so each row's value was computed at that very row."""

    def __init__(self, site: str, source: torch.Tensor, cells: pd.DataFrame, B: int) -> None:
        self.site, self.source, self.B = site, source, B
        self.by_loop: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        ar = torch.arange(B)
        for t, g in cells.groupby("loop"):
            copies = torch.tensor(g["copy"].to_list())
            pos = torch.tensor(g["pos"].to_list())
            rows = (copies.view(-1, 1) * B + ar).reshape(-1)
            self.by_loop[int(t)] = (rows, pos.repeat_interleave(B))
        self.target_loops = frozenset(self.by_loop)

    def __repr__(self) -> str:
        return f"patch sweep of {self.site!r}"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != self.site or event.loop not in self.by_loop:
            return None
        rows, pos = self.by_loop[event.loop]
        out = value.clone()
        out[rows, pos] = self.source[event.loop].to(out)[rows, pos]
        return out


def patch_sweep(
    model: Any,
    clean_ids: Any,
    corrupt_ids: Any,
    *,
    site: str = "resid_post",
    n_loops: int | None = None,
    loops: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "denoise",
    query: int = -1,
) -> SweepResult:
    """Patch one (loop, position) cell at a time, every cell in one batched forward.

    Args:
        clean_ids, corrupt_ids: ``[batch, seq]`` token ids of equal shape.
        site: an editable stepped site (OpenMythos: ``resid_post`` (h_t), ``block_out``,
            ``lora_delta``; HRM-Text: ``L_out``, ``H_out``, …).
        n_loops: loop steps (every one runs: ACT early exit is disabled so loops align).
        loops, positions: the cells (default every loop × every position).
        direction: ``denoise`` runs the corrupted input and writes clean values into it;
            ``noise`` runs the clean input and writes corrupted values.
        query: the position whose logits are returned (default the last).
    """
    adapter = adapter_for(model)
    stepped = [n for n in adapter.sites.names(stepped=True) if adapter.sites[n].editable]
    if site not in stepped:
        raise MythosLensError(f"patch sweep of site {site!r}", f"one of {stepped}")
    if direction not in ("denoise", "noise"):
        raise MythosLensError(f"direction={direction!r}", "'denoise' or 'noise'")
    clean, corrupt = adapter.check_ids(clean_ids, model), adapter.check_ids(corrupt_ids, model)
    if clean.shape != corrupt.shape:
        raise MythosLensError(
            f"clean ids {tuple(clean.shape)} vs corrupted {tuple(corrupt.shape)}", "equal shapes"
        )
    n = check_n_loops(adapter.default_steps(model) if n_loops is None else n_loops)
    B, T = clean.shape
    q = check_int("query", query, -T, T - 1) % T
    src_ids, tgt_ids = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    n_steps = capture(model, src_ids, n_loops=n, sites=[site], run_all_loops=True)[site].shape[0]
    loops = list(range(n_steps)) if loops is None else [
        check_int("loop", t, 0, n_steps - 1) for t in loops
    ]  # fmt: skip
    positions = list(range(T)) if positions is None else [
        check_int("position", p, -T, T - 1) % T for p in positions
    ]  # fmt: skip
    cells = pd.DataFrame([(t, p) for t in loops for p in positions], columns=["loop", "pos"])
    cells.insert(0, "copy", range(len(cells)))
    src = capture(model, src_ids.repeat(len(cells), 1), n_loops=n, sites=[site],
                  run_all_loops=True, store_device=None)  # fmt: skip
    repeated = tgt_ids.repeat(len(cells), 1)
    writer = _CellWriter(site, src[site], cells, B)
    patched, _ = run(model, repeated, n_loops=n, visitors=[writer], run_all_loops=True)
    plain, _ = run(model, repeated, n_loops=n, run_all_loops=True)
    shape = (len(cells), B, -1)
    return SweepResult(cells.drop(columns="copy"), patched[:, q].reshape(shape).cpu(),
                       plain[:, q].reshape(shape).cpu(), src.logits[:B, q].cpu(), site,
                       direction, q)  # fmt: skip


class _CopyScales:
    """At every loop, recompute the LoRA delta of the whole batch with a per-copy scale vector
    (``scales`` ``[loop, copies, rank]``). The same operations as upstream's LoRAAdapter on the
    whole batch: a copy given its loop's own row gets exactly upstream's delta."""

    def __init__(self, scales: torch.Tensor, B: int) -> None:
        self.scales, self.B = scales, B
        self.requires = ("lora_delta",)

    def __repr__(self) -> str:
        return "per-copy LoRA scales"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != "lora_delta" or event.loop >= self.scales.shape[0]:
            return None
        lora = event.model.recurrent.lora
        s = self.scales[event.loop].to(lora.B).repeat_interleave(self.B, 0)
        return (lora.down(event.inputs[0]) * s.unsqueeze(1)) @ lora.B


class _CopyEmbeddings:
    """At every loop, the shared block reads a per-copy loop-index embedding (``embeddings``
    ``[loop, copies, d]``) instead of upstream's: ``block_in`` = norm(x − emb(t) + new), with x
    the norm's own input (h + emb(t) + e)."""

    def __init__(self, embeddings: torch.Tensor, B: int) -> None:
        self.embeddings, self.B = embeddings, B
        self.requires = ("block_in",)
        self.site = "block_in"

    def __repr__(self) -> str:
        return "per-copy loop embeddings"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != "block_in" or event.loop >= self.embeddings.shape[0]:
            return None
        x = event.inputs[0]
        own = loop_embedding(x.shape[-1], event.loop + 1, like=x)[event.loop]
        new = self.embeddings[event.loop].to(x).repeat_interleave(self.B, 0).unsqueeze(1)
        # .forward: the norm's own hook (this one) must not run again on the edited input
        return event.model.recurrent.norm.forward(x - own + new)


def lora_scale_sweep(
    model: Any,
    input_ids: Any,
    scales: torch.Tensor,
    *,
    n_loops: int | None = None,
    query: int = -1,
    chunk: int = 16,
    baseline: bool = True,
    embeddings: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run `input_ids` ``[batch, seq]`` once per scale assignment: ``scales`` ``[copies, loop,
    rank]`` gives every loop's LoRA scale vector in each copy (e.g. a permutation of the learned
    rows, or random rows of equal norm). Batched, `chunk` copies per forward. With
    ``embeddings`` ``[copies, loop, d]`` each copy also reads that loop-index embedding at each
    loop (e.g. ``model.loop_embedding`` rows permuted like the scale rows: loop identity swapped).

    Returns ``(patched, baseline)`` ``[copies, batch, vocab]`` at the query position; the
    baseline is the unpatched model in same-shaped forwards (so a copy holding the learned rows
    equals it exactly; ``baseline=False`` skips it and returns None).
    """
    model = require_openmythos(model)
    ids = as_input_ids(input_ids, model)
    n = check_n_loops(n_loops, model)
    B, T = ids.shape
    q = check_int("query", query, -T, T - 1) % T
    sc = torch.as_tensor(scales, dtype=torch.float32)
    rank = model.recurrent.lora.scale.embedding_dim
    if sc.dim() != 3 or sc.shape[1] != n or sc.shape[2] != rank:
        raise MythosLensError(f"scales of shape {tuple(sc.shape)}", f"[copies, {n}, {rank}]")
    if embeddings is not None:
        em = torch.as_tensor(embeddings, dtype=torch.float32)
        if em.shape != (sc.shape[0], n, model.cfg.dim):
            raise MythosLensError(f"embeddings of shape {tuple(em.shape)}",
                                  f"[{sc.shape[0]}, {n}, {model.cfg.dim}] (copies, loop, d)")  # fmt: skip
    patched, plain = [], []
    for start in range(0, sc.shape[0], check_int("chunk", chunk, 1)):
        part = sc[start : start + chunk]
        repeated = ids.repeat(part.shape[0], 1)
        visitors: list[Any] = [_CopyScales(part.transpose(0, 1), B)]
        if embeddings is not None:
            visitors.append(_CopyEmbeddings(em[start : start + chunk].transpose(0, 1), B))
        lg, _ = run(model, repeated, n_loops=n, visitors=visitors, run_all_loops=True)
        patched.append(lg[:, q].reshape(part.shape[0], B, -1).cpu())
        if baseline:
            base, _ = run(model, repeated, n_loops=n, run_all_loops=True)
            plain.append(base[:, q].reshape(part.shape[0], B, -1).cpu())
    return torch.cat(patched), (torch.cat(plain) if baseline else None)


def lora_cross_patch(
    model: Any, input_ids: Any, *, n_loops: int | None = None, query: int = -1
) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor]:
    """Loop t computed with LoRA scale row t′ (every other loop keeps its own row), for every
    pair (t, t′) with t′ over the table's rows, batched.

    Returns ``(cells, patched, baseline)``: ``cells`` has ``loop, row`` per copy, ``patched``
    is ``[cell, batch, vocab]`` at the query position and ``baseline`` the same copies unpatched
    (a same-shaped forward): a copy whose ``row`` is the loop's own row equals it exactly, and
    so does every copy of a model whose LoRA scales are zero.
    """
    model = require_openmythos(model)
    n = check_n_loops(n_loops, model)
    table = model.recurrent.lora.scale.weight.detach()
    R = table.shape[0]
    own = torch.tensor([min(t, R - 1) for t in range(n)])
    cells = pd.DataFrame([(t, r) for t in range(n) for r in range(R)], columns=["loop", "row"])
    rows = own.view(1, n).repeat(len(cells), 1)  # [copies, loop]
    for c, (t, r) in enumerate(cells.itertuples(index=False)):
        rows[c, t] = r
    patched, plain = lora_scale_sweep(model, input_ids, table[rows], n_loops=n, query=query,
                                      chunk=len(cells))  # fmt: skip
    return cells, patched, plain
