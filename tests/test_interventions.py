"""Each intervention changes exactly what it should, and nothing before it."""

import pytest
import torch
from tiny_models import make_model

from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from mythos_lens.interventions import (
    AblateLora,
    EditSite,
    ForceExperts,
    FreezeRouter,
    Patch,
    SetLoraScale,
)

N = 6


@pytest.fixture(params=["gqa_all_loops", "mla_all_loops"])
def model(request):
    return make_model(request.param)


def test_ablate_lora_at_loop_t(model, ids):
    base = capture(model, ids, n_loops=N)
    for t in [0, 3, N - 1]:
        abl = capture(model, ids, n_loops=N, interventions=[AblateLora(loops=[t])])
        assert torch.equal(abl["resid_post"][:t], base["resid_post"][:t])
        assert torch.equal(abl["block_out"][t], base["block_out"][t])  # before LoRA: same
        assert bool((abl["lora_delta"][t] == 0).all())
        assert not torch.equal(abl["resid_post"][t], base["resid_post"][t])
        expect = base["resid_post"][t] - base["lora_delta"][t]
        assert torch.allclose(abl["resid_post"][t], expect, atol=1e-6)
        assert not torch.equal(abl.logits, base.logits)
    every = capture(model, ids, n_loops=N, interventions=[AblateLora()])
    assert bool((every["lora_delta"] == 0).all())


def test_set_lora_scale_to_mean(model, ids):
    base = capture(model, ids, n_loops=N)
    t = 2
    out = capture(model, ids, n_loops=N, interventions=[SetLoraScale(loops=[t])])
    lora = model.recurrent.lora
    with torch.no_grad():
        expect = (lora.down(base["block_out"][t]) * lora.scale.weight.mean(0)) @ lora.B
    assert torch.equal(out["lora_delta"][t], expect)
    assert torch.equal(out["resid_post"][:t], base["resid_post"][:t])
    # the loop's own row reproduces the unmodified run exactly
    same = capture(
        model, ids, n_loops=N, interventions=[SetLoraScale([t], lora.scale.weight[t].detach())]
    )
    assert torch.equal(same.logits, base.logits)


def test_patch_resid_from_other_input(model, ids):
    other = torch.roll(ids, 1, dims=0)
    src = capture(model, other, n_loops=N)
    base = capture(model, ids, n_loops=N)
    t = 2
    out = capture(model, ids, n_loops=N, interventions=[Patch.from_trace(src, "resid_post", t)])
    assert torch.equal(out["resid_post"][:t], base["resid_post"][:t])
    assert torch.equal(out["resid_post"][t], src["resid_post"][t])
    assert not torch.equal(out["resid_post"][t + 1], base["resid_post"][t + 1])
    # patching some positions only leaves the others at loop t alone
    part = capture(
        model, ids, n_loops=N, interventions=[Patch.from_trace(src, "resid_post", t, positions=[4])]
    )
    assert torch.equal(part["resid_post"][t][:, 4], src["resid_post"][t][:, 4])
    assert torch.equal(part["resid_post"][t][:, :4], base["resid_post"][t][:, :4])
    # causal attention: positions before the patch are untouched at every later loop too
    assert torch.equal(part["resid_post"][:, :, :4], base["resid_post"][:, :, :4])


def test_patch_with_own_value_is_identity(model, ids):
    base = capture(model, ids, n_loops=N)
    same = capture(model, ids, n_loops=N, interventions=[Patch.from_trace(base, "resid_post", 3)])
    assert torch.equal(same.logits, base.logits)


def test_force_experts_to_loop0_choice(model, ids):
    base = capture(model, ids, n_loops=N)
    t = 3
    forced_ids = base["expert_ids"][0]
    out = capture(model, ids, n_loops=N, interventions=[ForceExperts(t, forced_ids)])
    assert torch.equal(out["resid_post"][:t], base["resid_post"][:t])
    assert torch.equal(out["expert_ids"][t].sort(-1).values, forced_ids.sort(-1).values)
    # gate weights are the model's own unbiased softmax renormalised over the forced set
    logits = base["router_logits"][t]
    w = torch.softmax(logits, -1).gather(-1, out["expert_ids"][t])
    assert torch.allclose(out["expert_weights"][t], w / w.sum(-1, keepdim=True), atol=1e-6)
    # unforced loops before t keep their own choice
    assert torch.equal(out["expert_ids"][:t], base["expert_ids"][:t])


def test_freeze_router_equals_force_from_trace(model, ids):
    base = capture(model, ids, n_loops=N)
    frozen = capture(model, ids, n_loops=N, interventions=[FreezeRouter(0)])
    for t in range(N):
        assert torch.equal(
            frozen["expert_ids"][t].sort(-1).values, base["expert_ids"][0].sort(-1).values
        )
    forced = capture(
        model,
        ids,
        n_loops=N,
        interventions=[ForceExperts(t, base["expert_ids"][0]) for t in range(1, N)],
    )
    assert torch.equal(forced.logits, frozen.logits)


def test_force_experts_rejects_bad_ids(model, ids):
    bad = torch.zeros(ids.shape[0], ids.shape[1], 2, dtype=torch.long)  # repeated expert
    with pytest.raises(MythosLensError, match="repeat"):
        capture(model, ids, interventions=[ForceExperts(0, bad)])
    with pytest.raises(MythosLensError, match="forced experts per token"):
        capture(model, ids, interventions=[ForceExperts(0, bad[..., :1])])
    with pytest.raises(MythosLensError, match="outside"):
        capture(model, ids, interventions=[ForceExperts(0, bad + 99)])


def test_extra_loops_beyond_training(model, ids):
    n = 3 * model.cfg.max_loop_iters
    trace = capture(model, ids, n_loops=n)
    assert trace.n_loops == n
    assert trace["resid_post"].shape[0] == n


def test_derived_sites_are_read_only(model, ids):
    with pytest.raises(MythosLensError, match="cannot edit site 'expert_ids'"):
        capture(model, ids, interventions=[EditSite("expert_ids", lambda v, e: v + 1)])
    with pytest.raises(MythosLensError, match="cannot edit site 'act_weight'"):
        capture(model, ids, interventions=[Patch("act_weight", 0, torch.zeros(1))])
    with pytest.raises(MythosLensError, match="which openmythos models do not have"):
        capture(model, ids, interventions=[Patch("L_out", 0, torch.zeros(1))])
    with pytest.raises(MythosLensError, match="fires once per forward"):
        capture(model, ids, interventions=[EditSite("e", lambda v, e: v, loops=[1])])


def test_edit_site_shape_checked(model, ids):
    with pytest.raises(MythosLensError, match="shape"):
        capture(model, ids, interventions=[EditSite("block_out", lambda v, e: v[:, :1])])


def test_patch_e_changes_starting_state(model, ids):
    base = capture(model, ids, n_loops=2)
    zero = Patch("e", None, torch.zeros_like(base.stream["e"]))
    out = capture(model, ids, n_loops=2, interventions=[zero])
    assert bool((out.stream["e"] == 0).all())
    assert not torch.equal(out["resid_post"][0], base["resid_post"][0])
