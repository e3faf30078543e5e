"""A tiny trained-format checkpoint (random weights) with a tiny pointer task, for fast tests."""

from pathlib import Path

import torch

from mythos_lens.checkpoint import save_checkpoint
from mythos_lens.model import build_model
from mythos_lens.tasks.registry import get_task
from mythos_lens.train import TrainConfig, disable_lora, model_config_for


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
