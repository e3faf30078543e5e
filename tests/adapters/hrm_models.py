"""Tiny HRM-Text models built with transformers' own config and model classes (no hub)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import HrmTextConfig, HrmTextForCausalLM


def hrm_config(**overrides) -> HrmTextConfig:
    # initializer_range 0.2: at 0.02 a random model's steps barely move the logits (3e-6)
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, head_dim=16, H_cycles=2, L_cycles=3,
                max_position_embeddings=64, prefix_lm=False, initializer_range=0.2)  # fmt: skip
    base.update(overrides)
    return HrmTextConfig(**base)


def hrm_model(seed: int = 0, **overrides) -> HrmTextForCausalLM:
    """A random tiny HRM-Text, reproducible from `seed`, in eval mode."""
    torch.manual_seed(seed)
    return HrmTextForCausalLM(hrm_config(**overrides)).eval()


def saved_hrm(directory: Path, seed: int = 0) -> Path:
    """A tiny HRM-Text saved with ``save_pretrained`` (safetensors) into `directory`."""
    hrm_model(seed).save_pretrained(directory, safe_serialization=True)
    return directory


def word_tokenizer(directory: Path, vocab_size: int = 64) -> Path:
    """A ``tokenizer.json`` (tokenizers' WordLevel) with words ``w0 … w{vocab-1}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"
