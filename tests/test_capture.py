"""Capture equals an independent capture with plain torch hooks, and changes nothing."""

import pytest
import torch
from tiny_models import make_model

from mythos_lens.adapters.openmythos import SITES
from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError

LOOP_SITES = SITES.names(stepped=True)
OPTIONAL_SITES = SITES.optional


def reference_capture(model, ids, n_loops):
    """Plain forward hooks, no mythos-lens code: one list per module, one entry per call."""
    rec = model.recurrent
    got = {k: [] for k in ["block_in", "block_out", "lora", "lora_t", "resid", "halt", "router"]}
    got.update(ffn_in=[], ffn_out=[], expert_rows={})
    handles = [
        rec.norm.register_forward_hook(lambda m, a, o: got["block_in"].append(o)),
        rec.block.register_forward_hook(lambda m, a, o: got["block_out"].append(o)),
        rec.lora.register_forward_hook(
            lambda m, a, o: [got["lora"].append(o), got["lora_t"].append(a[1])] and None
        ),
        rec.injection.register_forward_hook(lambda m, a, o: got["resid"].append(o)),
        rec.act.register_forward_hook(lambda m, a, o: got["halt"].append(o)),
        rec.block.ffn.router.register_forward_hook(lambda m, a, o: got["router"].append(o)),
        rec.block.ffn.register_forward_hook(
            lambda m, a, o: [got["ffn_in"].append(a[0]), got["ffn_out"].append(o)] and None
        ),
    ]

    def expert_hook(eid):
        def hook(m, a, o):
            loop = len(got["ffn_in"])  # ffn's own hook fires after the experts
            got["expert_rows"].setdefault(loop, []).append((eid, a[0].detach().clone()))

        return hook

    for eid, ex in enumerate(rec.block.ffn.routed_experts):
        handles.append(ex.register_forward_hook(expert_hook(eid)))
    try:
        with torch.no_grad():
            logits = model(ids, n_loops=n_loops)
    finally:
        for h in handles:
            h.remove()
    return logits, got


def experts_per_token(flat_in, rows):
    """Which experts received each token row, recovered by matching rows (no top-k maths)."""
    sets = [set() for _ in range(flat_in.shape[0])]
    for eid, x in rows:
        for r in x:
            match = (flat_in == r).all(-1).nonzero().flatten().tolist()
            assert len(match) == 1
            sets[match[0]].add(eid)
    return sets


def test_capture_matches_plain_hooks(model_case, ids):
    name, model = model_case
    n = 6
    trace = capture(model, ids, n_loops=n)
    logits, ref = reference_capture(model, ids, n)
    assert torch.equal(trace.logits, logits)
    assert trace.n_loops == len(ref["resid"])
    if "early_exit" in name:
        assert trace.n_loops < n, "fixture should exercise ACT early exit"
    else:
        assert trace.n_loops == n
    assert ref["lora_t"] == list(range(trace.n_loops))
    B, T = ids.shape
    for t in range(trace.n_loops):
        assert torch.equal(trace["block_in"][t], ref["block_in"][t])
        assert torch.equal(trace["block_out"][t], ref["block_out"][t])
        assert torch.equal(trace["lora_delta"][t], ref["lora"][t])
        assert torch.equal(trace["resid_post"][t], ref["resid"][t])
        assert torch.equal(trace["halt_prob"][t], ref["halt"][t])
        assert torch.equal(trace["router_logits"][t], ref["router"][t].view(B, T, -1))
        # expert choice: recovered from which expert modules saw which token
        flat_in = ref["ffn_in"][t].reshape(B * T, -1)
        sets = experts_per_token(flat_in, ref["expert_rows"][t])
        ids_t = trace["expert_ids"][t].reshape(B * T, -1)
        assert [set(r.tolist()) for r in ids_t] == sets
        # gate weights: rebuild the MoE output from the captured ids and weights
        ffn = model.recurrent.block.ffn
        w_t = trace["expert_weights"][t].reshape(B * T, -1)
        rebuilt = torch.zeros_like(flat_in)
        with torch.no_grad():
            for i in range(B * T):
                for j in range(ids_t.shape[1]):
                    rebuilt[i] += w_t[i, j] * ffn.routed_experts[int(ids_t[i, j])](flat_in[i])
            for sh in ffn.shared_experts:
                rebuilt += sh(flat_in)
        assert torch.allclose(rebuilt, ref["ffn_out"][t].reshape(B * T, -1), atol=1e-6)


def test_act_weights_rebuild_coda_input(model_case, ids):
    _, model = model_case
    trace = capture(model, ids, n_loops=5)
    h, w = trace["resid_post"], trace["act_weight"]
    out = torch.zeros_like(h[0])
    for t in range(trace.n_loops):
        out = out + w[t].unsqueeze(-1) * h[t]
    assert torch.equal(out, trace["act_out"])
    # cumulative halting: running sum of p over positions still running
    cum = trace["cum_halt_prob"]
    assert torch.equal(cum[0], trace["halt_prob"][0])
    thr = model.cfg.act_threshold
    if trace.n_loops < 5:
        assert bool((cum[-1] >= thr).all())
    # the coda receives act_out: the first coda layer's output is what the model computed from it
    assert torch.equal(trace.stream["e"], trace.layers["prelude"][-1])


