"""Plants of known size (mythos_lens.dose) and the functional loop-identity endpoints."""

import pandas as pd
import pytest
import torch
from tiny_models import make_model

from mythos_lens.capture import capture, run
from mythos_lens.dose import (
    answer_logits,
    dose_response,
    edit_plant,
    loop_embedding_plant,
    loop_identity_plant,
    lora_rows_plant,
    planted,
    transplant_lora,
)
from mythos_lens.errors import MythosLensError
from mythos_lens.interventions import EditSite
from mythos_lens.model import loop_embedding
from mythos_lens.patching import lora_scale_sweep
from mythos_lens.studies.measures import loop_identity_effects
from mythos_lens.train import disable_lora
from probes.sensitivity import sensitivity_curve

N = 4


@pytest.fixture
def model():
    return make_model("gqa_all_loops")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 64, (6, 9), generator=g), torch.randint(0, 64, (6,), generator=g)


@pytest.mark.parametrize("family", [lora_rows_plant, loop_embedding_plant, loop_identity_plant])
def test_plants_dose_zero_is_the_base_and_dose_one_the_source(model, batch, family):
    ids, _ = batch
    base, plant = family(model, N)
    assert plant(base, 0.0) is base
    assert torch.equal(answer_logits(plant(base, 1.0), ids, N), answer_logits(model, ids, N))
    assert not torch.equal(answer_logits(base, ids, N), answer_logits(model, ids, N))


def test_lora_rows_base_has_one_row_and_doses_scale_the_differences(model):
    base, plant = lora_rows_plant(model, N)
    table = model.recurrent.lora.scale.weight.detach().double()
    rows = base.recurrent.lora.scale.weight.detach().double()
    assert torch.allclose(rows[:N], rows[:N].mean(0).expand(N, -1), atol=1e-6)
    half = plant(base, 0.5).recurrent.lora.scale.weight.detach().double()
    mean = table[:N].mean(0)
    assert torch.allclose(half, mean + 0.5 * (table - mean), atol=1e-6)


def test_loop_embedding_base_reads_the_mean_embedding(model, batch):
    ids, _ = batch
    base, _ = loop_embedding_plant(model, N)
    emb = loop_embedding(model.cfg.dim, N)
    # the same base from per-copy embeddings all equal to the mean, in a same-shaped forward
    rows = model.recurrent.lora.scale.weight.detach()[:N].unsqueeze(0)
    patched, _ = lora_scale_sweep(model, ids, rows, n_loops=N,
                                  embeddings=emb.mean(0).expand(1, N, -1))  # fmt: skip
    assert torch.allclose(patched[0].double(), answer_logits(base, ids, N), atol=1e-5)


def test_a_planted_edit_persists_and_equals_a_one_off_edit(model, batch):
    ids, _ = batch
    edit = EditSite("block_out", lambda v, e: v * 1.5, loops=[1])
    m = planted(model, [edit])
    once, _ = run(model, ids, n_loops=N, visitors=[edit], run_all_loops=True)
    assert torch.equal(answer_logits(m, ids, N), once[:, -1].double())
    tr = capture(m, ids, n_loops=N, run_all_loops=True, sites=["block_out"])
    plain = capture(model, ids, n_loops=N, run_all_loops=True, sites=["block_out"])
    assert torch.equal(tr["block_out"][1], plain["block_out"][1] * 1.5)  # capture sees the edit
    assert torch.equal(tr.logits, once)
    with pytest.raises(MythosLensError, match="already carries"):
        planted(m, [edit])
    # the original model is untouched
    assert torch.equal(
        answer_logits(model, ids, N),
        run(model, ids, n_loops=N, run_all_loops=True)[0][:, -1].double(),
    )


def test_dose_response_flat_for_an_invariant_metric_rising_for_one_that_is_not(batch):
    ids, answer = batch
    tables = []
    for seed in range(3):
        base, plant = lora_rows_plant(make_model("gqa_all_loops", seed=seed), N)

        def metrics(m):
            tr = capture(m, ids, n_loops=N, run_all_loops=True, sites=["e"])
            f = loop_identity_effects(m, ids, answer, N, n_permutations=3)
            # the prelude output never sees a LoRA row: exactly invariant to the plant
            return {"e_norm": float(tr["e"].double().norm()), "kl": f["kl_collapse_lora"]}

        t = dose_response(base, plant, [0.5, 1.0], metrics, ids, answer, n_loops=N)
        tables.append(t.assign(unit=seed))
    values = pd.concat(tables)
    d0 = values[(values.dose == 0) & (values.metric == "output_kl")]
    assert (d0.value == 0).all()
    curve = sensitivity_curve(values, {"e_norm": 0.1, "kl": 0.0}, {"e_norm": 1, "kl": 1})
    flat = curve[curve.metric == "e_norm"]
    assert (flat.mean_response == 0).all() and not flat.detects.any()
    rising = curve[curve.metric == "kl"].set_index("dose")
    assert (rising.mean_response > 0).all()
    assert rising.loc[1.0, "mean_response"] > rising.loc[0.5, "mean_response"]
    # with 3 units the exact sign-flip test cannot reach p <= 0.05: nothing is "detected"
    assert rising.p_value.min() == pytest.approx(2 / 8) and not rising.detects.any()


def test_functional_endpoints_are_exactly_zero_without_lora_or_without_differences(batch):
    ids, answer = batch
    off = make_model("gqa_all_loops")
    disable_lora(off)
    f = loop_identity_effects(off, ids, answer, N, n_permutations=3)
    assert all(f[k] == 0 for k in ("kl_collapse_lora", "kl_permute_lora", "dacc_collapse_lora"))
    assert f["p_collapse_lora"] == 1.0
    base, _ = lora_rows_plant(make_model("gqa_all_loops"), N)
    g = loop_identity_effects(base, ids, answer, N, n_permutations=3)
    assert g["kl_collapse_lora"] < 1e-9 and g["kl_permute_lora"] < 1e-9
    used = loop_identity_effects(make_model("gqa_all_loops"), ids, answer, N, n_permutations=3)
    assert used["kl_collapse_lora"] > 1e-6 and used["kl_permute_identity"] > 1e-6


def test_transplant_moves_the_trained_lora_and_nothing_else(model):
    from mythos_lens.model import build_model, tiny_config

    off = make_model("gqa_all_loops", seed=3)
    disable_lora(off)
    t = transplant_lora(off, model)
    for k, v in t.state_dict().items():
        src = model if k.startswith("recurrent.lora.") else off
        assert torch.equal(v, src.state_dict()[k]), k
    other = build_model(tiny_config(act_threshold=1e9, lora_rank=3), seed=0)
    with pytest.raises(MythosLensError, match="do not match"):
        transplant_lora(off, other)


def test_edit_plant_dose_zero_is_the_model(model, batch):
    plant = edit_plant(lambda d: [EditSite("block_out", lambda v, e: v * (1 + d))])
    assert plant(model, 0.0) is model
    ids, _ = batch
    assert not torch.equal(answer_logits(plant(model, 0.5), ids, N), answer_logits(model, ids, N))
