"""probes.stats: known answers for the sign-flip test, Holm, bootstraps, nulls, random controls,
the stopping criterion and the endpoint table."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mythos_lens.errors import MythosLensError
from probes.stats import (
    ENDPOINT_COLUMNS,
    bootstrap_ci,
    endpoint_table,
    equal_norm_random_rows,
    hierarchical_bootstrap,
    holm,
    paired_hierarchical_bootstrap,
    paired_sign_flip_test,
    permutation_null,
    random_permutations,
    stopping_criterion,
)

torch.set_num_threads(1)


def _brute_sign_flip(d: np.ndarray, alternative: str) -> float:
    """Enumerate all 2^n sign flips by hand (ties within 1e-12)."""
    obs = d.mean()
    null = np.array([(d * s).mean() for s in itertools.product([1, -1], repeat=len(d))])
    ge, le = np.mean(null >= obs - 1e-12), np.mean(null <= obs + 1e-12)
    return {"greater": ge, "less": le, "two-sided": min(1.0, 2 * min(ge, le))}[alternative]


# ---------------------------------------------------------------- sign flip


def test_sign_flip_known_answers():
    r = paired_sign_flip_test(np.ones(8))
    assert r["p_value"] == pytest.approx(2 / 256) and r["exact"] and r["n"] == 8
    assert r["min_p"] == pytest.approx(2 / 256) and r["statistic"] == 1.0
    assert paired_sign_flip_test([0.3, 0.1, 0.2])["p_value"] == pytest.approx(0.25)
    assert paired_sign_flip_test(np.ones(8), "greater")["p_value"] == pytest.approx(1 / 256)
    assert paired_sign_flip_test(np.ones(8), "greater")["min_p"] == pytest.approx(1 / 256)
    assert paired_sign_flip_test(np.ones(8), "less")["p_value"] == pytest.approx(1.0)
    assert paired_sign_flip_test(-np.ones(8), "less")["p_value"] == pytest.approx(1 / 256)
    assert paired_sign_flip_test(np.zeros(6))["p_value"] == 1.0
    assert paired_sign_flip_test([1.0, -1.0, 2.0, -2.0])["p_value"] == pytest.approx(1.0)
    # [1, 2, 3, -0.5]: only the all-positive flip and the observed one reach mean >= 1.375
    assert paired_sign_flip_test([1, 2, 3, -0.5], "greater")["p_value"] == pytest.approx(2 / 16)
    r2 = paired_sign_flip_test([5.0, 1.0])  # n = 2: the most extreme outcome gives p = 2/4
    assert r2["p_value"] == pytest.approx(0.5) and r2["min_p"] == pytest.approx(0.5)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_matches_brute_enumeration(alternative):
    rng = np.random.default_rng(3)
    for n in (2, 5, 9):
        d = rng.normal(0.3, 1.0, n)
        got = paired_sign_flip_test(d, alternative)["p_value"]
        assert got == pytest.approx(_brute_sign_flip(d, alternative)), (n, d)


def test_sign_flip_monte_carlo_is_seeded():
    d = np.random.default_rng(0).normal(0.2, 1.0, 20)
    a, b = paired_sign_flip_test(d, seed=1), paired_sign_flip_test(d, seed=1)
    assert not a["exact"] and a == b and a["min_p"] == pytest.approx(2 / 10000)
    assert paired_sign_flip_test(d, seed=2)["p_value"] != a["p_value"]
    assert paired_sign_flip_test(np.ones(20))["p_value"] == pytest.approx(2 / 10000)
    # asking for >= 2^n resamples is exact again
    assert paired_sign_flip_test(np.ones(4), n_resamples=16)["exact"]
    assert not paired_sign_flip_test(np.ones(4), n_resamples=10)["exact"]


@pytest.mark.parametrize(
    "kw", [{"diffs": [1.0]}, {"diffs": [1.0, np.nan]}, {"diffs": np.ones((2, 2))},
           {"diffs": [1.0], "alternative": "bigger"}, {"diffs": [1.0], "n_resamples": 0}],
)  # fmt: skip
def test_sign_flip_bad_input(kw):
    with pytest.raises(MythosLensError):
        paired_sign_flip_test(**kw)


# ---------------------------------------------------------------- Holm


def test_holm_known_answer_and_shapes():
    want = [0.03, 0.06, 0.06, 0.02]
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), want)
    got = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert list(got) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(list(got.values()), want)
    assert isinstance(holm(np.array([0.01, 0.5])), np.ndarray)
    s = holm(pd.Series([0.01, 0.04], index=["x", "y"]))
    assert list(s.index) == ["x", "y"] and s["x"] == pytest.approx(0.02)
    np.testing.assert_allclose(holm([0.02, 0.015]), [0.03, 0.03])  # 0.02*1 raised to 0.015*2
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # clipped at 1
    assert holm([0.04]) == [0.04] and holm([]) == []
    with pytest.raises(MythosLensError):
        holm([0.1, 1.5])


# ---------------------------------------------------------------- bootstraps


def test_bootstrap_ci_collapses_covers_and_is_seeded():
    c = bootstrap_ci(np.full(8, 0.25))
    assert c == {"estimate": 0.25, "low": 0.25, "high": 0.25, "n": 8}
    x = np.random.default_rng(0).normal(3.0, 1.0, 1000)
    for method in ("BCa", "percentile"):
        r = bootstrap_ci(x, n_resamples=2000, method=method)
        assert r["low"] < 3.0 < r["high"] and r["high"] - r["low"] < 0.2, r
        assert r["estimate"] == pytest.approx(x.mean())
    a, b = bootstrap_ci(x[:10], seed=4), bootstrap_ci(x[:10], seed=4)
    assert a == b and bootstrap_ci(x[:10], seed=5)["low"] != a["low"]
    for bad in ({"values": [1.0]}, {"values": x, "level": 1.0}, {"values": x, "method": "bca"}):
        with pytest.raises(MythosLensError):
            bootstrap_ci(**bad)


def test_hierarchical_bootstrap_known_answers():
    c = hierarchical_bootstrap([np.full(5, 2.5), np.full(3, 2.5), np.full(9, 2.5)])
    assert (c["estimate"], c["low"], c["high"], c["n"]) == (2.5, 2.5, 2.5, 3)
    # two seeds, constant within: seed means resample to {0, 0.5, 1} w.p. 1/4, 1/2, 1/4
    r = hierarchical_bootstrap({7: np.zeros(5), 3: np.ones(4)}, n_resamples=2000)
    assert (r["estimate"], r["low"], r["high"]) == (0.5, 0.0, 1.0)
    # mean over seeds of per-seed means, not the pooled mean (which would be 1/3 here)
    assert hierarchical_bootstrap([np.zeros(4), np.ones(2)])["estimate"] == 0.5
    assert hierarchical_bootstrap([np.array([0.0, 4.0])], np.median)["estimate"] == 2.0


def test_hierarchical_bootstrap_coverage_and_seed():
    x = np.random.default_rng(1).normal(3.0, 1.0, 1000)
    per_seed = {s: x[100 * s : 100 * (s + 1)] for s in range(10)}
    r = hierarchical_bootstrap(per_seed, n_resamples=500)
    assert r["low"] < 3.0 < r["high"] and r["n"] == 10
    assert r == hierarchical_bootstrap(per_seed, n_resamples=500)
    assert r["low"] != hierarchical_bootstrap(per_seed, n_resamples=500, seed=1)["low"]
    # dict order does not matter (seeds are read in sorted order)
    rev = dict(reversed(list(per_seed.items())))
    assert hierarchical_bootstrap(rev, n_resamples=500) == r


def test_paired_hierarchical_bootstrap_resamples_seeds_jointly():
    # on = off + 1 within every seed, seeds far apart: only joint seed resampling gives exactly 1
    on = {0: np.full(3, 1.0), 1: np.full(2, 11.0), 2: np.full(4, 5.0)}
    off = {0: np.zeros(2), 1: np.full(3, 10.0), 2: np.full(1, 4.0)}
    r = paired_hierarchical_bootstrap(on, off, n_resamples=300)
    np.testing.assert_allclose([r["estimate"], r["low"], r["high"]], 1.0, rtol=1e-12)
    assert r["n"] == 3
    rng = np.random.default_rng(2)
    on = {s: rng.normal(0.5, 1.0, 200) for s in range(8)}
    off = {s: rng.normal(0.0, 1.0, 200) for s in range(8)}
    a = paired_hierarchical_bootstrap(on, off, n_resamples=500, seed=3)
    assert a["low"] < 0.5 < a["high"] and a["low"] > 0
    assert a == paired_hierarchical_bootstrap(on, off, n_resamples=500, seed=3)
    assert a["high"] != paired_hierarchical_bootstrap(on, off, n_resamples=500, seed=4)["high"]
    with pytest.raises(MythosLensError):
        paired_hierarchical_bootstrap(on, {0: np.zeros(3)})
    with pytest.raises(MythosLensError):
        hierarchical_bootstrap({0: np.zeros(0)})


# ---------------------------------------------------------------- nulls and random controls


def test_permutation_null_known_answers():
    r = permutation_null(5.0, np.arange(99) / 99)
    assert r["p_value"] == pytest.approx(0.01) and r["n_null"] == 99
    assert r["null_mean"] == pytest.approx(49 / 99)
    assert r["null_q95"] == pytest.approx(np.quantile(np.arange(99) / 99, 0.95))
    assert permutation_null(0.0, np.zeros(99))["p_value"] == 1.0  # identity vs all-zero nulls
    null = np.array([-3.0, -1.0, 0.5, 2.0])  # 1 + 1 hit out of 1 + 4
    assert permutation_null(1.5, null)["p_value"] == pytest.approx(2 / 5)
    assert permutation_null(-2.0, null, "less")["p_value"] == pytest.approx(2 / 5)
    assert permutation_null(-2.5, null, "two-sided")["p_value"] == pytest.approx(2 / 5)
    with pytest.raises(MythosLensError):
        permutation_null(float("nan"), null)


def test_random_permutations():
    p = random_permutations(10, 50, seed=0)
    assert p.shape == (50, 10) and p.dtype == np.int64
    assert (np.sort(p, 1) == np.arange(10)).all()  # valid permutations
    assert not (p == np.arange(10)).all(1).any()  # never the identity
    assert len({tuple(r) for r in p.tolist()}) == 50  # distinct
    assert np.array_equal(p, random_permutations(10, 50, seed=0))
    assert not np.array_equal(p, random_permutations(10, 50, seed=1))
    small = random_permutations(4, 10, seed=0)  # enumerated branch
    assert small.shape == (10, 4) and len({tuple(r) for r in small.tolist()}) == 10
    assert not (small == np.arange(4)).all(1).any()
    every = random_permutations(3, 100, seed=0)  # more than exist: all 3! - 1 = 5
    assert every.tolist() == [list(q) for q in itertools.permutations(range(3))][1:]
    assert random_permutations(3, 100, seed=0, exclude_identity=False).shape == (6, 3)
    assert random_permutations(1, 5, seed=0).shape == (0, 1)


def test_equal_norm_random_rows():
    table = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1e-3, -2e-3, 5.0]])
    r = equal_norm_random_rows(table, 20, seed=0)
    assert r.shape == (20, 3, 3)
    want = np.broadcast_to(np.linalg.norm(table, axis=1), (20, 3))
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), want, rtol=1e-12, atol=0)
    assert (r[:, 1] == 0).all()  # a zero row stays zero
    assert not np.allclose(r[0], table) and not np.allclose(r[0], r[1])
    assert np.array_equal(r, equal_norm_random_rows(torch.tensor(table), 20, seed=0))
    assert not np.array_equal(r, equal_norm_random_rows(table, 20, seed=1))
    with pytest.raises(MythosLensError):
        equal_norm_random_rows(np.ones(3), 2, seed=0)


# ---------------------------------------------------------------- stopping criterion


def _h(*accs):
    return [{"step": 100 * (i + 1), "acc": {"1": a, "2": b}} for i, (a, b) in enumerate(accs)]


def test_stopping_criterion_known_answers():
    h = _h((0.5, 0.4), (0.995, 0.99), (0.999, 1.0), (1.0, 1.0))
    assert stopping_criterion(h) == {"reached": True, "step": 300, "evaluations": 3}
    # one depth dips at step 300: the count resets and restarts at 400
    h = _h((0.995, 0.99), (1.0, 0.98), (1.0, 1.0), (1.0, 1.0))
    assert stopping_criterion(h) == {"reached": True, "step": 400, "evaluations": 4}
    assert stopping_criterion(h, consecutive=1)["step"] == 100
    assert stopping_criterion(h, consecutive=3) == {"reached": False, "step": None,
                                                    "evaluations": 4}  # fmt: skip
    assert stopping_criterion(h, threshold=0.98, consecutive=4)["step"] == 400
    # an evaluation that lacks a trained depth fails; order is by step, not by list position
    h = [{"step": 300, "acc": {"1": 1.0, "2": 1.0}}, {"step": 100, "acc": {"1": 1.0, "2": 1.0}},
         {"step": 200, "acc": {"1": 1.0}}]  # fmt: skip
    assert stopping_criterion(h)["reached"] is False
    assert stopping_criterion([]) == {"reached": False, "step": None, "evaluations": 0}
    train_style = [{"step": s, "heldout_acc": {"1": 1.0}} for s in (50, 100)]
    assert stopping_criterion(train_style, acc_key="heldout_acc")["step"] == 100


def test_stopping_criterion_long_table_and_bad_input():
    h = _h((0.995, 0.99), (1.0, 0.98), (1.0, 1.0), (1.0, 1.0))
    long = pd.DataFrame([{"step": e["step"], "depth": d, "acc": a}
                         for e in h for d, a in e["acc"].items()])  # fmt: skip
    assert stopping_criterion(long) == stopping_criterion(h)
    for bad in ([{"step": 1}], [{"acc": {"1": 1.0}}], _h((1, 1)) + _h((1, 1)),
                pd.DataFrame({"step": [1], "acc": [1.0]})):  # fmt: skip
        with pytest.raises(MythosLensError):
            stopping_criterion(bad)
    with pytest.raises(MythosLensError):
        stopping_criterion(h, consecutive=0)


# ---------------------------------------------------------------- endpoint table


def test_endpoint_table_known_answers():
    diffs = {
        "b_sym": [1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0],  # p = 1
        "primary": np.full(8, 0.2),  # p = 2/256
        "a_pos": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],  # p = 2/256
        "c_small": [0.5, 0.5, 0.5, 0.5],  # n = 4: min p = 2/16 > 0.05
    }
    t = endpoint_table(diffs, "primary", n_resamples=2000)
    assert list(t.columns) == list(ENDPOINT_COLUMNS)
    assert t.endpoint.tolist() == ["primary", "b_sym", "a_pos", "c_small"]
    assert t.role.tolist() == ["primary"] + ["secondary"] * 3
    assert t.n.tolist() == [8, 8, 8, 4]
    np.testing.assert_allclose(t.mean_diff, [0.2, 0.0, 0.45, 0.5])
    np.testing.assert_allclose(t.p_value, [2 / 256, 1.0, 2 / 256, 2 / 16])
    # Holm over the 3 secondaries: sorted 2/256 * 3, 2/16 * 2, 1 * 1
    np.testing.assert_allclose(t.p_holm, [2 / 256, 1.0, 6 / 256, 0.25])
    np.testing.assert_allclose(t.min_p, [2 / 256, 2 / 256, 2 / 256, 2 / 16])
    assert t.decision.tolist() == ["detected", "not detected", "detected",
                                   "not detected (underpowered: min_p > alpha)"]  # fmt: skip
    np.testing.assert_allclose(t.loc[0, ["ci_low", "ci_high"]].astype(float), [0.2, 0.2])
    assert t.loc[2, "ci_low"] < 0.45 < t.loc[2, "ci_high"]
    assert t.loc[1, "ci_low"] < 0 < t.loc[1, "ci_high"]
    # Holm makes the difference: p = 2/256 alone is detected at alpha 0.01, x3 is not
    t2 = endpoint_table(diffs, "primary", alpha=0.01, n_resamples=2000)
    assert t2.decision.tolist()[:3] == ["detected", "not detected", "not detected"]
    assert endpoint_table({"only": np.ones(8)}, "only").p_holm.tolist() == [2 / 256]
    with pytest.raises(MythosLensError):
        endpoint_table(diffs, "missing")
    assert math.isclose(endpoint_table(diffs, "primary").loc[0, "p_value"], 2 / 256)
