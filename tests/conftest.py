import pytest
import torch

from mythos_lens.model import build_model, tiny_config

torch.set_num_threads(2)

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
        model.recurrent.lora.scale.weight.copy_(
            torch.randn(model.recurrent.lora.scale.weight.shape, generator=g)
        )
        model.recurrent.lora.B.mul_(20)
    return model


@pytest.fixture(params=list(MODEL_CASES))
def model_case(request):
    return request.param, make_model(request.param)


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, 64, (3, 10), generator=g)
