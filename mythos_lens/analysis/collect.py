"""Streaming collection: batches of captures reduced to what the instruments need, in bounded memory.

Per batch (every loop running): exact debiased CKA of ``h_t``, ``Δh_t`` and ``block_out`` over every
token (streamed), token-weighted sums of per-batch means (router overlap, lenses, convergence,
LoRA-ablation effects, accuracy), and a capped buffer of the first ``probe_examples`` sequences at
the query position for the probes, load and LoRA-size tables.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd
import torch
from open_mythos.main import OpenMythos

from mythos_lens.analysis.causal import CausalCollector
from mythos_lens.analysis.sums import Sums
from mythos_lens.capture import capture, run
from mythos_lens.errors import MythosLensError
from mythos_lens.interventions import AblateLora, SetLoraScale
from mythos_lens.readouts import coda_lens, exit_states, logit_lens, loop_step
from mythos_lens.tasks.base import TaskBatch
from mythos_lens.tasks.pointer import PointerTask
from probes.convergence import lens_kl_table, spectral_radius, step_table
from probes.lens import apply_lens, lens_table
from probes.lora import ablation_effects
from probes.routing import (
    router_overlap,
)
from probes.similarity import StreamingCKA, loop_deltas

CAPTURE_SITES = ["resid_post", "block_out", "block_in", "lora_delta", "expert_ids", "e",
                 "act_weight", "cum_halt_prob"]  # fmt: skip


CKA_SITES = ("resid_post", "delta_h", "block_out")


class Collector:
    """Streams batches of one model's captures into the instruments' inputs (bounded memory).

    Args:
        model: an OpenMythos (eval mode).
        n_loops: loop steps (every one runs: ``run_all_loops=True``).
        position: the query position (negative counts from the end).
        probe_examples: sequences kept at the query position for probes.
        seed: base seed for lens control tokens.
    """

    def __init__(
        self,
        model: OpenMythos,
        n_loops: int,
        position: int,
        probe_examples: int,
        seed: int,
        spectral_examples: int = 4,
        spectral_iters: int = 30,
        patch_examples: int = 0,
    ) -> None:
        self.model = model
        self.causal = CausalCollector(model, n_loops, patch_examples)
        self.spectral_examples = spectral_examples
        self.spectral_iters = spectral_iters
        self.n_loops = n_loops
        self.position = position
        self.probe_examples = probe_examples
        self.seed = seed
        cfg = model.cfg
        self.E, self.k, self.d = cfg.n_experts, cfg.n_experts_per_tok, cfg.dim
        self.cka = {s: StreamingCKA(n_loops, self.d, "debiased") for s in CKA_SITES}
        self.router = Sums()
        self.lens = Sums()
        self.conv = Sums()
        self.ablation = Sums()
        self.accuracy = Sums()
        self.buffer: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.kept = 0
        self.n_seen = 0
        self.n_tokens = 0
        self.spectral: pd.DataFrame | None = None
        self._readouts = {"logit": logit_lens(model), "coda": coda_lens(model)}

    # -- per batch ----------------------------------------------------------------------------
    def update(
        self, ids: torch.Tensor, batch: TaskBatch | None, task: PointerTask | None, index: int
    ) -> None:
        """Add one batch ``ids [B, T]`` (with its labels ``batch`` when known)."""
        sites = CAPTURE_SITES + (["attn_pattern"] if hasattr(task, "pair_truth") else [])
        tr = capture(self.model, ids, n_loops=self.n_loops, sites=sites, run_all_loops=True)
        if tr.n_loops != self.n_loops:
            raise MythosLensError(f"{tr.n_loops} loops ran", f"{self.n_loops}")
        B, T = ids.shape
        q = self.position % T
        h, e = tr["resid_post"], tr.stream["e"]
        self.cka["resid_post"].update(h)
        self.cka["delta_h"].update(loop_deltas(h, e))
        self.cka["block_out"].update(tr["block_out"])
        self.n_seen += B
        self.n_tokens += B * T

        ov = router_overlap(tr["expert_ids"], self.E)
        for metric in ("overlap_at_k", "jaccard"):
            self.router.add_table(ov.assign(metric=metric), ["loop_a", "loop_b", "metric"],
                                  metric, 1.0)  # fmt: skip

        target = batch.answer.view(B, 1) if batch is not None else None
        final = tr.logits[:, q : q + 1]
        hq = h[:, :, q : q + 1]
        exit_lg = apply_lens(exit_states(tr["act_weight"], h), self._readouts["coda"])
        lens_logits = {
            "exit": exit_lg[:, :, q : q + 1],
            "logit": apply_lens(hq, self._readouts["logit"]),
            "coda": apply_lens(h, self._readouts["coda"])[:, :, q : q + 1],
        }
        for name, lg in lens_logits.items():
            tab = lens_table(lg, final, target_ids=target, control_seed=self.seed * 7919 + index,
                             lens=name)  # fmt: skip
            metrics = ["final_rank", "control_rank", "kl_final_lens", "entropy"]
            if target is not None:
                tab["target_top1"] = (tab["target_rank"] == 0).astype(float)
                metrics += ["target_rank", "target_top1"]
            for m in metrics:
                self.lens.add_table(tab.assign(metric=m), ["lens", "loop", "metric"], m, 1.0)
        steps = step_table(hq, e[:, q : q + 1])
        self.conv.add_table(steps, ["loop", "metric"], "value", 1.0)
        for name in ("coda", "exit"):
            kl = lens_kl_table(lens_logits[name]).assign(metric=f"kl_prev_{name}")
            self.conv.add_table(kl, ["loop", "metric"], "value", 1.0)
        self.causal.update(tr, ids, batch, task, q, exit_lg)

        self._ablate(ids, final, target, q, B)
        if target is not None:
            ok = (final[:, 0].argmax(-1) == batch.answer).double()
            for hop in batch.hops.unique().tolist():
                sel = batch.hops == hop
                self.accuracy.add(("accuracy", int(hop)), float(ok[sel].mean()), float(sel.sum()))
            for hop, ch in task.chance(batch).items():
                w = float((batch.hops == hop).sum())
                for k, v in ch.items():
                    self.accuracy.add((f"chance_{k}", int(hop)), float(v), w)
        if self.spectral is None:
            self.spectral = self._spectral(tr, ids)
        self._keep(tr, ids, batch, q)

    def _ablate(self, ids, final, target, q, B) -> None:
        runs: dict[str, dict[int, torch.Tensor]] = {"ablate_lora": {}}
        for t in range(self.n_loops):
            lg, _ = run(self.model, ids, n_loops=self.n_loops, visitors=[AblateLora([t])],
                        run_all_loops=True)  # fmt: skip
            runs["ablate_lora"][t] = lg[:, q : q + 1]
        for name, visitor in (("ablate_lora_all", AblateLora(None)),
                              ("mean_scale_all", SetLoraScale(None, "mean"))):  # fmt: skip
            lg, _ = run(self.model, ids, n_loops=self.n_loops, visitors=[visitor],
                        run_all_loops=True)  # fmt: skip
            runs[name] = {0: lg[:, q : q + 1]}
        for name, logits in runs.items():
            tab = ablation_effects(final, logits, target_ids=target)
            for _, r in tab.iterrows():
                loop = int(r["ablated_loop"]) if name == "ablate_lora" else -1
                self.ablation.add((name, loop, r["metric"]), float(r["value"]), float(B))

    def _spectral(self, tr, ids) -> pd.DataFrame:
        """ρ and ‖J‖ of the loop map at each loop, on the first few sequences of the first batch."""
        m = min(self.spectral_examples, ids.shape[0])
        e = tr.stream["e"][:m]
        h = tr["resid_post"][:, :m]
        rows = []
        for t in range(self.n_loops):
            prev = e if t == 0 else h[t - 1]
            with torch.enable_grad():
                sr = spectral_radius(loop_step(self.model, e, t), prev,
                                     n_iter=self.spectral_iters, seed=self.seed)  # fmt: skip
            rows += [{"loop": t, "metric": k, "value": sr[k]}
                     for k in ("spectral_radius", "spectral_norm")]  # fmt: skip
        return pd.DataFrame(rows)

    def _keep(self, tr, ids, batch, q) -> None:
        room = self.probe_examples - self.kept
        if room <= 0:
            return
        take = min(room, ids.shape[0])
        for site in ("resid_post", "block_in", "lora_delta", "block_out"):
            self.buffer[site].append(tr[site][:, :take, q : q + 1].clone())
        self.buffer["expert_ids"].append(tr["expert_ids"][:, :take].clone())
        self.buffer["types"].append(ids[:take, q : q + 1].clone())
        if batch is not None:
            self.buffer["hop_entities"].append(batch.hop_entities[:take].clone())
            self.buffer["hops"].append(batch.hops[:take].clone())
        self.kept += take

    def retained_bytes(self) -> int:
        """Bytes of every tensor kept across batches (buffer + CKA accumulators)."""
        n = sum(t.numel() * t.element_size() for v in self.buffer.values() for t in v)
        for acc in self.cka.values():
            n += sum(x.numel() * x.element_size() for x in (acc._G, acc._S, acc._ZA))
        return n
