"""TransformerLens idioms on the loop axis, and nnsight interop giving the same tensors."""

import pytest
import torch
from nnsight import NNsight
from tiny_models import make_model

from mythos_lens.adapters.openmythos import SITES
from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from mythos_lens.hooked import HookedMythos
from mythos_lens.interventions import AblateLora, Patch

LOOP_SITES = SITES.names(stepped=True)
OPTIONAL_SITES = SITES.optional

N = 5


@pytest.fixture(params=["gqa_early_exit", "mla_all_loops"])
def model(request):
    return make_model(request.param)


def test_run_with_cache_keeps_every_loop(model, ids):
    trace = capture(model, ids, n_loops=N)
    hooked = HookedMythos(model)
    logits, cache = hooked.run_with_cache(ids, n_loops=N)
    assert torch.equal(logits, trace.logits)
    for t in range(trace.n_loops):
        for site in LOOP_SITES:
            if site in OPTIONAL_SITES:  # attention patterns: opt-in (HookedMythos(attention=True))
                continue
            assert torch.equal(cache[f"recurrent.loop.{t}.hook_{site}"], trace[site][t]), site
    assert f"recurrent.loop.{trace.n_loops}.hook_resid_post" not in cache  # never ran
    assert torch.equal(cache["coda.0.hook_resid_post"], trace.layers["coda"][0])
    assert torch.equal(cache["prelude.0.hook_resid_post"], trace.layers["prelude"][0])
    assert torch.equal(cache["hook_act_out"], trace.stream["act_out"])


def test_names_filter(model, ids):
    hooked = HookedMythos(model)
    _, cache = hooked.run_with_cache(
        ids, n_loops=N, names_filter=lambda name: name.endswith("hook_halt_prob")
    )
    assert cache and all(k.endswith("hook_halt_prob") for k in cache)
    _, cache = hooked.run_with_cache(
        ids, n_loops=N, names_filter="recurrent.loop.1.hook_resid_post"
    )
    assert list(cache) == ["recurrent.loop.1.hook_resid_post"]


def test_run_with_hooks_edit_equals_intervention(model, ids):
    hooked = HookedMythos(model)

    def zero(value, hook):
        return torch.zeros_like(value)

    logits = hooked.run_with_hooks(
        ids, n_loops=N, fwd_hooks=[("recurrent.loop.1.hook_lora_delta", zero)]
    )
    ref = capture(model, ids, n_loops=N, interventions=[AblateLora([1])])
    assert torch.equal(logits, ref.logits)
    assert not hooked.hook_dict["recurrent.loop.1.hook_lora_delta"].fwd_hooks  # reset after


def test_hooked_errors(model, ids):
    hooked = HookedMythos(model, max_loops=3)
    with pytest.raises(MythosLensError, match="hook points"):
        hooked(ids, n_loops=4)

    def bump(value, hook):
        return value + 1

    with pytest.raises(MythosLensError, match="read-only site"):
        hooked.run_with_hooks(
            ids, n_loops=2, fwd_hooks=[("recurrent.loop.0.hook_expert_ids", bump)]
        )


def test_upstream_modules_untouched_by_wrapper(ids):
    model = make_model("gqa_all_loops")
    HookedMythos(model)
    assert not hasattr(model.recurrent.block, "name")


@pytest.mark.parametrize("case", ["gqa_early_exit", "mla_all_loops"])
def test_nnsight_iter_matches_capture(case, ids):
    model = make_model(case)
    trace = capture(model, ids, n_loops=N)
    n = trace.n_loops
    wrapped = NNsight(make_model(case))  # NNsight patches its model in place: use a twin
    resid, lora, halt, router = [], [], [], []
    with wrapped.trace(ids, n_loops=N) as tracer:
        for _ in tracer.iter[:n]:
            router.append(wrapped.recurrent.block.ffn.router.output.save())
            lora.append(wrapped.recurrent.lora.output.save())
            resid.append(wrapped.recurrent.injection.output.save())
            halt.append(wrapped.recurrent.act.output.save())
        out = wrapped.output.save()
    assert torch.equal(out, trace.logits)
    B, T = ids.shape
    for t in range(n):
        assert torch.equal(resid[t], trace["resid_post"][t])
        assert torch.equal(lora[t], trace["lora_delta"][t])
        assert torch.equal(halt[t], trace["halt_prob"][t])
        assert torch.equal(router[t].view(B, T, -1), trace["router_logits"][t])


def test_nnsight_edits_match_interventions(ids):
    model = make_model("gqa_all_loops")
    src = capture(model, torch.roll(ids, 1, 0), n_loops=N)
    wrapped = NNsight(make_model("gqa_all_loops"))
    with wrapped.trace(ids, n_loops=N) as tracer:
        for _ in tracer.iter[1:2]:
            wrapped.recurrent.lora.output = torch.zeros_like(wrapped.recurrent.lora.output)
        for _ in tracer.iter[3:4]:
            wrapped.recurrent.injection.output = src["resid_post"][3]
        out = wrapped.output.save()
    ours = capture(
        model,
        ids,
        n_loops=N,
        interventions=[AblateLora([1]), Patch.from_trace(src, "resid_post", 3)],
    )
    assert torch.equal(out, ours.logits)


def test_loop_cache_behaves_like_an_activation_cache_with_a_loop_axis(model, ids):
    trace = capture(model, ids, n_loops=N)
    _, cache = HookedMythos(model).run_with_cache(ids, n_loops=N)
    assert torch.equal(cache["resid_post"], trace["resid_post"])  # [loop, batch, pos, d]
    assert torch.equal(cache["resid_post", 1], trace["resid_post"][1])
    assert torch.equal(cache["resid_post", -1], trace["resid_post"][-1])
    assert torch.equal(cache.stack_activation("halt_prob"), trace["halt_prob"])
    assert cache.steps("resid_post") == trace.n_loops
    assert torch.equal(cache["recurrent.loop.0.hook_resid_post"], trace["resid_post"][0])
    with pytest.raises(MythosLensError, match="step 99"):
        cache["resid_post", 99]
