"""Effective depth and exit rules (issue 11): known answers on constructed tensors, and the exit
lens equals a real run stopped by n_loops on every tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import MODEL_CASES, make_model

from mythos_lens.capture import capture, run
from mythos_lens.errors import MythosLensError
from mythos_lens.readouts import coda_lens, exit_states
from probes.effective_depth import (
    act_share_table,
    effective_depth,
    loops_that_matter,
    mark_loops,
    stop_effect_table,
)
from probes.exits import exit_rule_summary, exit_steps
from probes.lens import apply_lens

V = 5


def _onehot_logits(tokens: list[int], scale: float = 20.0) -> torch.Tensor:
    """``[loop, 1, 1, V]`` logits putting almost all mass on tokens[t] at loop t."""
    return torch.stack([torch.nn.functional.one_hot(torch.tensor(t), V).float() * scale
                        for t in tokens]).view(len(tokens), 1, 1, V)  # fmt: skip


@pytest.mark.parametrize("case", list(MODEL_CASES))
@pytest.mark.parametrize("run_all_loops", [False, True])
def test_exit_lens_is_a_real_run_stopped_by_n_loops(case, run_all_loops, ids):
    model = make_model(case)
    tr = capture(model, ids, n_loops=6, run_all_loops=run_all_loops)
    ex = apply_lens(exit_states(tr["act_weight"], tr["resid_post"]), coda_lens(model))
    for t in range(tr.n_loops):
        stopped, _ = run(model, ids, n_loops=t + 1, run_all_loops=run_all_loops)
        assert torch.equal(ex[t], stopped), t  # bit for bit
    assert torch.equal(ex[-1], tr.logits)


def test_act_share_known_answer():
    w = torch.tensor([0.1, 0.3, 0.0, 0.1]).view(4, 1, 1)
    t = act_share_table(w)
    np.testing.assert_allclose(t["share"], [0.2, 0.6, 0.0, 0.2])
    np.testing.assert_allclose(t["share_from_here"], [1.0, 0.8, 0.2, 0.2])
    np.testing.assert_allclose(t["weight_sum"], 0.5)
    assert np.isnan(act_share_table(torch.zeros(2, 1, 1))["share"]).all()


def test_effective_depth_known_answers():
    # token a: output changes until loop 2, then stays: depth 3; token b: settled at loop 0
    a = _onehot_logits([0, 1, 2, 2, 2])
    b = _onehot_logits([4, 4, 4, 4, 4])
    lg = torch.cat([a, b], 2)  # [5, 1, 2, V]
    d = effective_depth(lg, lg[-1])
    assert d.tolist() == [[3, 1]]
    # a change back at the end makes the last step matter
    c = _onehot_logits([3, 3, 3, 3, 1])
    assert effective_depth(c, c[-1]).tolist() == [[5]]
    m = loops_that_matter(d, 5, min_share=0.5)
    assert m["share_needing"].tolist() == [1.0, 0.5, 0.5, 0.0, 0.0]
    assert m["matters"].tolist() == [True, True, True, False, False]
    table = stop_effect_table(lg, lg[-1], target_ids=torch.tensor([[2, 4]]))
    assert table.query("batch == 0 and pos == 0")["same_top1"].tolist() == [0, 0, 1, 1, 1]
    assert table.query("pos == 1")["exit_correct"].all()
    with pytest.raises(MythosLensError, match="depths in"):
        loops_that_matter(torch.tensor([0, 2]), 3)


def test_mark_loops_single_and_pairs():
    matters = loops_that_matter(torch.tensor([2, 2, 1]), 3)  # loops 0, 1 matter; 2 does not
    single = mark_loops(pd_frame(loop=[-1, 0, 1, 2]), matters)
    assert single["loop_matters"].tolist() == [True, True, True, False]
    pairs = mark_loops(pd_frame(loop_a=[0, 1], loop_b=[1, 2]), matters)
    assert pairs["loop_matters"].tolist() == [True, False]


def pd_frame(**cols):
    import pandas as pd

    return pd.DataFrame(cols)


def test_exit_rules_known_answers():
    # readouts: token a settles on 2 at loop 2; token b is 4 throughout
    lg = torch.cat([_onehot_logits([0, 1, 2, 2, 2]), _onehot_logits([4] * 5)], 2)
    # states: a shrinking step for token a (steps 1, .5, .25, ...), constant for b
    base = torch.tensor([1.0, 0.0, 0.0])
    a = torch.stack([base * (1 + sum(0.5**i for i in range(t + 1))) for t in range(5)])
    b = torch.stack([base * 3.0] * 5)
    h = torch.stack([a, b], 1).unsqueeze(1)  # [5, 1, 2, 3]
    h0 = torch.stack([base, base * 3.0]).unsqueeze(0)
    cum = torch.tensor([[0.2, 0.995], [0.5, 1], [0.999, 1], [1, 1], [1, 1]]).view(5, 1, 2)
    ex = exit_steps(lg, lg[-1], h, h0=h0, cum_halt_prob=cum, act_threshold=0.99,
                    target_ids=torch.tensor([[2, 4]]), rel_step_threshold=0.1,
                    accel_threshold=0.1, stable_steps=2)  # fmt: skip
    a_row, b_row = ex.iloc[0], ex.iloc[1]
    assert (a_row.settled, b_row.settled) == (2, 0)
    assert (a_row.act_step, b_row.act_step) == (2, 0)
    assert (a_row.kl_step, b_row.kl_step) == (3, 1)  # KL(p_{t-1} ‖ p_t) = 0 first at t = 3 / 1
    assert (a_row.stable_argmax_step, b_row.stable_argmax_step) == (3, 1)
    assert (a_row.first_correct, b_row.first_correct) == (2, 0)
    # relative steps of a: 1/1 = 1, .5/2 = .25, .25/2.5 = .1, .125/2.75 = .045: first < .1 at 3
    assert a_row.rel_step_step == 3 and b_row.rel_step_step == 0  # b never moves
    assert a_row.kl_correct and ex["act_correct"].iloc[0] is not False
    summary = exit_rule_summary(ex)
    assert set(summary["rule"]) >= {"act", "kl", "entropy", "rel_step", "accel", "stable_argmax"}
    act = summary.set_index("rule").loc["act"]
    assert act.fired == 1.0 and act.mean_loops == pytest.approx((3 + 1) / 2)


def test_exit_rules_on_a_model(ids):
    model = make_model("gqa_early_exit")
    tr = capture(model, ids, n_loops=4, run_all_loops=True)
    ex_lg = apply_lens(exit_states(tr["act_weight"], tr["resid_post"]), coda_lens(model))
    table = exit_steps(ex_lg, tr.logits, tr["resid_post"], h0=tr["e"],
                       cum_halt_prob=tr["cum_halt_prob"], act_threshold=0.99)  # fmt: skip
    assert len(table) == ids.numel()
    assert ((table["settled"] >= 0) & (table["settled"] < 4)).all()
