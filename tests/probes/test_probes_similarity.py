"""Known-answer tests for linear CKA (biased, debiased, minibatch, streaming)."""

import numpy as np
import pandas as pd
import pytest
import torch

from mythos_lens.errors import MythosLensError
from probes.similarity import (
    StreamingCKA,
    cka_matrix,
    cka_table,
    linear_cka,
    loop_deltas,
    loop_similarity_tables,
)


def ref_hsic(K, L, debiased):
    """The n×n Gram formulas, straight from the papers (no feature-space algebra)."""
    n = K.shape[0]
    if not debiased:
        H = torch.eye(n, dtype=K.dtype) - 1.0 / n
        return torch.trace(K @ H @ L @ H) / (n - 1) ** 2
    K, L = K.clone(), L.clone()
    K.fill_diagonal_(0)
    L.fill_diagonal_(0)
    one = torch.ones(n, dtype=K.dtype)
    return (
        torch.trace(K @ L)
        + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ K @ L @ one)
    ) / (n * (n - 3))


def ref_cka(X, Y, debiased):
    K, L = X @ X.T, Y @ Y.T
    return float(
        ref_hsic(K, L, debiased) / torch.sqrt(ref_hsic(K, K, debiased) * ref_hsic(L, L, debiased))
    )


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kind", ["biased", "debiased"])
def test_matches_gram_formula(kind):
    X = rand(40, 7, seed=1) + 3.0  # offsets: the estimators must not depend on the mean
    Y = X[:, :5] @ rand(5, 9, seed=2) + 0.5 * rand(40, 9, seed=3) - 1.0
    got = linear_cka(X, Y, kind)
    assert got == pytest.approx(ref_cka(X, Y, kind == "debiased"), rel=1e-10, abs=1e-12)


def test_identical_inputs_give_one():
    X = rand(50, 6, seed=4)
    for kind in ["biased", "debiased"]:
        assert linear_cka(X, X, kind) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["biased", "debiased"])
def test_invariant_to_orthogonal_and_isotropic_scaling(kind):
    X = rand(60, 8, seed=5)
    Y = torch.tanh(X @ rand(8, 8, seed=6)) + 0.3 * rand(60, 8, seed=7)
    Q, _ = torch.linalg.qr(rand(8, 8, seed=8))
    base = linear_cka(X, Y, kind)
    assert linear_cka(X @ Q, Y, kind) == pytest.approx(base, rel=1e-10)
    assert linear_cka(X * 7.5, Y * 0.01, kind) == pytest.approx(base, rel=1e-10)


def test_debiased_near_zero_for_independent_features_where_biased_is_not():
    # n small relative to d: biased CKA is inflated, debiased is centred at 0.
    X, Y = rand(64, 256, seed=9), rand(64, 256, seed=10)
    biased, debiased = linear_cka(X, Y, "biased"), linear_cka(X, Y, "debiased")
    assert biased > 0.7
    assert abs(debiased) < 0.05


def test_streaming_equals_batch_and_memory_is_fixed():
    x = rand(4, 3, 50, 6, seed=11) + rand(1, 1, 1, 6, seed=12) * 10
    for kind in ["biased", "debiased"]:
        full = cka_matrix(x, kind, batch_size=10_000)
        acc = StreamingCKA(4, 6, kind)
        flat = x.reshape(4, -1, 6)
        for s in range(0, 150, 17):
            acc.update(flat[:, s : s + 17])
        assert torch.allclose(acc.matrix(), full, atol=1e-10)
        sizes = sum(t.numel() for t in [acc._G, acc._S, acc._A, acc._AA, acc._ZA])
        assert sizes == (4 * 6) ** 2 + 4 * 6 + 4 + 16 + 4 * 6 * 4  # no token-sized state
        # every pair against the Gram reference
        for t in range(4):
            for u in range(4):
                want = ref_cka(flat[t], flat[u], kind == "debiased")
                assert full[t, u].item() == pytest.approx(want, rel=1e-8, abs=1e-8)


