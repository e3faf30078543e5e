"""The LoRA study's design, fixed in code before any model is trained or measured.

Question: does upstream's depth-wise LoRA (one shared ``down``/``B``, a per-loop scale vector)
make successive loop iterations differ?

- **Models**: LoRA-on and LoRA-off (scale zeroed and frozen) trained with one recipe
  (:data:`STUDY_RECIPE`) and the same seeds; both arms of a seed share initialisation and data.
- **Stopping criterion**: every trained depth ≥ ``threshold`` held-out accuracy at
  ``consecutive`` evaluations in a row, within ``step_cap`` steps. A seed whose on *or* off model
  misses it is replaced by the next spare seed; every replaced pair is reported.
- **Where**: the answer (last) position, over the loops that matter (a loop matters when cutting
  the run after it changes some answer: :func:`probes.effective_depth.loops_that_matter`).
- **Primary endpoint**: paired on − off of ``cka_dh`` (:data:`ENDPOINTS`), two-sided exact
  sign-flip test over seed pairs, α = 0.05; its interval by a paired hierarchical bootstrap
  over seeds × examples.
- **Secondary endpoints**: the rest of :data:`ENDPOINTS`, Holm-adjusted together.
- **Within-model nulls**: each LoRA intervention against ≥ 100 random row permutations and
  random rows of equal norm (exact Monte Carlo p per model).
- **Positive control**: the off models with LoRA rows planted — distinct rows per loop vs one
  row at every loop, same delta size (:mod:`mythos_lens.studies.control`): the representational
  endpoints must detect that difference, or their "not detected" means nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mythos_lens.errors import MythosLensError

# The study recipe: a 3-hop pointer task (6 entities, hop token), loops drawn per batch from
# 2 … 6 (evaluated and measured at 4), the coda reading the last state (readout "last": loops
# reach the output, unlike upstream's ACT sum, which training switched off after loop 1 in the
# shipped models) and a 1-hop curriculum. Pilots (seed 0, one thread beside another run): this
# recipe reached 1.00 / 1.00 / 1.00 on 1 / 2 / 3 hops at step 7,500 (486 s); three loops fixed
# (lr 2e-3 or 4e-3) stayed below 0.64 on 2 hops after 8,000 steps; ACT readout reached 0.95 on
# 3 hops at 8,000 steps.
STUDY_RECIPE: dict[str, Any] = dict(
    task="pointer", task_params={"n_entities": 6, "train_hops": 3, "max_hops": 6},
    loops=6, loops_min=2, eval_loops=4, readout_rule="last", lr=1e-3,
    eval_every=250, eval_examples=128, final_eval_examples=500,
    extrap_examples=64, extrap_loops=[1, 2, 3, 4, 6, 8], threads=1, progress=False,
)  # fmt: skip

# name: (what it measures, the sign on − off takes if LoRA differentiates loops)
ENDPOINTS: dict[str, tuple[str, str]] = {
    "cka_dh": ("mean over adjacent loops that matter of debiased CKA(Δh_t, Δh_t+1)", "-"),
    "cka_h": ("mean over adjacent loops that matter of debiased CKA(h_t, h_t+1)", "-"),
    "cka_block_out": ("mean over adjacent loops that matter of CKA(block_out_t, block_out_t+1)",
                      "-"),
    "router_overlap_excess": ("mean over adjacent loops that matter of router overlap@k − k/E",
                              "-"),
    "loop_id_direction_minus_norm": ("loop-identity probe on h_t/‖h_t‖ minus the probe on "
                                     "log‖h_t‖ alone (size-controlled loop identity)", "+"),
    "loop_id_block_in_no_emb": ("loop-identity probe on the block input without the "
                                "loop-embedding channels (where the embedding is added)", "+"),
    "rows_vs_permutations": ("answer loss, learned row per loop − mean under ≥ 100 random row "
                             "permutations (off: exactly 0)", "-"),
    "rows_vs_equal_norm": ("answer loss, learned rows − mean under random rows of equal norms",
                           "-"),
    "mean_swap_vs_equal_size": ("loss increase from every loop's row → the mean row, minus the "
                                "mean increase from moving each row as far in a random direction",
                                "+"),
}  # fmt: skip
PRIMARY = "cka_dh"
# The representational endpoints: the ones the positive control must be able to move.
REPRESENTATIONAL = ("cka_dh", "cka_h", "cka_block_out", "router_overlap_excess",
                    "loop_id_direction_minus_norm", "loop_id_block_in_no_emb")  # fmt: skip
V1_ENDPOINTS = tuple(ENDPOINTS)

# Design v2's functional endpoints (mythos_lens.studies.measures.loop_identity_effects): what the
# answer loses when each loop's identity is collapsed to the mean over the loops run, or permuted
# among them — the LoRA row alone, or the row and the loop-index embedding together.
ENDPOINTS.update({
    "kl_collapse_identity": ("mean KL at the answer, model ‖ every loop's LoRA row and loop "
                             "embedding at their means", "+"),
    "kl_collapse_lora": ("mean KL at the answer, model ‖ every loop's LoRA row at the mean row",
                         "+"),
    "kl_permute_identity": ("mean KL at the answer, model ‖ loop identities (row + embedding) "
                            "permuted among the loops (mean over random permutations)", "+"),
    "kl_permute_lora": ("mean KL at the answer, model ‖ LoRA rows permuted among the loops", "+"),
    "dacc_collapse_identity": ("Δ accuracy, loop identities collapsed to the mean", "-"),
    "dacc_collapse_lora": ("Δ accuracy, LoRA rows collapsed to the mean row", "-"),
    "dacc_permute_identity": ("Δ accuracy, loop identities permuted", "-"),
    "dacc_permute_lora": ("Δ accuracy, LoRA rows permuted", "-"),
})  # fmt: skip
FUNCTIONAL_ENDPOINTS = tuple(e for e in ENDPOINTS if e not in V1_ENDPOINTS)


@dataclass(frozen=True)
class LoraStudyDesign:
    """Every number the study fixes in advance (see the module docstring)."""

    name: str = "full"
    seeds: tuple[int, ...] = tuple(range(8))
    spare_seeds: tuple[int, ...] = tuple(range(100, 108))
    threshold: float = 0.99
    consecutive: int = 2
    step_cap: int = 10000
    recipe: dict[str, Any] = field(default_factory=lambda: dict(STUDY_RECIPE))
    # None: the endpoints are not fixed yet (design v2 before its sensitivity curves); such a
    # design may train its models but refuses to measure them
    primary: str | None = PRIMARY
    alpha: float = 0.05
    n_examples: int = 512  # held-out answers per model (measures)
    null_examples: int = 256  # of them, for the within-model nulls
    n_null: int = 100  # permutations / random rows per null
    probe_splits: int = 5
    n_bootstrap: int = 1000  # hierarchical bootstrap of the primary
    control_sizes: tuple[float, ...] = (1.0, 4.0)  # planted delta size / the on model's
    seed: int = 0  # of every random choice in the analysis (data, nulls, bootstrap, control)
    # design v2 (version 2): the endpoints tested, the positive control as doses of the on
    # models' own learned row differences (rows = mean + k·(learned − mean)), the materiality
    # threshold and the per-model classification (studies/measures.loop_identity_effects)
    version: int = 1
    endpoints: tuple[str, ...] = V1_ENDPOINTS
    control_doses: tuple[float, ...] = ()
    materiality_kl: float = 0.01  # a loop-identity intervention is material at KL >= this ...
    materiality_acc: float = -0.01  # ... or at an accuracy change <= this (one point)
    n_permutations: int = 8

    @property
    def secondary(self) -> tuple[str, ...]:
        return tuple(e for e in self.endpoints if e != self.primary) if self.primary else ()

    @property
    def seed_order(self) -> tuple[int, ...]:
        """Seeds in the order the stopping rule consumes them (design seeds, then spares): the
        pairs used are the first ``len(seeds)`` of this order whose both arms met the criterion."""
        return (*self.seeds, *self.spare_seeds)

    def require_endpoints(self) -> None:
        """Raise unless the design's endpoints are fixed (no model may be measured before)."""
        if self.primary is None:
            raise MythosLensError(
                f"design {self.name!r} has no endpoints fixed yet",
                "a design whose primary endpoint is set in studies/design.py before any of its "
                "models is measured",
            )

    def train_config(self, lora: bool, seed: int, out_dir: str | None = None) -> Any:
        """The :class:`~mythos_lens.train.TrainConfig` of one study model."""
        from mythos_lens.train import TrainConfig

        name = f"study-lora-{'on' if lora else 'off'}-s{seed}"
        return TrainConfig(name=name, lora=lora, seed=seed, out_dir=out_dir,
                           steps=self.step_cap, early_stop_acc=self.threshold,
                           early_stop_patience=self.consecutive, **self.recipe)  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraStudyDesign:
        """Inverse of :meth:`to_dict` (derived keys ignored)."""
        tuples = {"seeds", "spare_seeds", "control_sizes", "endpoints", "control_doses"}
        return cls(**{f.name: tuple(d[f.name]) if f.name in tuples else d[f.name]
                      for f in fields(cls) if f.name in d})  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "secondary": list(self.secondary),
                "endpoint_meanings": {k: {"meaning": ENDPOINTS[k][0],
                                          "differentiation_sign": ENDPOINTS[k][1]}
                                      for k in self.endpoints}}  # fmt: skip


