"""Pointer-chasing generator: determinism, per-hop labels, splits, layout, bad input."""

import numpy as np
import pytest
import torch

from mythos_lens.errors import MythosLensError
from mythos_lens.tasks import PointerTask, get_task
from mythos_lens.tasks.base import sequence_split


def _follow_from_text(names: list[str]) -> tuple[int, int, list[int]]:
    """Independent ground truth: parse decoded tokens into a dict and follow it.

    Returns (hop count, start entity, entity after each hop).
    """
    pairs = names[:-2]
    table = {}
    for key, value in zip(pairs[0::2], pairs[1::2], strict=True):
        assert key.startswith("k") and value.startswith("v")
        assert key not in table, "each key appears exactly once"
        table[key] = value
    hop_name, start_name = names[-2], names[-1]
    assert hop_name.startswith("h") and start_name.startswith("k")
    hops, cur, chain = int(hop_name[1:]), start_name, []
    for _ in range(hops):
        cur = "k" + table[cur][1:]
        chain.append(int(cur[1:]))
    return hops, int(start_name[1:]), chain


def test_same_seed_same_data_and_different_seed_differs():
    task = get_task("pointer")
    a = task.generate(200, "train", seed=3)
    b = task.generate(200, "train", seed=3)
    c = task.generate(200, "train", seed=4)
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k]), k
    assert not torch.equal(a.input_ids, c.input_ids)
    # a Generator stream is deterministic too
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    s1 = [task.generate(16, "train", seed=g1).input_ids for _ in range(3)]
    s2 = [task.generate(16, "train", seed=g2).input_ids for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(s1, s2, strict=True))
    assert not torch.equal(s1[0], s1[1])


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_per_hop_labels_match_an_independent_parse(split):
    task = PointerTask(n_entities=8, train_hops=3)
    batch = task.generate(300, split, seed=1, hops=range(1, 7))
    assert batch.input_ids.shape == (300, 18)
    assert batch.hop_entities.shape == (300, 6)
    assert set(batch.hops.tolist()) == set(range(1, 7))
    for i in range(len(batch)):
        hops, start, chain = _follow_from_text(task.decode(batch.input_ids[i]))
        assert hops == int(batch.hops[i])
        assert start == int(batch.start[i])
        assert batch.hop_entities[i, :hops].tolist() == chain
        assert (batch.hop_entities[i, hops:] == -1).all()
        assert int(batch.answer_entity[i]) == chain[-1]
        assert task.describe_token(int(batch.answer[i])) == f"v{chain[-1]}"
        # the stored function is the one written in context
        f = batch.function[i].tolist()
        assert all(chain[j] == f[chain[j - 1] if j else start] for j in range(hops))


def test_values_are_drawn_with_replacement_and_keys_shuffled():
    batch = get_task("pointer").generate(500, "train", seed=0)
    distinct = torch.tensor([len(set(f.tolist())) for f in batch.function])
    assert (distinct < 8).float().mean() > 0.9  # a permutation would always have 8
    first_keys = batch.input_ids[:, 0]
    assert len(set(first_keys.tolist())) == 8  # the key order varies


def test_heldout_never_overlaps_train():
    task = get_task("pointer")
    train = task.generate(4000, "train", seed=0, hops=[1, 2, 3])
    held = task.generate(2000, "heldout", seed=0, hops=[1, 2, 3])
    train_rows = {tuple(r) for r in train.input_ids.tolist()}
    held_rows = {tuple(r) for r in held.input_ids.tolist()}
    assert not train_rows & held_rows
    assert task.in_heldout(held.input_ids).all()
    assert not task.in_heldout(train.input_ids).any()
    # the hash split is a property of the sequence: ~heldout_permille of raw draws are held out
    raw = task._draw(np.random.default_rng(5), 5000, np.array([1, 2, 3]))["input_ids"]
    share = sequence_split(raw, task.heldout_permille).mean()
    assert 0.17 < share < 0.23


def test_heldout_generator_rejects_train_inputs():
    """Force collisions: a tiny task (2 entities, 1 hop) has only 2^2 * 2 * 2 = 16 inputs."""
    task = PointerTask(n_entities=2, train_hops=1, max_hops=1, heldout_permille=500)
    all_train = {tuple(r) for r in task.generate(400, "train", seed=0).input_ids.tolist()}
    all_held = {tuple(r) for r in task.generate(400, "heldout", seed=0).input_ids.tolist()}
    assert len(all_train) + len(all_held) == 16  # every possible input was drawn ...
    assert not all_train & all_held  # ... and each landed in exactly one split


def test_layout_decodes_every_id():
    task = get_task("pointer")
    lay = task.layout
    assert task.vocab_size == 1 + 8 + 8 + 6
    assert task.describe_token(0) == "<pad>"
    assert task.describe_token(lay.key_id(3)) == "k3"
    assert task.describe_token(lay.value_id(5)) == "v5"
    assert task.describe_token(lay.hop_id(2)) == "h2"
    assert task.describe_token(99) == "<unused:99>"
    names = lay.to_dict()["names"]
    assert len(names) == len(set(names)) == task.vocab_size
    assert lay.value_ids() == list(range(9, 17))
    assert task.decode(torch.tensor([1, 9, 17])) == ["k0", "v0", "h1"]


def test_chance_per_hop():
    task = get_task("pointer")
    batch = task.generate(2000, "heldout", seed=0, hops=range(1, 7))
    chance = task.chance(batch)
    assert sorted(chance) == [1, 2, 3, 4, 5, 6]
    assert all(c["uniform"] == 0.125 for c in chance.values())
    ig = [chance[h]["ignore_start"] for h in range(1, 7)]
    assert 0.125 < ig[0] < ig[2] < ig[5] < 1.0  # iterates of a random function concentrate


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_task("nope"),
        lambda: get_task("pointer", colour=3),
        lambda: PointerTask(train_hops=0),
        lambda: PointerTask(n_entities=1),
        lambda: PointerTask(train_hops=3, max_hops=2),
        lambda: get_task("pointer").generate(10, "train", hops=0),
        lambda: get_task("pointer").generate(10, "train", hops=7),
        lambda: get_task("pointer").generate(10, "train", hops=[]),
        lambda: get_task("pointer").generate(0, "train"),
        lambda: get_task("pointer").generate(10, "test"),
        lambda: get_task("pointer").generate(10, "train", seed=-1),
    ],
)
def test_bad_input_raises_mythos_lens_error(call):
    with pytest.raises(MythosLensError, match="expected"):
        call()
