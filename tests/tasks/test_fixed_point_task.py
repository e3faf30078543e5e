"""The fixed-point task (issue 12): depth implicit, per-hop ground truth, held-out split,
curriculum contexts and random-function contexts, ground truth for attention and patching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mythos_lens.curricula import targets
from mythos_lens.errors import MythosLensError
from mythos_lens.tasks import get_task, task_from_spec


@pytest.fixture
def task():
    return get_task("fixed-point")


def _follow(f, x, k):
    for _ in range(k):
        x = int(f[x])
    return x


def test_answers_are_fixed_points_depth_hops_away(task):
    b = task.generate(200, "heldout", 0, hops=[1, 2, 3, 4, 5, 6])
    assert b.input_ids.shape == (200, 57) and task.vocab_size == 57
    for i in range(200):
        f, s, d = b.function[i].numpy(), int(b.start[i]), int(b.hops[i])
        end = _follow(f, s, d)
        assert f[end] == end and _follow(f, s, d - 1) != end  # exactly d hops from its end
        assert int(b.answer_entity[i]) == end and int(b.answer[i]) == task.value_id(end)
        assert b.hop_entities[i, d - 1 :].eq(end).all()  # absorbing after the end
        assert int(b.input_ids[i, -1]) == task.key_id(s)
    assert set(b.hops.tolist()) == {1, 2, 3, 4, 5, 6}
    assert task.chance(b)[6] == {"uniform": 1 / 28, "ignore_start": 0.25}


def test_split_is_disjoint_and_deterministic(task):
    tr = task.generate(300, "train", 5)
    he = task.generate(300, "heldout", 5)
    assert not task.in_heldout(tr.input_ids).any() and task.in_heldout(he.input_ids).all()
    assert torch.equal(task.generate(300, "train", 5).input_ids, tr.input_ids)  # same seed


def test_short_contexts_use_every_id_and_functions_answer_f_to_the_h(task):
    b = task.generate(20, "train", 1, chain_len=3)
    assert b.input_ids.shape == (20, 2 * 12 + 1)
    keys = b.input_ids[:, 0:24:2] - 1
    assert all(sorted(r.tolist()) == list(range(12)) for r in keys)  # ids 0 .. C*Lb-1
    with pytest.raises(MythosLensError, match="depth"):
        task.generate(4, "train", 1, hops=[3], chain_len=3)  # a 3-long chain holds depth <= 2
    fn = task.generate(30, "train", 2, hops=[4], context="function")
    for i in range(30):
        want = _follow(fn.function[i].numpy(), int(fn.start[i]), 4)
        assert int(fn.answer_entity[i]) == want


def test_hop_targets_teach_the_hop_a_loop_count_reaches(task):
    b = task.generate(50, "train", 3, hops=[3])
    t1 = targets(task, b, 1, "hop")
    assert torch.equal(t1, torch.as_tensor(task.value_id(b.hop_entities[:, 0].numpy())))
    assert torch.equal(targets(task, b, 5, "hop"), b.answer)  # past the depth: the answer
    assert torch.equal(targets(task, b, 1, "answer"), b.answer)


def test_pair_truth_and_corruption(task):
    b = task.generate(40, "heldout", 7, hops=[2, 3])
    truth = task.pair_truth(b, 5)
    pos, exp = truth["pair_positions"], truth["expected_pair"]
    for i in range(40):
        d = int(b.hops[i])
        chain = [int(b.start[i])] + b.hop_entities[i].tolist()
        for t in range(5):
            if t < d:
                key_pos = int(pos[i, exp[t, i], 0])
                assert int(b.input_ids[i, key_pos]) == task.key_id(chain[t])
            else:
                assert exp[t, i] == -1
    c = task.corrupt(b, seed=0)
    assert (c.answer != b.answer).all() and torch.equal(c.hops, b.hops)
    assert torch.equal(c.input_ids[:, :-1], b.input_ids[:, :-1])
    assert task_from_spec(task.spec()).spec() == task.spec()


def test_lr_tail_schedule():
    from mythos_lens.train import TrainConfig, _lr_at

    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, tail=[[50, 1e-3, 1e-4], [10, 3e-4, 0.0]])
    assert _lr_at(cfg, 0) == pytest.approx(1e-4) and _lr_at(cfg, 50) == pytest.approx(1e-3)
    assert _lr_at(cfg, 100) == pytest.approx(1e-3) and _lr_at(cfg, 125) == pytest.approx(5.5e-4)
    assert _lr_at(cfg, 150) == pytest.approx(3e-4) and _lr_at(cfg, 159) == pytest.approx(3e-5)
    assert np.isclose(_lr_at(cfg, 10_000), 0.0)


def test_length_curriculum_trains_and_records_its_stages(tmp_path):
    from mythos_lens.train import TrainConfig, train

    cfg = TrainConfig(task="fixed-point", task_params={"n_chains": 2, "chain_len": 3,
                      "train_hops": 2}, curriculum="length", target="hop", function_share=0.5,
                      readout_rule="last", loops=3, max_loop_iters=3, eval_loops=2, steps=40,
                      tail=[[20, 1e-3, 1e-4]], eval_every=20, eval_examples=8, length_acc=0.0,
                      final_eval_examples=8, extrap_examples=4, extrap_loops=[1, 3],
                      dim=32, expert_dim=16, progress=False, out_dir=str(tmp_path / "ck"))  # fmt: skip
    m = train(cfg).metrics
    assert m["steps"] == 60
    assert m["chain_length_passed_at"] == {"2": 20}  # length_acc 0: the first check passes
    from mythos_lens.checkpoint import load_checkpoint
    from mythos_lens.readout_rule import readout_rule_of

    assert readout_rule_of(load_checkpoint(tmp_path / "ck")) == "last"
