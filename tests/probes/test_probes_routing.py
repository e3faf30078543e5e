"""Known-answer tests for router analysis."""

from math import comb

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import make_model

from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from probes.routing import (
    coactivation,
    expert_load,
    expert_visits,
    load_from_counts,
    load_summary,
    overlap_matrix,
    random_overlap_baseline,
    router_overlap,
)


def random_ids(L, B, P, k, E, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(L * B * P)]).reshape(
        L, B, P, k
    )


def test_overlap_is_one_when_choices_repeat():
    ids = random_ids(1, 2, 5, 3, 8).repeat(4, 1, 1, 1)
    ids[2] = ids[2].flip(-1)  # order within the top-k does not matter
    df = router_overlap(ids, 8)
    assert len(df) == 6 * 2 * 5
    assert (df.jaccard == 1).all() and (df.overlap_at_k == 1).all()
    assert (df.random_overlap_at_k == 3 / 8).all()


def test_overlap_is_k_over_e_for_random_choices():
    k, E = 2, 8
    df = router_overlap(random_ids(4, 16, 64, k, E, seed=1), E)
    assert df.overlap_at_k.mean() == pytest.approx(k / E, abs=0.02)
    base = random_overlap_baseline(k, E)
    assert df.jaccard.mean() == pytest.approx(base["jaccard"], abs=0.02)
    # hypergeometric expectation by hand for k=2, E=8: P(1)=12/28, P(2)=1/28
    assert base["jaccard"] == pytest.approx(12 / 28 / 3 + 1 / 28)
    assert base["overlap_at_k"] == k / E
    assert comb(8, 2) == 28


def test_hand_computed_overlap_and_matrix():
    ids = torch.tensor([[0, 1], [1, 2], [3, 4]]).reshape(3, 1, 1, 2)
    df = router_overlap(ids, 5)
    got = {(r.loop_a, r.loop_b): (r.jaccard, r.overlap_at_k) for r in df.itertuples()}
    assert got == {(0, 1): (1 / 3, 0.5), (0, 2): (0.0, 0.0), (1, 2): (0.0, 0.0)}
    m = overlap_matrix(df)
    piv = m.pivot(index="loop_a", columns="loop_b", values="value").to_numpy()
    assert np.allclose(piv, [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]])


def test_load_entropy_dead_and_coactivation():
    # loop 0: every token picks {0, 1}; loop 1: tokens spread evenly over all 4 experts
    l0 = torch.tensor([0, 1]).repeat(4, 1)
    l1 = torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3]])
    ids = torch.stack([l0, l1]).reshape(2, 2, 2, 2)
    load = expert_load(ids, 4)
    assert load[load.loop == 0]["count"].tolist() == [4, 4, 0, 0]
    assert load[load.loop == 0]["dead"].tolist() == [False, False, True, True]
    assert np.allclose(load.groupby("loop")["fraction"].sum(), 1.0)
    s = load_summary(ids, 4).set_index(["loop", "metric"])["value"]
    assert s[(0, "load_entropy")] == pytest.approx(np.log(2))
    assert s[(1, "load_entropy")] == pytest.approx(np.log(4))
    assert s[(0, "dead_experts")] == 2 and s[(1, "dead_experts")] == 0
    co = coactivation(ids, 4).set_index(["loop", "expert_a", "expert_b"])["count"]
    assert co[(0, 0, 1)] == 4 and co[(0, 1, 0)] == 4 and co[(0, 0, 0)] == 4 and co[(0, 2, 3)] == 0
    assert co[(1, 0, 1)] == 1 and co[(1, 0, 3)] == 0 and co[(1, 2, 2)] == 2
    assert len(coactivation(ids, 4)) == 2 * 16


def test_visits_table_and_parquet(tmp_path):
    ids = random_ids(3, 2, 4, 2, 6, seed=3)
    w = torch.rand(3, 2, 4, 2, generator=torch.Generator().manual_seed(0))
    df = expert_visits(ids, 6, w, positions=torch.arange(10, 14))
    assert len(df) == ids.numel()
    row = df[(df.loop == 2) & (df.batch == 1) & (df.pos == 12) & (df.slot == 1)].iloc[0]
    assert row.expert == ids[2, 1, 2, 1] and row.weight == pytest.approx(float(w[2, 1, 2, 1]))
    for i, frame in enumerate(
        [
            df,
            router_overlap(ids, 6),
            expert_load(ids, 6),
            load_summary(ids, 6),
            coactivation(ids, 6),
        ]
    ):
        frame.to_parquet(tmp_path / f"{i}.parquet")
        pd.testing.assert_frame_equal(frame, pd.read_parquet(tmp_path / f"{i}.parquet"))


def test_bad_inputs():
    ids = random_ids(2, 1, 3, 2, 4)
    with pytest.raises(MythosLensError, match="k <= n_experts|1 <= k"):
        router_overlap(ids, 1)
    with pytest.raises(MythosLensError, match="ids in"):
        router_overlap(ids + 4, 4)
    with pytest.raises(MythosLensError, match="4 dims"):
        expert_load(ids[0], 4)
    with pytest.raises(MythosLensError, match="integer"):
        coactivation(ids.float(), 4)
    dup = ids.clone()
    dup[..., 1] = dup[..., 0]
    with pytest.raises(MythosLensError, match="twice"):
        router_overlap(dup, 4)
    with pytest.raises(MythosLensError, match="expert_weights"):
        expert_visits(ids, 4, torch.zeros(2, 1, 3))


def test_on_a_real_capture():
    model = make_model("gqa_all_loops")
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    tr = capture(model, ids, n_loops=4, sites=["expert_ids", "expert_weights"])
    E, k = tr.meta["n_experts"], tr.meta["top_k"]
    ov = router_overlap(tr.loop["expert_ids"], E)
    assert len(ov) == 6 * 2 * 6 and ov.overlap_at_k.between(0, 1).all()
    assert (ov.random_overlap_at_k == k / E).all()
    load = expert_load(tr.loop["expert_ids"], E)
    assert (load.groupby("loop")["count"].sum() == 2 * 6 * k).all()
    v = expert_visits(tr.loop["expert_ids"], E, tr.loop["expert_weights"])
    assert np.allclose(v.groupby(["loop", "batch", "pos"])["weight"].sum(), 1.0, atol=1e-5)


def test_load_from_summed_counts_equals_the_load_of_all_ids():
    g = torch.Generator().manual_seed(2)
    ids = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(3 * 4 * 5)]).view(
        3, 4, 5, 2
    )
    counts = [torch.stack([torch.bincount(p[t].reshape(-1), minlength=6) for t in range(3)])
              for p in (ids[:, :1], ids[:, 1:])]  # fmt: skip
    pd.testing.assert_frame_equal(load_from_counts(counts[0] + counts[1]), expert_load(ids, 6))
    with pytest.raises(MythosLensError, match="non-negative"):
        load_from_counts(-torch.ones(2, 3, dtype=torch.int64))
