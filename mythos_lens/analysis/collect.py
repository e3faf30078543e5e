"""Streaming collection: batches of captures reduced to what the instruments need, in bounded memory.

Per batch (every loop running): exact debiased CKA of ``h_t``, ``Δh_t`` and ``block_out`` over every
token (streamed), token-weighted sums of per-batch means (router overlap, lenses, convergence,
LoRA-ablation effects, accuracy), and a capped buffer of the first ``probe_examples`` sequences at
the query position for the probes, load and LoRA-size tables.

``streaming_only=True`` keeps just the instruments whose state is a sum over batches (CKA
moments, router overlap, lenses, convergence, accuracy, effective depth, expert counts): what
``mythos-lens collect`` adds across processes (``mythos_lens.activations.instruments``).
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd
import torch
from open_mythos.main import OpenMythos

from mythos_lens.adapters import adapter_for
from mythos_lens.analysis.causal import CausalCollector
from mythos_lens.analysis.sums import Sums
from mythos_lens.capture import capture, run
from mythos_lens.errors import MythosLensError
from mythos_lens.interventions import AblateLora, SetLoraScale
from mythos_lens.tasks.base import TaskBatch
from mythos_lens.tasks.pointer import PointerTask
from mythos_lens.trace import Trace
from probes.convergence import lens_kl_table, spectral_radius, step_table
from probes.lens import apply_lens, lens_table
from probes.lora import ablation_effects
from probes.routing import (
    router_overlap,
)
from probes.similarity import StreamingCKA, loop_deltas

# Roles whose sites the collector captures when the model has them (see adapters.base.ROLES).
CAPTURE_ROLES = ("state", "state_in", "block_out", "block_in", "lora", "experts", "act_weight",
                 "cum_halt")  # fmt: skip
# CKA between steps, by role: the state, its step (Δ), the block output.
CKA_ROLES = ("state", "delta", "block_out")


class Collector:
    """Streams batches of one model's captures into the instruments' inputs (bounded memory).

    Args:
        model: an OpenMythos (eval mode).
        n_loops: loop steps (every one runs: ``run_all_loops=True``).
        position: the query position (negative counts from the end).
        probe_examples: sequences kept at the query position for probes.
        seed: base seed for lens control tokens.
        streaming_only: only instruments that are sums over batches (no LoRA-ablation runs,
            spectral radius, probe buffer, exit rules, attention reads or patching); expert
            loads are counted at the query position over every sequence.
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
        streaming_only: bool = False,
    ) -> None:
        self.model = model
        self.adapter = adapter_for(model)
        self.roles = dict(self.adapter.roles)
        self.streaming_only = streaming_only
        if streaming_only:
            probe_examples = patch_examples = 0
        self.causal = CausalCollector(model, n_loops, patch_examples, exit_rules=not streaming_only)
        self.spectral_examples = spectral_examples
        self.spectral_iters = spectral_iters
        self.n_loops = n_loops
        self.position = position
        self.probe_examples = probe_examples
        self.seed = seed
        self.E = self.k = self.d = 0  # read from the first batch
        self.cka: dict[str, StreamingCKA] = {}
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
        self.expert_counts: torch.Tensor | None = None  # [loop, E] at the query position
        self._readouts = {name: make(model) for name, make in self.adapter.readouts.items()}

    def site(self, role: str) -> str | None:
        """The model's site for `role` (None when it has no such thing)."""
        return self.roles.get(role)

    # -- per batch ----------------------------------------------------------------------------
    def capture_sites(self, task: PointerTask | None) -> list[str]:
        """The sites :meth:`update` needs in a trace."""
        sites = [self.roles[r] for r in CAPTURE_ROLES if r in self.roles]
        sites += [s for s in self.adapter.exit_sites if s not in sites]  # the exit lens's inputs
        wants_reads = hasattr(task, "pair_truth") and not self.streaming_only
        if wants_reads and "attention" in self.roles:
            sites.append(self.roles["attention"])
        return sites

    def update(
        self,
        ids: torch.Tensor,
        batch: TaskBatch | None,
        task: PointerTask | None,
        index: int,
        trace: Trace | None = None,
    ) -> None:
        """Add one batch ``ids [B, T]`` (with its labels ``batch`` when known); `trace` is its
        capture when the caller made it (every loop run, :meth:`capture_sites` at every
        position), else it is captured here."""
        tr = trace
        if tr is None:
            tr = capture(self.model, ids, n_loops=self.n_loops, sites=self.capture_sites(task),
                         run_all_loops=True)  # fmt: skip
        if tr.n_loops != self.n_loops:
            raise MythosLensError(f"{tr.n_loops} loops ran", f"{self.n_loops}")
        B, T = ids.shape
        q = self.position % T
        h = tr[self.roles["state"]]
        e = tr[self.roles["state_in"]] if "state_in" in self.roles else None
        if not self.cka:  # sizes come from the first batch
            self.start(tr)
        for role, x in self._cka_inputs(tr).items():
            self.cka[role].update(x)
        self.n_seen += B
        self.n_tokens += B * T

        if "experts" in self.roles:
            experts = tr[self.roles["experts"]]
            self.k, self.E = experts.shape[-1], int(tr.meta["n_experts"])
            if self.streaming_only:
                self._count_experts(experts[:, :, q])
            ov = router_overlap(experts, self.E)
            for metric in ("overlap_at_k", "jaccard"):
                self.router.add_table(ov.assign(metric=metric), ["loop_a", "loop_b", "metric"],
                                      metric, 1.0)  # fmt: skip

        target = batch.answer.view(B, 1) if batch is not None else None
        final = tr.logits[:, q : q + 1]
        hq = h[:, :, q : q + 1]
        exit_lg = self.adapter.exit_logits(self.model, tr)
        lens_logits = {"exit": exit_lg[:, :, q : q + 1]}
        for name, readout in self._readouts.items():  # the coda needs the whole sequence
            lens_logits[name] = apply_lens(h, readout)[:, :, q : q + 1]
        for name, lg in lens_logits.items():
            tab = lens_table(lg, final, target_ids=target, control_seed=self.seed * 7919 + index,
                             lens=name)  # fmt: skip
            metrics = ["final_rank", "control_rank", "kl_final_lens", "entropy"]
            if target is not None:
                tab["target_top1"] = (tab["target_rank"] == 0).astype(float)
                metrics += ["target_rank", "target_top1"]
            for m in metrics:
                self.lens.add_table(tab.assign(metric=m), ["lens", "loop", "metric"], m, 1.0)
        steps = step_table(hq, None if e is None else e[:, q : q + 1])
        self.conv.add_table(steps, ["loop", "metric"], "value", 1.0)
        for name, lg in lens_logits.items():
            if name == "logit" and "coda" in lens_logits:
                continue  # the coda lens reads h_t the way the model does
            kl = lens_kl_table(lg).assign(metric=f"kl_prev_{name}")
            self.conv.add_table(kl, ["loop", "metric"], "value", 1.0)
        self.causal.update(tr, ids, batch, task, q, exit_lg)

        if "lora" in self.roles and not self.streaming_only:
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
        if self.spectral is None and self.adapter.loop_step is not None and not self.streaming_only:
            self.spectral = self._spectral(tr, ids)
        self._keep(tr, ids, batch, q)

    def _cka_inputs(self, tr: Trace) -> dict[str, torch.Tensor]:
        """Per CKA role, ``[loop, batch, pos, d]``: h_t, Δh_t (from h_0 when known), block out."""
        h = tr[self.roles["state"]]
        e = tr[self.roles["state_in"]] if "state_in" in self.roles else None
        out = {"state": h, "delta": loop_deltas(h, e)}
        if "block_out" in self.roles:
            out["block_out"] = tr[self.roles["block_out"]]
        return out

    def start(self, tr: Trace) -> None:
        """Size the CKA accumulators from `tr` and shift each by `tr`'s mean (exact for any
        constant): processes that start from the same trace add their sums up exactly."""
        for role, x in self._cka_inputs(tr).items():
            self.d = x.shape[-1]
            shift = x.reshape(x.shape[0], -1, self.d).mean(1)
            self.cka[role] = StreamingCKA(self.n_loops, self.d, "debiased", shift=shift)

    def _count_experts(self, experts: torch.Tensor) -> None:
        """Add ``experts [loop, batch, k]`` to the per-loop expert counts."""
        L = experts.shape[0]
        counts = torch.stack([torch.bincount(experts[t].reshape(-1), minlength=self.E)
                              for t in range(L)])  # fmt: skip
        self.expert_counts = counts if self.expert_counts is None else self.expert_counts + counts

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
        e = tr[self.roles["state_in"]][:m]
        h = tr[self.roles["state"]][:, :m]
        rows = []
        for t in range(self.n_loops):
            prev = e if t == 0 else h[t - 1]
            with torch.enable_grad():
                sr = spectral_radius(self.adapter.loop_step(self.model, e, t), prev,
                                     n_iter=self.spectral_iters, seed=self.seed)  # fmt: skip
            rows += [{"loop": t, "metric": k, "value": sr[k]}
                     for k in ("spectral_radius", "spectral_norm")]  # fmt: skip
        return pd.DataFrame(rows)

    def _keep(self, tr, ids, batch, q) -> None:
        room = self.probe_examples - self.kept
        if room <= 0:
            return
        take = min(room, ids.shape[0])
        for role in ("state", "block_in", "lora", "block_out"):  # kept by role
            if role in self.roles:
                self.buffer[role].append(tr[self.roles[role]][:, :take, q : q + 1].clone())
        if "experts" in self.roles:
            self.buffer["experts"].append(tr[self.roles["experts"]][:, :take].clone())
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
