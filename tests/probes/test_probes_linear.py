"""Known-answer tests for linear probes per loop."""

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import make_model

from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from probes.linear import (
    control_labels,
    hop_matrix,
    loop_channels,
    probe,
    probe_loop_index,
    probe_per_loop,
    summarize,
)


def planted(n_seq=40, P=10, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_seq * P, d))
    w = rng.normal(size=d)
    y = (X @ w > 0).astype(int)
    groups = np.repeat(np.arange(n_seq), P)
    return X, y, groups


def metric(df, name):
    return df[df.metric == name].value.to_numpy()


def test_recovers_a_planted_linear_label_and_is_at_chance_when_shuffled(tmp_path):
    X, y, g = planted()
    types = np.arange(len(y)) % 7  # 7 token types, unrelated to the label
    df = probe(X, y, g, types=types, n_splits=5, seed=0)
    assert metric(df, "task_acc").mean() > 0.9
    assert metric(df, "selectivity").mean() > 0.25
    assert len(metric(df, "task_acc")) == 5 and (metric(df, "not_converged") == 0).all()
    y_shuf = np.random.default_rng(1).permutation(y)
    chance = probe(X, y_shuf, g, n_splits=5, seed=0)
    assert abs(metric(chance, "task_acc").mean() - 0.5) < 0.1
    df.to_parquet(tmp_path / "p.parquet")
    pd.testing.assert_frame_equal(df, pd.read_parquet(tmp_path / "p.parquet"))
    assert df.equals(probe(X, y, g, types=types, n_splits=5, seed=0))  # seeded


