"""Tiny random OpenMythos models shared by the tests (import as `from tiny_models import ...`)."""

from pathlib import Path

import torch

from mythos_lens.checkpoint import save_checkpoint
from mythos_lens.model import build_model, tiny_config
from mythos_lens.tasks.registry import get_task
from mythos_lens.train import TrainConfig, disable_lora, model_config_for

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


def tiny_checkpoint(directory: Path, *, lora: bool = True, seed: int = 0) -> Path:
    """Write a random tiny OpenMythos for a 4-entity, 2-hop pointer task; LoRA scales enlarged
    (upstream's N(0, 0.02) makes them tiny) or zeroed (``lora=False``)."""
    task = get_task("pointer", n_entities=4, train_hops=2, max_hops=3)
    cfg = TrainConfig(dim=32, n_experts=4, expert_dim=16, lora_rank=2, loops=3, lora=lora)
    model = build_model(model_config_for(cfg, task), seed=seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        scale = model.recurrent.lora.scale.weight
        scale.copy_(torch.randn(scale.shape, generator=g))
    if not lora:
        disable_lora(model)
    meta = {"train_config": {"lora": lora, "seed": seed}, "task": task.spec()}
    save_checkpoint(model, directory, metadata=meta)
    return directory
