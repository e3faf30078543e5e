"""The causal half of an analysis: which loops reach the output, what each loop reads, what each
loop causes — streamed per batch beside :class:`~mythos_lens.analysis.collect.Collector`.

At the query position, per batch: ACT weights and shares, the effect of stopping after each
loop (exit lens vs the full output), effective depths (a histogram), exit rules, and — for task
inputs — attention on the ground-truth pairs. On the first ``patch_examples`` task examples:
a loop × position patching sweep of h_t (clean start key vs a corrupted one, denoising) and the
LoRA cross-patch matrix (loop t computed with scale row t′).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.adapters import adapter_for
from mythos_lens.analysis.sums import Sums
from mythos_lens.patching import lora_cross_patch, patch_sweep
from mythos_lens.tasks.base import TaskBatch
from mythos_lens.trace import Trace
from probes.attention import pair_read_summary, pair_reads
from probes.effective_depth import (
    act_share_table,
    effective_depth,
    loops_that_matter,
    stop_effect_table,
)
from probes.exits import exit_rule_summary, exit_steps
from probes.lora import ablation_effects
from probes.patching import patch_effects

DEPTH_METRICS = {
    "act_weight": "act_weight", "share": "act_share", "share_from_here": "share_from_here",
    "weight_sum": "weight_sum", "kl_full_exit": "kl_full_exit", "same_top1": "same_top1",
    "exit_correct": "exit_accuracy", "full_correct": "full_accuracy",
}  # fmt: skip
PATCH_METRICS = ("restored", "flipped", "logit_diff", "delta_kl")
PATCH_CHUNK = 8


class CausalCollector:
    """Per-batch causal instruments of one model at the query position (bounded memory)."""

    def __init__(
        self, model: Any, n_loops: int, patch_examples: int, exit_rules: bool = True
    ) -> None:
        self.model = model
        self.adapter = adapter_for(model)
        self.roles = dict(self.adapter.roles)
        self.n_loops = n_loops
        self.patch_examples = patch_examples
        self.depth = Sums()
        self.depth_counts = np.zeros(n_loops + 1, dtype=np.int64)
        self.exit_rules = exit_rules  # per-token exit steps are kept (not a sum) when True
        self.exits: list[pd.DataFrame] = []
        self.reads = Sums()
        self.patch = Sums()
        self.cross = Sums()
        self.patched = 0

    def update(
        self,
        tr: Trace,
        ids: torch.Tensor,
        batch: TaskBatch | None,
        task: Any,
        q: int,
        exit_logits: torch.Tensor,
    ) -> None:
        """Add one batch: its trace (every position, every loop), ids ``[B, T]``, labels, the
        query position and the exit-lens logits ``[loop, B, T, vocab]``."""
        B = ids.shape[0]
        sl = slice(q, q + 1)
        target = None if batch is None else batch.answer.view(B, 1)
        ex, final = exit_logits[:, :, sl], tr.logits[:, sl]
        tables = [stop_effect_table(ex, final, target_ids=target)]
        if "act_weight" in self.roles:
            tables.append(act_share_table(tr[self.roles["act_weight"]][:, :, sl]))
        for tab in tables:
            for col, name in DEPTH_METRICS.items():
                if col in tab.columns:
                    self.depth.add_table(tab.assign(metric=name, v=tab[col].astype(float)),
                                         ["loop", "metric"], "v", 1.0)  # fmt: skip
        d = effective_depth(ex, final).reshape(-1)
        self.depth_counts += np.bincount(d.numpy(), minlength=self.n_loops + 1)
        if self.exit_rules:
            halt = self.roles.get("cum_halt")
            h0 = self.roles.get("state_in")
            self.exits.append(exit_steps(
                ex, final, tr[self.roles["state"]][:, :, sl],
                h0=None if h0 is None else tr[h0][:, sl],
                cum_halt_prob=None if halt is None else tr[halt][:, :, sl],
                act_threshold=tr.meta.get("act_threshold") if halt else None, target_ids=target,
            ))  # fmt: skip
        if batch is None or task is None:
            return
        attn = self.roles.get("attention")
        if attn in tr and hasattr(task, "pair_truth"):
            truth = task.pair_truth(batch, tr.n_loops)
            s = pair_read_summary(pair_reads(tr[attn], truth["pair_positions"],
                                             truth["expected_pair"], query=q))  # fmt: skip
            for r in s.itertuples(index=False):
                for m in ("top_is_expected", "expected_mass", "top_mass", "chance_mass"):
                    self.reads.add((r.loop, r.head, m), getattr(r, m), float(r.n))
        room = self.patch_examples - self.patched
        if room > 0 and hasattr(task, "corrupt"):
            # a sweep repeats each example loops × positions times: a few examples at a time
            for start in range(0, min(room, B), PATCH_CHUNK):
                keep = torch.zeros(B, dtype=torch.bool)
                keep[start : min(room, B, start + PATCH_CHUNK)] = True
                self._patch(ids[keep], batch.select(keep), task, q)

    def _patch(self, ids: torch.Tensor, batch: TaskBatch, task: Any, q: int) -> None:
        n = ids.shape[0]
        corrupt = task.corrupt(batch, seed=0)
        res = patch_sweep(self.model, ids, corrupt.input_ids, n_loops=self.n_loops, query=q,
                          site=self.roles["state"])  # fmt: skip
        eff = patch_effects(res.patched, res.baseline, res.source, batch.answer, corrupt.answer)
        eff = eff.merge(res.cells.reset_index(names="cell"), on="cell")
        for m in PATCH_METRICS:
            self.patch.add_table(eff.assign(metric=m, v=eff[m].astype(float)),
                                 ["loop", "pos", "metric"], "v", 1.0)  # fmt: skip
        self.patched += n
        if "lora" not in self.roles:
            return
        cells, patched, base = lora_cross_patch(self.model, ids, n_loops=self.n_loops, query=q)
        target = batch.answer.view(n, 1)
        for c, (t, r) in enumerate(cells.itertuples(index=False)):
            tab = ablation_effects(base[c].unsqueeze(1), {0: patched[c].unsqueeze(1)}, target)
            for row in tab.itertuples(index=False):
                self.cross.add((t, r, row.metric), row.value, float(n))

    # -- tables -------------------------------------------------------------------------------
    def matters(self) -> pd.DataFrame:
        """``loop, share_needing, matters`` from the histogram of effective depths."""
        depths = np.repeat(np.arange(self.n_loops + 1), self.depth_counts)
        return loops_that_matter(torch.from_numpy(depths), self.n_loops)

    def tables(self, name: str) -> dict[str, pd.DataFrame]:
        """``effective_depth``, ``exit_rules``, ``attention_reads``, ``patching`` and
        ``lora_cross`` for checkpoint `name` (columns in ``analysis.columns``)."""
        out: dict[str, pd.DataFrame] = {}
        long = self.depth.frame(["loop", "metric"])
        wide = long.pivot(index="loop", columns="metric", values="value").reset_index()
        wide = wide.merge(self.matters(), on="loop", how="left")
        wide["n"] = int(self.depth_counts.sum())
        out["effective_depth"] = wide.assign(checkpoint=name)
        if self.exits:
            steps = pd.concat(self.exits, ignore_index=True)
            out["exit_rules"] = exit_rule_summary(steps).assign(checkpoint=name, n=len(steps))
        out["attention_reads"] = _wide(self.reads, ["loop", "head"]).assign(checkpoint=name)
        patch = _wide(self.patch, ["loop", "pos"])
        if len(patch):
            patch = patch.assign(site=self.roles["state"], direction="denoise")
        out["patching"] = patch.assign(checkpoint=name)
        cross = _wide(self.cross, ["loop", "row"])
        out["lora_cross"] = cross.assign(checkpoint=name)
        return out


def _wide(sums: Sums, keys: list[str]) -> pd.DataFrame:
    """A ``keys…, metric`` sum table as one column per metric, with ``n`` (examples)."""
    long = sums.frame([*keys, "metric"])
    if not len(long):
        return long
    n = long.groupby(keys)["n"].first()
    wide = long.pivot_table(index=keys, columns="metric", values="value")
    return wide.join(n).reset_index()
