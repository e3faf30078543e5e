"""Known answers for the dose-response (sensitivity) statistics."""

import math

import numpy as np
import pandas as pd
import pytest

from mythos_lens.errors import MythosLensError
from probes.sensitivity import (
    classify_use,
    example_null_p,
    proportion_interval,
    sensitivity_curve,
    smallest_detected,
    spread_of,
)

DOSES = (0.0, 0.25, 0.5, 1.0, 2.0)


def _planted(slope: float, noise: float, units: int = 8, seed: int = 0) -> pd.DataFrame:
    """value = unit offset + slope · dose (+ small per-dose noise); output effect = dose."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(units):
        off = rng.normal(0, 1)
        for d in DOSES:
            rows.append({"unit": u, "dose": d, "metric": "m", "value": off + slope * d
                         + (noise * rng.normal() if d else 0.0)})  # fmt: skip
            rows.append({"unit": u, "dose": d, "metric": "output_kl", "value": d / 10})
            rows.append({"unit": u, "dose": d, "metric": "output_delta_acc", "value": -d / 100})
    return pd.DataFrame(rows)


def test_an_invariant_metric_gives_a_flat_curve_and_is_blind():
    curve = sensitivity_curve(_planted(0.0, 0.0), {"m": 1.0}, {"m": 1})
    assert (curve.mean_response == 0).all() and not curve.detects.any()
    small = smallest_detected(curve)
    assert small.blind.item() and math.isnan(small.smallest_dose.item())


def test_a_rising_metric_is_detected_from_the_dose_where_it_exceeds_its_spread():
    curve = sensitivity_curve(_planted(2.0, 0.01), {"m": 0.9}, {"m": 1})
    got = curve.set_index("dose")
    assert np.allclose(got.mean_response, [2 * d for d in DOSES[1:]], atol=0.02)
    # 2·0.25 = 0.5 < 0.9 (not detected), 2·0.5 = 1.0 ≥ 0.9 (detected), sign-flip p = 2/256
    assert got.detects.tolist() == [False, True, True, True]
    assert got.loc[0.5, "p_value"] == pytest.approx(2 / 256)
    assert got.loc[0.5, "output_kl"] == pytest.approx(0.05)
    assert got.loc[1.0, "output_delta_acc"] == pytest.approx(-0.01)
    small = smallest_detected(curve)
    assert small.smallest_dose.item() == 0.5 and small.below_reference.item()
    # the wrong direction never detects, however large
    assert not sensitivity_curve(_planted(2.0, 0.01), {"m": 0.9}, {"m": -1}).detects.any()


def test_a_zero_spread_metric_detects_any_consistent_response():
    curve = sensitivity_curve(_planted(1e-6, 0.0), {"m": 0.0}, {"m": 1})
    assert curve.detects.all() and np.isinf(curve.standardized).all()


def test_curve_refuses_a_table_without_dose_zero_or_columns():
    v = _planted(1.0, 0.0)
    with pytest.raises(MythosLensError, match="no dose 0"):
        sensitivity_curve(v[v.dose > 0], {"m": 1.0}, {"m": 1})
    with pytest.raises(MythosLensError, match="columns"):
        sensitivity_curve(v.drop(columns="unit"), {"m": 1.0}, {"m": 1})
    with pytest.raises(MythosLensError, match="direction"):
        sensitivity_curve(v, {"m": 1.0}, {"m": 2})


def test_spread_is_the_sd_over_units():
    t = pd.DataFrame({"metric": ["a"] * 4 + ["b"] * 2, "value": [1, 2, 3, 4, 5, 5]})
    s = spread_of(t)
    assert s["a"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1)) and s["b"] == 0.0


@pytest.mark.parametrize("kl, dacc, p, expected", [
    (0.05, 0.0, 0.001, True),  # material by KL, beyond the null
    (0.001, -0.02, 0.001, True),  # material by accuracy
    (0.001, 0.0, 0.001, False),  # beyond the null but immaterial
    (0.5, -0.1, 0.2, False),  # material but within the null
    (0.01, -0.01, 0.05, True),  # thresholds are inclusive
])  # fmt: skip
def test_classify_use_on_planted_cases(kl, dacc, p, expected):
    assert classify_use(kl, dacc, p) is expected


def test_example_null_p_sees_a_consistent_increase_and_not_noise():
    rng = np.random.default_rng(0)
    assert example_null_p(np.abs(rng.normal(1, 0.1, 200))) < 0.001
    assert example_null_p(rng.normal(0, 1, 200)) > 0.05
    assert example_null_p(np.zeros(10)) == 1.0


def test_proportion_interval_is_clopper_pearson():
    r = proportion_interval(4, 7)
    assert r["share"] == pytest.approx(4 / 7)
    assert (r["low"], r["high"]) == pytest.approx((0.18405, 0.90101), abs=1e-5)
    assert proportion_interval(0, 8)["low"] == 0.0 and proportion_interval(8, 8)["high"] == 1.0
    with pytest.raises(MythosLensError):
        proportion_interval(9, 8)


def test_sensitivity_figure_draws_each_metric_at_its_dose_effects():
    from probes.sensitivity_plots import seed_dots_figure, sensitivity_figure

    v = pd.concat([_planted(2.0, 0.01), _planted(0.0, 0.0).assign(metric=lambda d: d.metric.where(
        d.metric != "m", "flat"))])  # fmt: skip
    curve = sensitivity_curve(v, {"m": 0.9, "flat": 0.0}, {"m": 1, "flat": 1})
    fig = sensitivity_figure(curve)
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"m", "flat"}
    assert list(by_name["m"].x) == pytest.approx([d / 10 for d in DOSES[1:]])
    assert list(by_name["flat"].y) == [0.0] * 4  # a zero response under a zero spread: not ∞
    uses = pd.DataFrame({"seed": [0, 0, 1, 1], "arm": ["on", "off"] * 2, "kl": [0.3, 0, 1e-4, 0],
                         "uses_loop_specific_lora": [True, False, False, False]})  # fmt: skip
    dots = seed_dots_figure(uses, threshold=0.01)
    assert [t.name for t in dots.data] == ["LoRA on", "LoRA off"]
    assert list(dots.data[1].y) == [1e-9, 1e-9]  # exact zeros at the floor