# Design v2 — a declared amendment (2026-12-02), fixed before any of its models was trained.
# Why: v1's primary (CKA(Δh_t, Δh_t+1)) failed its own positive control when re-examined on the
# seven complete v1 pairs — planted per-loop rows moved it by less than its seed-to-seed spread
# at every dose, and scaling the on models' learned row differences moved it *against* its
# pre-registered sign — while its control planted rows through the off models' untrained
# down/B, ~1000× weaker in effect on the output than the learned LoRA. Those seven pairs are now
# looked at, so they are exploratory. v2 keeps v1's recipe and stopping rule unchanged and is
# decided on fresh seeds (200 onward; spares from 208). Its endpoints are chosen from sensitivity
# curves (dose in effect on the output, against seed-to-seed spread) measured on the exploratory
# pairs only, and fixed here before any v2 model is measured; until then `primary` is None.
DESIGN_V2 = LoraStudyDesign(
    name="v2", seeds=tuple(range(200, 208)), spare_seeds=tuple(range(208, 240)), primary=None
)

DESIGNS: dict[str, LoraStudyDesign] = {
    "full": LoraStudyDesign(),
    "v2": DESIGN_V2,
    # under 30 min on 2 cores with training: 2 seed pairs (one round of two processes per arm;
    # a sign-flip test over 2 pairs cannot reach p < 0.5, so it detects nothing: it runs the
    # whole pipeline and shows effect sizes)
    "quick": LoraStudyDesign(name="quick", seeds=(0, 1), spare_seeds=(100,), n_bootstrap=500),
}  # fmt: skip


def get_design(name: str) -> LoraStudyDesign:
    if name not in DESIGNS:
        raise MythosLensError(f"unknown study design {name!r}", f"one of {sorted(DESIGNS)}")
    return DESIGNS[name]
