"""HRM-Text through its adapter (issue 13): every stack call captured with its (h, l) label,
equal to an independent capture with plain torch hooks; logits bit-identical; interventions;
more or fewer cycles; TransformerLens's bridge keeps one value per hook, we keep every cycle."""

from __future__ import annotations

import copy

import pytest
import torch
from hrm_models import hrm_model, saved_hrm
from transformers import HrmTextForCausalLM

from mythos_lens.capture import capture, run
from mythos_lens.errors import MythosLensError
from mythos_lens.hooked import HookedMythos
from mythos_lens.interventions import Patch, SkipStep


@pytest.fixture
def x():
    return torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))


def _plain_hooks(model):
    """Every L / H stack call's input, output and cycle_offset, with plain torch hooks."""
    calls = []
    handles = []
    for kind in ("L", "H"):
        stack = getattr(model.model, f"{kind}_module")

        def pre(mod, args, kwargs, kind=kind):
            calls.append({"kind": kind, "offset": kwargs["cycle_offset"], "in": args[0].clone()})

        def post(mod, args, kwargs, out):
            calls[-1]["out"] = out.clone()

        handles += [stack.register_forward_pre_hook(pre, with_kwargs=True),
                    stack.register_forward_hook(post, with_kwargs=True)]  # fmt: skip
    return calls, handles


def test_saved_and_loaded_with_transformers(tmp_path, x):
    d = saved_hrm(tmp_path / "hrm")
    assert (d / "model.safetensors").is_file()
    loaded = HrmTextForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x, use_cache=False).logits,
                           hrm_model(0)(input_ids=x, use_cache=False).logits)  # fmt: skip
    assert capture(loaded, x).n_loops == 2


def test_every_stack_call_with_its_label_equals_plain_hooks(x):
    model = hrm_model()
    calls, handles = _plain_hooks(model)
    with torch.no_grad():
        ref = model(input_ids=x, use_cache=False).logits
    for h in handles:
        h.remove()
    tr = capture(model, x)
    assert torch.equal(tr.logits, ref)  # capture changes nothing
    assert tr.steps["L"] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert tr.steps["H"] == [0, 1]
    L = [c for c in calls if c["kind"] == "L"]
    H = [c for c in calls if c["kind"] == "H"]
    assert [c["offset"] for c in calls] == [0, 2, 4, 6, 8, 10, 12, 14]
    for t, c in enumerate(L):
        assert torch.equal(tr["L_in"][t], c["in"]) and torch.equal(tr["L_out"][t], c["out"])
    for t, c in enumerate(H):
        assert torch.equal(tr["H_in"][t], c["in"]) and torch.equal(tr["H_out"][t], c["out"])
    assert tr["L_layer_out"].shape == (6, 2, 2, 10, 32)  # [L-step, layer, batch, pos, d]
    # the readout: lm_head of the last H state is the output, exactly
    assert torch.equal(model.lm_head(tr["H_out"][-1]), tr.logits)
    assert torch.equal(tr["z_H0"], tr["embed"] * model.model.embedding_scale)
    assert "lora_delta" not in tr and "router_logits" not in tr  # absent, not zero


def test_attention_patterns_per_call(x):
    model = hrm_model()
    tr = capture(model, x, sites=["L_attn", "H_attn"])
    pat = tr["L_attn"]  # [L-step, layer, batch, head, q, k]
    assert pat.shape == (6, 2, 2, 2, 10, 10)
    torch.testing.assert_close(pat.sum(-1), torch.ones(pat.shape[:-1]), atol=1e-5, rtol=0)
    assert torch.equal(torch.triu(pat, diagonal=1), torch.zeros_like(pat))
    assert model.config._attn_implementation == "sdpa"  # switched back after the call


def test_more_or_fewer_cycles(x):
    model = hrm_model()
    tr = capture(model, x, n_loops=3, step_options={"L_cycles": 1})
    assert tr.steps["H"] == [0, 1, 2] and tr.steps["L"] == [(0, 0), (1, 0), (2, 0)]
    assert (model.config.H_cycles, model.config.L_cycles) == (2, 3)  # restored
    with pytest.raises(MythosLensError, match="step options"):
        capture(model, x, step_options={"inner": 2})


def test_interventions_patch_and_skip(x):
    model = hrm_model()
    base = capture(model, x)
    same = capture(model, x, interventions=[Patch.from_trace(base, "L_out", 4)])
    assert torch.equal(same.logits, base.logits)  # own values: exactly nothing changes
    other = capture(model, x.flip(0))
    patched = capture(model, x, interventions=[Patch.from_trace(other, "H_out", 0)])
    assert torch.equal(patched["H_out"][0], other["H_out"][0])
    assert (patched.logits - base.logits).abs().max() > 1e-3
    skipped = capture(model, x, interventions=[SkipStep("L_out", 2)])
    assert torch.equal(skipped["L_out"][2], skipped["L_out"][1])  # the step left z_L as it was
    with pytest.raises(MythosLensError, match="hrm_text models do not have"):
        capture(model, x, interventions=[Patch("resid_post", 0, torch.zeros(2, 10, 32))])
    with pytest.raises(MythosLensError, match="targets loop 7"):
        capture(model, x, interventions=[Patch("L_out", 7, torch.zeros(2, 10, 32))])


def test_hooks_removed_after_an_exception(x):
    model = hrm_model()

    def boom(event, value):
        if event.site == "L_out" and event.loop == 3:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(model, x, visitors=[boom])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_transformerlens_bridge_keeps_one_value_per_hook_we_keep_every_cycle(x):
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    model = hrm_model()
    ours = capture(model, x)
    # the bridge replaces submodules in place: give it its own copy
    bridge = build_bridge_from_module(copy.deepcopy(model), "HrmTextForCausalLM",
                                      hf_config=model.config)  # fmt: skip
    with torch.no_grad():
        _, cache = bridge.run_with_cache(x)
    theirs = cache["L_ln_final.hook_out"]  # the L stack's output: one tensor per name
    assert theirs.shape == ours["L_out"][0].shape
    dist = [(theirs - ours["L_out"][t]).abs().max().item() for t in range(6)]
    assert min(range(6), key=dist.__getitem__) == 5 and dist[5] < 1e-4  # the last call only
    assert min(dist[:5]) > 1e-3
    assert ours["L_out"].shape[0] == 6  # every call, labelled (h, l)


def test_hooked_mythos_and_loop_cache(x):
    model = hrm_model()
    before = [n for n, _ in model.named_modules()]
    hooked = HookedMythos(model)
    assert [n for n, _ in model.named_modules()] == before  # the wrapped model is untouched
    logits, cache = hooked.run_with_cache(x)
    assert cache["L_out"].shape == (6, 2, 10, 32)
    assert torch.equal(cache["L_out", 5], cache["L_steps.5.hook_L_out"])
    assert torch.equal(cache["L_out"], capture(model, x)["L_out"])
    assert cache.steps("H_out") == 2