def test_majority_baseline_and_ignored_labels():
    X, _, g = planted()
    y = np.where(np.arange(len(X)) % 5 == 0, 1, 0)  # 80 % class 0
    df = probe(X, y, g, n_splits=4)
    assert metric(df, "majority_acc").mean() == pytest.approx(0.8, abs=0.03)
    y2 = y.copy()
    y2[: len(y) // 2] = -1  # left out
    df2 = probe(X, y2, g, n_splits=4)
    assert metric(df2, "n_test").sum() == (y2 >= 0).sum()


def test_folds_split_by_sequence():
    X, y, g = planted(n_seq=10, P=3)
    # a label that is the sequence id's parity plus a feature that memorises the sequence id:
    # split by sequence, the id feature cannot help on held-out sequences
    feats = np.eye(10)[g]
    y = np.random.default_rng(0).integers(0, 2, 10)[g]
    df = probe(feats, y, g, n_splits=5, seed=0)
    assert metric(df, "task_acc").mean() < 0.8


def test_control_labels_are_fixed_per_type():
    types = np.array([3, 1, 3, 2, 1, 3])
    labels = np.array([0, 1, 2, 0, 1, 2])
    c = control_labels(types, labels, seed=0)
    assert c[0] == c[2] == c[5] and c[1] == c[4]
    assert set(c) <= {0, 1, 2}
    assert (c == control_labels(types, labels, seed=0)).all()


def test_loop_index_decodable_from_loop_channels_only():
    rng = np.random.default_rng(0)
    L, B, P, d = 4, 12, 6, 32
    acts = rng.normal(size=(L, B, P, d))
    for t in range(L):  # the loop embedding lives in the first d // 8 channels
        acts[t, :, :, : d // 8] += 6 * np.sin(np.arange(d // 8) * (t + 1))
    acts = torch.tensor(acts)
    with_emb = probe_loop_index(acts, n_splits=3)
    without = probe_loop_index(acts, n_splits=3, drop_channels=loop_channels(d))
    assert metric(with_emb, "task_acc").mean() > 0.95
    assert abs(metric(without, "task_acc").mean() - 1 / L) < 0.1
    assert loop_channels(256) == slice(0, 32)


def test_per_loop_summary_and_hop_matrix(tmp_path):
    rng = np.random.default_rng(0)
    L, B, P, d = 3, 20, 5, 8
    acts = rng.normal(size=(L, B, P, d))
    hop1 = rng.integers(0, 3, size=(B, P))
    hop2 = rng.integers(0, 3, size=(B, P))
    # hop 1 is written at every loop, hop 2 only from loop 2 on
    for t in range(L):
        acts[t, :, :, 0] += 4 * hop1
        if t >= 2:
            acts[t, :, :, 1] += 4 * hop2
    ids = rng.integers(0, 10, size=(B, P))
    per = probe_per_loop(torch.tensor(acts), hop1, types=ids, label_name="h1", n_splits=4)
    s = summarize(per)
    acc = s[s.metric == "task_acc"].set_index("loop")["mean"]
    assert (acc > 0.9).all()
    assert set(s.columns) >= {"label", "loop", "metric", "mean", "std", "n_folds", "folds"}
    hm = hop_matrix(torch.tensor(acts), {1: hop1, 2: hop2}, types=ids, n_splits=4)
    m = hm[hm.metric == "task_acc"].pivot(index="loop", columns="hop", values="mean")
    assert (m[1] > 0.9).all() and m.loc[2, 2] > 0.9 and m.loc[0, 2] < 0.6
    for name, frame in [("s", s), ("h", hm), ("per", per)]:
        frame.to_parquet(tmp_path / f"{name}.parquet")
        pd.testing.assert_frame_equal(frame, pd.read_parquet(tmp_path / f"{name}.parquet"))


def test_non_convergence_is_counted():
    X, y, g = planted()
    df = probe(X * 1e3, y, g, n_splits=3, max_iter=1, C=1e6)
    assert metric(df, "not_converged").sum() >= 1


def test_bad_inputs():
    X, y, g = planted(n_seq=3)
    with pytest.raises(MythosLensError, match="sequences"):
        probe(X, y, g, n_splits=5)
    with pytest.raises(MythosLensError, match="one per token"):
        probe(X, y[:-1], g)
    with pytest.raises(MythosLensError, match="integer"):
        probe(X, y.astype(float), g)
    with pytest.raises(MythosLensError, match="drop_channels"):
        probe(X, y, g, n_splits=3, drop_channels=slice(0, None))
    with pytest.raises(MythosLensError, match="labels"):
        probe_per_loop(torch.zeros(2, 3, 4, 5), np.zeros((3, 5), dtype=int))
    with pytest.raises(MythosLensError, match="4 dims"):
        probe_loop_index(torch.zeros(3, 4, 5))


def test_on_a_real_capture():
    model = make_model("gqa_all_loops")
    ids = torch.randint(0, 64, (12, 6), generator=torch.Generator().manual_seed(0))
    tr = capture(model, ids, n_loops=3, sites=["resid_post", "block_in"])
    d = tr.meta["loop_dim"] * 8
    # label: the current input token's parity (present in e, hence in every h_t)
    df = probe_per_loop(tr.loop["resid_post"], ids % 2, types=ids, n_splits=3)
    assert set(df.loop) == {0, 1, 2}
    li = probe_loop_index(tr.loop["block_in"], n_splits=3)
    assert metric(li, "task_acc").mean() > 0.9  # the loop embedding makes this easy
    assert loop_channels(d) == slice(0, tr.meta["loop_dim"])


def test_loop_index_norm_controls_known_answers():
    from probes.linear import probe_loop_index, summarize

    g = torch.Generator().manual_seed(0)
    # loops told apart ONLY by size: direction carries nothing, the log-norm alone suffices
    base = torch.nn.functional.normalize(torch.randn(1, 40, 2, 8, generator=g), dim=-1)
    size_only = torch.cat([base * (t + 1) for t in range(3)])
    acc = lambda df: summarize(df).set_index("metric").loc["task_acc", "mean"]  # noqa: E731
    assert acc(probe_loop_index(size_only, features="log_norm", n_splits=4)) == 1.0
    assert acc(probe_loop_index(size_only, features="direction", n_splits=4)) < 0.6
    # loops told apart ONLY by direction at equal norm: the norm is no help
    dirs = torch.nn.functional.normalize(torch.randn(3, 1, 1, 8, generator=g), dim=-1) * 5
    noise = torch.randn(3, 40, 2, 8, generator=g) * 0.05
    direction_only = torch.nn.functional.normalize(dirs + noise, dim=-1) * 5
    assert acc(probe_loop_index(direction_only, features="direction", n_splits=4)) == 1.0
    assert acc(probe_loop_index(direction_only, features="log_norm", n_splits=4)) < 0.6