def test_minibatch_matches_nguyen_formula():
    x = rand(3, 40, 5, seed=13)
    x[1] = x[0] @ rand(5, 5, seed=14)
    got = cka_matrix(x, "minibatch", batch_size=10)
    for t in range(3):
        for u in range(3):
            hs = [
                [ref_hsic(a[b : b + 10] @ a[b : b + 10].T, c[b : b + 10] @ c[b : b + 10].T, True)
                 for b in range(0, 40, 10)]
                for a, c in [(x[t], x[u]), (x[t], x[t]), (x[u], x[u])]
            ]  # fmt: skip
            want = sum(hs[0]) / torch.sqrt(sum(hs[1]) * sum(hs[2]))
            assert got[t, u].item() == pytest.approx(float(want), rel=1e-9)
    seeded = cka_matrix(x, "minibatch", batch_size=10, seed=0)
    assert torch.equal(seeded, cka_matrix(x, "minibatch", batch_size=10, seed=0))


def test_table_roundtrips_parquet(tmp_path):
    h = rand(3, 2, 8, 4, seed=15)
    e = rand(2, 8, 4, seed=16)
    df = loop_similarity_tables({"resid_post": h, "delta_h": loop_deltas(h, e), "block_out": h})
    assert set(df.columns) == {"loop_a", "loop_b", "site", "metric", "value"}
    assert len(df) == 3 * 9
    df.to_parquet(tmp_path / "c.parquet")
    back = pd.read_parquet(tmp_path / "c.parquet")
    pd.testing.assert_frame_equal(df, back)
    diag = df[df.loop_a == df.loop_b]["value"].to_numpy()
    assert np.allclose(diag, 1.0)
    t = cka_table(h, "biased", site="h")
    assert (t.metric == "cka_biased").all()
    assert torch.equal(loop_deltas(h, e)[0], h[0] - e)
    assert loop_deltas(h).shape[0] == 2


def test_constant_loop_gives_nan_not_number():
    x = rand(2, 20, 3, seed=17)
    x[1] = 1.0
    m = cka_matrix(x, "debiased")
    assert torch.isnan(m[0, 1]) and torch.isnan(m[1, 1]) and m[0, 0] == pytest.approx(1.0)


def test_bad_inputs():
    with pytest.raises(MythosLensError, match="loop"):
        cka_matrix(torch.zeros(3, 4))
    with pytest.raises(MythosLensError, match="rows"):
        linear_cka(torch.zeros(5, 2), torch.zeros(6, 2))
    with pytest.raises(MythosLensError, match="kind"):
        StreamingCKA(2, 3, "nope")
    acc = StreamingCKA(2, 3)
    with pytest.raises(MythosLensError, match="width"):
        acc.update(torch.zeros(2, 10, 4))
    with pytest.raises(MythosLensError, match="NaN"):
        acc.update(torch.full((2, 10, 3), float("nan")))
    with pytest.raises(MythosLensError, match="tokens"):
        cka_matrix(rand(2, 3, 4), "debiased")


def test_streaming_cka_sums_of_disjoint_tokens_add_up_to_one_over_all(tmp_path):
    """What processes all-reduce: two accumulators sharing a shift, merged (or their saved
    states summed), give the CKA of every token; a different shift is refused."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 5, generator=g, dtype=torch.float64) + 2.0
    whole = StreamingCKA(3, 5, "debiased").update(x)
    shift = x[:, :7].mean(1)
    a = StreamingCKA(3, 5, "debiased", shift=shift).update(x[:, :17])
    b = StreamingCKA(3, 5, "debiased", shift=shift).update(x[:, 17:])
    torch.testing.assert_close(a.merge(b).matrix(), whole.matrix(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.matrix(), cka_matrix(x, "debiased"), rtol=1e-12, atol=1e-12)
    again = StreamingCKA(3, 5, "debiased").load_state_dict(a.state_dict())
    assert torch.equal(again.matrix(), a.matrix())
    with pytest.raises(MythosLensError, match="different shifts"):
        a.merge(StreamingCKA(3, 5, "debiased").update(x[:, :4]))
    with pytest.raises(MythosLensError, match="shift of shape"):
        StreamingCKA(3, 5, "debiased", shift=torch.zeros(5))
