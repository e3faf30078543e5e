"""Attention patterns per loop step (issue 11): recomputed from each attention module's inputs,
they are proper causal distributions and reproduce upstream's attention output exactly."""

from __future__ import annotations

import pytest
import torch
from tiny_models import MODEL_CASES, make_model

from mythos_lens.attention import attention_qkv
from mythos_lens.capture import capture


def _record_attention(module):
    """Plain torch hooks: every call's inputs and output, in order."""
    calls = []

    def hook(mod, args, out):
        calls.append((args[0].detach(), args[1], out.detach()))

    return calls, module.register_forward_hook(hook)


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_patterns_are_causal_distributions_that_reproduce_upstream(case, ids):
    model = make_model(case)
    attn = model.recurrent.block.attn
    calls, handle = _record_attention(attn)
    try:
        tr = capture(model, ids, n_loops=5, sites=["attn_pattern", "coda_attn", "prelude_attn"])
    finally:
        handle.remove()
    pat = tr["attn_pattern"]
    B, T = ids.shape
    assert pat.shape == (tr.n_loops, B, model.cfg.n_heads, T, T)
    assert len(calls) == tr.n_loops  # one attention call per loop step that ran
    torch.testing.assert_close(pat.sum(-1), torch.ones(pat.shape[:-1]), atol=1e-6, rtol=0)
    assert torch.equal(torch.triu(pat, diagonal=1), torch.zeros_like(pat))  # causal: exactly 0
    for t, (x, freqs, out) in enumerate(calls):
        _, _, v, _ = attention_qkv(attn, x, freqs)
        mixed = (pat[t] @ v).transpose(1, 2).reshape(B, T, -1)
        torch.testing.assert_close(attn.wo(mixed), out, atol=1e-5, rtol=1e-5)
    for group in ("prelude", "coda"):
        assert tr[f"{group}_attn"].shape == (len(getattr(model, group)), B, model.cfg.n_heads, T, T)


def test_attention_is_opt_in_and_changes_nothing(ids):
    model = make_model("gqa_all_loops")
    plain = capture(model, ids, n_loops=4)
    assert "attn_pattern" not in plain  # "all" leaves out the T^2 sites
    with_attn = capture(model, ids, n_loops=4, sites=["attn_pattern"])
    assert torch.equal(plain.logits, with_attn.logits)


def test_positions_select_query_rows(ids):
    model = make_model("mla_all_loops")
    full = capture(model, ids, n_loops=3, sites=["attn_pattern"])["attn_pattern"]
    part = capture(model, ids, n_loops=3, sites=["attn_pattern"], positions=[3, -1])
    assert torch.equal(part["attn_pattern"], full[:, :, :, [3, 9], :])
    frame = part.to_frame("attn_pattern")
    assert list(frame.columns) == ["loop", "batch", "head", "pos", "key", "value"]
    assert set(frame["pos"]) == {3, 9}


def test_hooked_mythos_caches_attention_per_loop(ids):
    from mythos_lens.hooked import HookedMythos

    model = make_model("gqa_all_loops")
    want = capture(model, ids, n_loops=3, sites=["attn_pattern", "coda_attn"])
    _, cache = HookedMythos(model, attention=True).run_with_cache(ids, n_loops=3)
    for t in range(3):
        assert torch.equal(cache[f"recurrent.loop.{t}.hook_attn_pattern"], want["attn_pattern"][t])
    assert torch.equal(cache["coda.0.hook_attn_pattern"], want["coda_attn"][0])
    _, plain = HookedMythos(model).run_with_cache(ids, n_loops=3)
    assert not any("attn" in k for k in plain)
