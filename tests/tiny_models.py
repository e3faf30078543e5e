"""Tiny random OpenMythos models shared by the tests (import as `from tiny_models import ...`)."""

import torch

from mythos_lens.model import build_model, tiny_config

# (name, config overrides): GQA and MLA, with ACT early exit (random init halts early at 0.99)
# and with every loop running (threshold out of reach).
MODEL_CASES = {
    "gqa_early_exit": dict(attn_type="gqa"),
    "mla_early_exit": dict(attn_type="mla"),
    "gqa_all_loops": dict(attn_type="gqa", act_threshold=1e9),
    "mla_all_loops": dict(attn_type="mla", act_threshold=1e9),
}


def make_model(case: str, seed: int = 0):
    """A tiny random OpenMythos whose LoRA scales are non-zero (upstream inits them N(0, 0.02))."""
    model = build_model(tiny_config(**MODEL_CASES[case]), seed=seed)
    # Upstream's N(0, 0.02) scale makes LoRA deltas tiny; enlarge them so LoRA edits are visible.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        scale = model.recurrent.lora.scale.weight
        scale.copy_(torch.randn(scale.shape, generator=g))
        model.recurrent.lora.B.mul_(20)
    return model
