"""Every table `mythos-lens analyze` writes, with its columns (README and reports cite these)."""

from __future__ import annotations

# Every table written, with its columns (the README's Results section and the report cite these).
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "accuracy": {
        "checkpoint": "checkpoint name (directory name)",
        "hops": "hop count of the examples",
        "n": "examples",
        "accuracy": "argmax over the whole vocabulary at the query position == answer",
        "chance_uniform": "1 / n_entities",
        "chance_ignore_start": "best guess knowing f but not the start (task.chance)",
    },
    "depth": {
        "checkpoint": "checkpoint name",
        "hops": "hop count",
        "n_loops": "loop count at test time",
        "n": "examples in the cell",
        "accuracy": "held-out accuracy in the cell",
    },
    "lens": {
        "checkpoint": "checkpoint name",
        "lens": "exit (the output of a run stopped after loop t), logit (head(norm(h_t))) or "
        "coda (head(norm(coda(h_t))))",
        "loop": "loop step t",
        "metric": "target_rank, final_rank, control_rank (0 = top-1), target_top1, kl_final_lens "
        "(KL(final || lens), nats), entropy (nats) — means at the query position",
        "value": "mean over examples",
        "n": "examples",
        "loop_matters": "some token needs this loop (pairs: both loops): see effective_depth",
    },
    "cka": {
        "checkpoint": "checkpoint name",
        "site": "resid_post (h_t), delta_h (h_t - h_{t-1}, h_{-1} = e) or block_out",
        "loop_a": "loop step",
        "loop_b": "loop step",
        "metric": "cka_debiased (unbiased-HSIC linear CKA over every token, exact, streamed)",
        "value": "CKA",
        "n_tokens": "tokens (sequences x positions)",
        "loop_matters": "some token needs this loop (pairs: both loops): see effective_depth",
    },
    "router": {
        "checkpoint": "checkpoint name",
        "loop_a": "loop step",
        "loop_b": "loop step",
        "metric": "overlap_at_k (|S_a & S_b| / k) or jaccard, routed experts only",
        "value": "mean over tokens (every position)",
        "random_baseline": "same metric for two independent uniform k-subsets (k/E for overlap)",
        "n_tokens": "tokens",
        "loop_matters": "some token needs this loop (pairs: both loops): see effective_depth",
    },
    "load": {
        "checkpoint": "checkpoint name",
        "loop": "loop step",
        "metric": "load_entropy, max_entropy, normalised_entropy, dead_experts, max_over_mean_load",
        "value": "over every position of the probe buffer",
        "loop_matters": "some token needs this loop (pairs: both loops): see effective_depth",
    },
    "expert_load": {
        "checkpoint": "checkpoint name",
        "loop": "loop step",
        "expert": "routed expert",
        "count": "routing slots (tokens) given to it, every position of the probe buffer",
        "fraction": "share of the loop's routing slots",
        "dead": "never chosen at this loop",
    },
    "convergence": {
        "checkpoint": "checkpoint name",
        "loop": "loop step (-1: a model-wide quantity such as rho_A)",
        "metric": "rel_step ||h_t - h_{t-1}|| / ||h_{t-1}||, cos_prev_step, kl_prev_coda / kl_prev_exit "
        "(KL(p_{t-1} || p_t), coda lens / exit lens), spectral_radius / spectral_norm of the loop map's "
        "Jacobian at h_{t-1}, rho_A",
        "value": "mean over examples at the query position (spectral: over a few sequences)",
        "loop_matters": "some token needs this loop (pairs: both loops): see effective_depth",
    },
    "probes": {
        "checkpoint": "checkpoint name",
        "probe": "loop_index (which loop is this state from?) or hop_<j> (entity after hop j)",
        "site": "resid_post or block_in (block_in = norm(h + loop embedding + e))",
        "channels": "all, or no_loop_emb (first d/8 channels, the loop-index sinusoid, dropped)",
        "loop": "loop step (-1: pooled over loops, for loop_index)",
        "hop": "j of hop_<j> (-1 for loop_index)",
        "metric": "task_acc, control_acc (Hewitt-Liang control task, type = input token), "
        "majority_acc, selectivity = task - control, not_converged (count, all folds), "
        "type_only_acc (hop probes: the same probe on a one-hot of the input token alone — what "
        "memorising the start key gives; the control task instead measures probe capacity: the "
        "start key is linearly decodable, so control_acc is near 1 and selectivity < 0)",
        "mean": "mean over folds (not_converged: total)",
        "std": "std over folds (ddof 1)",
        "n_folds": "sequence-grouped CV folds",
        "n_examples": "sequences in the probe buffer",
        "loop_matters": "some token needs this loop (pairs: both loops): see effective_depth",
    },
    "lora": {
        "checkpoint": "checkpoint name",
        "loop": "loop step",
        "metric": "scale_norm (||lora.scale[row]||), norm_ratio (||delta|| / ||block_out|| at the "
        "query position), mean_token_ratio",
        "value": "value",
        "loop_matters": "some token needs this loop (pairs: both loops): see effective_depth",
    },
    "lora_cosine": {
        "checkpoint": "checkpoint name",
        "loop_a": "LoRA scale row",
        "loop_b": "LoRA scale row",
        "metric": "cosine",
        "value": "cosine of the scale vectors (NaN where a vector is zero: LoRA off)",
        "note": "why a value is NaN",
    },
    "ablation": {
        "checkpoint": "checkpoint name",
        "intervention": "ablate_lora (delta zeroed at ablated_loop), ablate_lora_all (every "
        "loop), mean_scale_all (each loop's LoRA scale replaced by the mean row)",
        "ablated_loop": "loop step (-1 for interventions at every loop)",
        "metric": "kl (KL(base || intervened), nats), top1_changed, acc_baseline, acc_ablated, "
        "delta_acc (intervened - base) at the query position",
        "value": "mean over examples",
        "n": "examples",
        "loop_matters": "some token needs this loop (pairs: both loops): see effective_depth",
    },
    "effective_depth": {
        "checkpoint": "checkpoint name",
        "loop": "loop step t",
        "act_weight": "mean ACT weight w_t at the query position",
        "act_share": "mean share w_t / sum_s w_s (NaN-skipping)",
        "share_from_here": "mean share of loops t, t+1, ... in the sum the coda reads",
        "weight_sum": "mean sum_s w_s (below 1 when nothing halts, e.g. act_threshold 1e9)",
        "kl_full_exit": "mean KL(full output || output of a run stopped after loop t), nats",
        "same_top1": "share of examples whose stopped run has the full run's argmax",
        "exit_accuracy": "accuracy of a run stopped after loop t (task inputs)",
        "full_accuracy": "accuracy of the full run (task inputs)",
        "share_needing": "share of examples whose effective depth exceeds t (they need loop t)",
        "matters": "share_needing >= 0.01: the loop changes some output",
        "n": "examples",
    },
    "exit_rules": {
        "checkpoint": "checkpoint name",
        "rule": "act, kl (KL(p_{t-1}||p_t) < 5e-4), entropy (< 0.1 nats), rel_step (< 1e-2), "
        "accel (second-order step < 1e-2 twice), stable_argmax (2 steps), on the exit lens",
        "fired": "share of examples where the rule exits within the loops run",
        "mean_loops": "mean loops run under the rule (all loops when it never fires)",
        "before_settled": "share of examples where it exits before the output settled",
        "accuracy": "accuracy of the output at the rule's exit (task inputs)",
        "n": "examples",
    },
    "attention_reads": {
        "checkpoint": "checkpoint name",
        "loop": "loop step t",
        "head": "attention head of the shared block (-1: mean over heads)",
        "n": "examples with a pair to read at loop t (t < hop count)",
        "top_is_expected": "share where the most-attended pair is the one holding hop t+1",
        "expected_mass": "mean attention on that pair's key and value tokens (query position)",
        "top_mass": "mean attention on the most-attended pair",
        "chance_mass": "a pair's mass under uniform attention over the visible keys",
        "loop_matters": "some token needs this loop: see effective_depth",
    },
    "patching": {
        "checkpoint": "checkpoint name",
        "site": "resid_post (h_t)",
        "direction": "denoise: the corrupted start key's run with one clean cell restored",
        "loop": "loop step whose state is patched",
        "pos": "sequence position patched",
        "restored": "mean share of the clean-vs-corrupted logit difference restored (1 = all)",
        "flipped": "share of examples whose answer flips to the clean one",
        "logit_diff": "mean logit(clean answer) - logit(corrupted answer) after the patch",
        "delta_kl": "mean change of KL(clean || patched) (< 0: toward the clean run)",
        "n": "examples",
        "loop_matters": "some token needs this loop: see effective_depth",
    },
    "lora_cross": {
        "checkpoint": "checkpoint name",
        "loop": "loop step t computed with another LoRA scale row",
        "row": "the scale row t' used instead of t's own (row = own row: exactly 0)",
        "kl": "mean KL(unpatched || patched) at the query position, nats",
        "top1_changed": "share of examples whose argmax changes",
        "acc_baseline": "accuracy unpatched",
        "acc_ablated": "accuracy with loop t on row t'",
        "delta_acc": "acc_ablated - acc_baseline",
        "n": "examples",
    },
}
