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
        "lens": "logit (head(norm(h_t))) or coda (head(norm(coda(h_t))))",
        "loop": "loop step t",
        "metric": "target_rank, final_rank, control_rank (0 = top-1), target_top1, kl_final_lens "
        "(KL(final || lens), nats), entropy (nats) — means at the query position",
        "value": "mean over examples",
        "n": "examples",
    },
    "cka": {
        "checkpoint": "checkpoint name",
        "site": "resid_post (h_t), delta_h (h_t - h_{t-1}, h_{-1} = e) or block_out",
        "loop_a": "loop step",
        "loop_b": "loop step",
        "metric": "cka_debiased (unbiased-HSIC linear CKA over every token, exact, streamed)",
        "value": "CKA",
        "n_tokens": "tokens (sequences x positions)",
    },
    "router": {
        "checkpoint": "checkpoint name",
        "loop_a": "loop step",
        "loop_b": "loop step",
        "metric": "overlap_at_k (|S_a & S_b| / k) or jaccard, routed experts only",
        "value": "mean over tokens (every position)",
        "random_baseline": "same metric for two independent uniform k-subsets (k/E for overlap)",
        "n_tokens": "tokens",
    },
    "load": {
        "checkpoint": "checkpoint name",
        "loop": "loop step",
        "metric": "load_entropy, max_entropy, normalised_entropy, dead_experts, max_over_mean_load",
        "value": "over every position of the probe buffer",
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
        "metric": "rel_step ||h_t - h_{t-1}|| / ||h_{t-1}||, cos_prev_step, kl_prev_coda "
        "(KL(p_{t-1} || p_t), coda lens), spectral_radius / spectral_norm of the loop map's "
        "Jacobian at h_{t-1}, rho_A",
        "value": "mean over examples at the query position (spectral: over a few sequences)",
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
    },
    "lora": {
        "checkpoint": "checkpoint name",
        "loop": "loop step",
        "metric": "scale_norm (||lora.scale[row]||), norm_ratio (||delta|| / ||block_out|| at the "
        "query position), mean_token_ratio",
        "value": "value",
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
    },
}