def test_capture_leaves_output_bit_identical(model_case, ids):
    _, model = model_case
    with torch.no_grad():
        before = model(ids, n_loops=7)
    for kwargs in [{}, {"sites": ["resid_post"]}, {"positions": [0, -1]}, {"run_all_loops": True}]:
        trace = capture(model, ids, n_loops=7, **kwargs)
        if kwargs.get("run_all_loops"):
            assert trace.n_loops == 7
        assert torch.equal(trace.logits, before[:, trace.positions])
    with torch.no_grad():
        assert torch.equal(model(ids, n_loops=7), before)
    assert _no_hooks(model)


def test_run_all_loops_keeps_values(ids):
    model = make_model("gqa_early_exit")
    short = capture(model, ids, n_loops=8)
    full = capture(model, ids, n_loops=8, run_all_loops=True)
    assert short.n_loops < full.n_loops == 8
    n = short.n_loops
    assert torch.equal(short["resid_post"], full["resid_post"][:n])
    assert torch.equal(short.logits, full.logits)
    assert bool((full["act_weight"][n:] == 0).all())


def test_more_loops_than_trained_reuse_last_lora_row(ids):
    model = make_model("gqa_all_loops")
    max_it = model.cfg.max_loop_iters
    trace = capture(model, ids, n_loops=2 * max_it + 1)
    assert trace.n_loops == 2 * max_it + 1
    assert trace.meta["lora_row"][-1] == max_it - 1
    lora = model.recurrent.lora
    with torch.no_grad():
        for t in [max_it - 1, max_it, 2 * max_it]:
            expect = (lora.down(trace["block_out"][t]) * lora.scale.weight[max_it - 1]) @ lora.B
            assert torch.equal(trace["lora_delta"][t], expect)


def test_site_position_dtype_selection(ids):
    model = make_model("gqa_all_loops")
    full = capture(model, ids, n_loops=3)
    part = capture(
        model, ids, n_loops=3, sites=["resid_post", "expert_ids"], positions=[1, -1],
        store_dtype=torch.bfloat16,
    )  # fmt: skip
    assert set(part.loop) == {"resid_post", "expert_ids"}
    assert set(part.stream) == {"logits"}
    assert part.positions.tolist() == [1, ids.shape[1] - 1]
    assert part["resid_post"].shape == (3, ids.shape[0], 2, model.cfg.dim)
    assert part["resid_post"].dtype == torch.bfloat16
    assert part["expert_ids"].dtype == torch.int64
    assert torch.equal(part["resid_post"], full["resid_post"][:, :, [1, -1]].bfloat16())
    assert torch.equal(part["expert_ids"], full["expert_ids"][:, :, [1, -1]])
    with pytest.raises(MythosLensError, match="was not captured"):
        part["block_out"]


def test_every_loop_site_has_a_loop_axis(ids):
    model = make_model("mla_all_loops")
    trace = capture(model, ids, n_loops=4)
    assert set(trace.loop) == set(LOOP_SITES) - OPTIONAL_SITES  # attention: opt-in
    for site, x in trace.loop.items():
        assert x.shape[:3] == (4, ids.shape[0], ids.shape[1]), site


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_removed_after_exception(ids):
    model = make_model("gqa_all_loops")

    def boom(event, value):
        if event.site == "resid_post" and event.loop == 2:
            raise RuntimeError("user hook failed")

    with pytest.raises(RuntimeError, match="user hook failed"):
        capture(model, ids, interventions=[boom])
    assert _no_hooks(model)
    with pytest.raises(MythosLensError):
        capture(model, ids, sites=["nope"])
    assert _no_hooks(model)


def test_autocast_bf16_capture(ids):
    model = make_model("mla_all_loops")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            ref = model(ids, n_loops=3)
        trace = capture(model, ids, n_loops=3, store_dtype=torch.float32)
    assert ref.dtype == torch.bfloat16
    assert torch.equal(trace.logits, ref)
    assert trace["resid_post"].dtype == torch.float32


def test_trace_stacks_each_site_once_on_first_read(ids):
    model = make_model("gqa_all_loops")
    trace = capture(model, ids, n_loops=3)
    first = trace["resid_post"]
    assert first is trace.loop["resid_post"] is trace["resid_post"]  # stacked once, then kept
    assert first.shape == (3, *ids.shape, model.cfg.dim)
    assert dict(trace.loop).keys() == set(LOOP_SITES) - OPTIONAL_SITES
    trace.loop["resid_post"] = first * 0  # still a plain mapping for users who edit a trace
    assert bool((trace["resid_post"] == 0).all())
