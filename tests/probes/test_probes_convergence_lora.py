"""Known-answer tests for convergence/stability and LoRA differentiation tables."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import make_model

from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from mythos_lens.interventions import AblateLora
from mythos_lens.readouts import loop_step
from probes.convergence import (
    lens_kl_table,
    rho_A,
    spectral_radius,
    step_table,
    successive_kl,
)
from probes.exits import act_halting_step, exit_steps, kl_exit_step
from probes.lora import ZERO_NOTE, ablation_effects, lora_delta_ratio, lora_scale_cosine


def roundtrip(df, tmp_path, name="t"):
    df.to_parquet(tmp_path / f"{name}.parquet")
    pd.testing.assert_frame_equal(df, pd.read_parquet(tmp_path / f"{name}.parquet"))


# --- convergence -------------------------------------------------------------------------------
def test_step_table_known_geometric_orbit(tmp_path):
    # h_t = 0.5^t v: every step has ‖Δ‖/‖h_prev‖ = 0.5 and successive steps are parallel.
    v = torch.tensor([3.0, 4.0])
    h = torch.stack([v * 0.5**t for t in range(1, 5)]).reshape(4, 1, 1, 2)
    df = step_table(h, h0=v.reshape(1, 1, 2), positions=[7])
    rel = df[df.metric == "rel_step"]
    assert rel.loop.tolist() == [0, 1, 2, 3] and np.allclose(rel.value, 0.5)
    cos = df[df.metric == "cos_prev_step"]
    assert math.isnan(cos.value.iloc[0]) and np.allclose(cos.value.iloc[1:], 1.0)
    assert (df.pos == 7).all()
    roundtrip(df, tmp_path)
    # an alternating orbit reverses direction each step: cos = -1
    alt = torch.stack([v * (-1) ** t for t in range(4)]).reshape(4, 1, 1, 2)
    c = step_table(alt).query("metric == 'cos_prev_step'").value.to_numpy()
    assert np.allclose(c[1:], -1.0) and step_table(alt).loop.min() == 1


def test_successive_kl_and_exit_steps():
    V = 5
    p = torch.log(torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1]))
    q = torch.log(torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2]))
    # token 0: p, q, q, q -> KL(p‖q) at loop 1, then 0 -> exits at loop 2
    # token 1: p, q, p, q -> never below threshold
    lg = torch.stack(
        [torch.stack([p, p]), torch.stack([q, q]), torch.stack([q, p]), torch.stack([q, q])]
    )
    lg = lg.reshape(4, 1, 2, V)
    k = successive_kl(lg)
    want = float((p.exp() * (p - q)).sum())
    assert k[0, 0, 0].item() == pytest.approx(want) and k[1, 0, 0].item() == 0.0
    assert kl_exit_step(lg).tolist() == [[2, -1]]
    t = lens_kl_table(lg)
    assert t.loop.min() == 1 and len(t) == 3 * 2
    cum = torch.tensor([[0.5, 0.2], [0.995, 0.4], [1.0, 0.6], [1.0, 0.7]]).reshape(4, 1, 2)
    assert act_halting_step(cum, 0.99).tolist() == [[1, -1]]
    h = torch.zeros(4, 1, 2, 3)  # states are not what this checks
    ex = exit_steps(lg, lg[-1], h, cum_halt_prob=cum, act_threshold=0.99)
    assert ex[["act_step", "kl_step"]].to_numpy().tolist() == [[1, 2], [-1, -1]]


def test_rho_A():
    assert rho_A(torch.tensor([0.2, 0.9, 0.5])) == pytest.approx(0.9)
    with pytest.raises(MythosLensError, match="1 dims"):
        rho_A(torch.zeros(2, 2))


def test_spectral_radius_of_known_linear_maps():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    # real dominant eigenvalue 0.9, others smaller
    M = Q @ torch.diag(torch.tensor([0.9, -0.5, 0.3, 0.2, 0.1, 0.05], dtype=torch.float64)) @ Q.T
    r = spectral_radius(lambda h: h @ M.T, torch.zeros(3, 6, dtype=torch.float64), n_iter=200)
    assert r["spectral_radius"] == pytest.approx(0.9, rel=1e-3)
    assert r["spectral_norm"] == pytest.approx(0.9, rel=1e-6)
    # a rotation scaled by 1.2 (complex pair, |λ| = 1.2) beside a real 0.5, non-normal basis
    th = 0.7
    R = torch.tensor(
        [[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 0]],
        dtype=torch.float64,
    )
    D = 1.2 * R
    D[2, 2] = 0.5
    S = torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]], dtype=torch.float64)
    M2 = S @ D @ torch.linalg.inv(S)
    r2 = spectral_radius(lambda h: h @ M2.T + 1.0, torch.zeros(3, dtype=torch.float64), n_iter=400)
    assert r2["spectral_radius"] == pytest.approx(1.2, rel=0.02)
    assert r2["spectral_norm"] == pytest.approx(float(torch.linalg.matrix_norm(M2, 2)), rel=1e-6)
    assert r2["spectral_norm"] >= r2["spectral_radius"]
    with pytest.raises(MythosLensError, match="shape"):
        spectral_radius(lambda h: h[:2], torch.zeros(3))


def test_spectral_radius_of_the_model_loop_map():
    model = make_model("gqa_all_loops")
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(0))
    tr = capture(model, ids, n_loops=3)
    e, h = tr.stream["e"], tr.loop["resid_post"]
    for t in range(3):  # the readout's loop map reproduces the captured loop exactly
        assert torch.allclose(loop_step(model, e, t)(e if t == 0 else h[t - 1]), h[t], atol=1e-6)
    step = loop_step(model, e, 1)
    r = spectral_radius(step, h[0], n_iter=12, with_norm=False)
    assert math.isfinite(r["spectral_radius"]) and r["spectral_radius"] > 0
    again = spectral_radius(step, h[0], n_iter=12, with_norm=False)
    assert again["spectral_radius"] == r["spectral_radius"]  # seeded
    assert rho_A(tr.params["injection_A"]) < 1.0


def test_step_table_on_capture(tmp_path):
    model = make_model("mla_early_exit")
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    tr = capture(model, ids, n_loops=4)
    df = step_table(tr.loop["resid_post"], h0=tr.stream["e"], positions=tr.positions)
    assert len(df) == 2 * tr.n_loops * 2 * 6
    d0 = (tr.loop["resid_post"][0] - tr.stream["e"]).norm(dim=-1) / tr.stream["e"].norm(dim=-1)
    got = df.query("metric == 'rel_step' and loop == 0").value.to_numpy()
    assert np.allclose(got, d0.reshape(-1).double().numpy(), rtol=1e-5)
    steps = act_halting_step(tr.loop["cum_halt_prob"], tr.meta["act_threshold"])
    assert ((steps >= -1) & (steps < tr.n_loops)).all()
    if tr.n_loops < 4:  # early exit happened: every position halted by the last loop run
        assert (steps >= 0).all()


# --- LoRA --------------------------------------------------------------------------------------
def test_lora_scale_cosine_with_zero_row(tmp_path):
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [-3.0, 0.0]])
    df = lora_scale_cosine(s)
    m = df.pivot(index="loop_a", columns="loop_b", values="value").to_numpy()
    assert m[0, 1] == pytest.approx(0.0) and m[0, 3] == pytest.approx(-1.0) and m[1, 1] == 1.0
    assert np.isnan(m[2]).all() and np.isnan(m[:, 2]).all()
    assert (df[df.loop_a == 2].note == ZERO_NOTE).all() and (
        df[(df.loop_a != 2) & (df.loop_b != 2)].note == ""
    ).all()
    roundtrip(df, tmp_path)


def test_lora_delta_ratio():
    bo = torch.ones(2, 1, 2, 4)
    dl = torch.stack([0.5 * bo[0], torch.zeros(1, 2, 4)])
    df = lora_delta_ratio(dl, bo).set_index(["loop", "metric"]).value
    assert df[(0, "norm_ratio")] == pytest.approx(0.5) and df[
        (0, "mean_token_ratio")
    ] == pytest.approx(0.5)
    assert df[(1, "norm_ratio")] == 0.0
    with pytest.raises(MythosLensError, match="equal shapes"):
        lora_delta_ratio(dl, bo[:1])


def test_ablation_effects_zero_when_equal_and_known_otherwise(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 3, 7, generator=g)
    tgt = base.argmax(-1)
    df = ablation_effects(base, {0: base.clone(), 2: base.clone()}, tgt)
    assert (df.value == 0).sum() == len(df) - 2 * 2  # acc_* are 1, everything else exactly 0
    eff = df.set_index(["ablated_loop", "metric"]).value
    assert eff[(0, "kl")] == 0 and eff[(0, "delta_acc")] == 0 and eff[(2, "top1_changed")] == 0
    assert eff[(0, "acc_baseline")] == 1.0
    # flip one token's prediction: accuracy drops by 1/6 and top1_changed = 1/6
    ab = base.clone()
    ab[0, 0] = -ab[0, 0]
    eff = ablation_effects(base, {1: ab}, tgt).set_index("metric").value
    assert eff["delta_acc"] == pytest.approx(-1 / 6) and eff["top1_changed"] == pytest.approx(1 / 6)
    assert eff["kl"] > 0
    roundtrip(df, tmp_path)
    with pytest.raises(MythosLensError, match="equal shapes"):
        ablation_effects(base, {0: base[:1]})
    with pytest.raises(MythosLensError, match="vocabulary"):
        ablation_effects(base, {0: base}, tgt + 7)


def test_lora_tables_on_capture():
    model = make_model("gqa_all_loops")
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(2))
    tr = capture(model, ids, n_loops=3)
    cos = lora_scale_cosine(tr.params["lora_scale"])
    assert len(cos) == model.cfg.max_loop_iters**2
    r = lora_delta_ratio(tr.loop["lora_delta"], tr.loop["block_out"])
    assert (r.value > 0).all()
    abl = {
        t: capture(model, ids, n_loops=3, interventions=[AblateLora(t)]).logits for t in range(3)
    }
    eff = ablation_effects(tr.logits, abl, ids).set_index(["ablated_loop", "metric"]).value
    assert all(eff[(t, "kl")] > 0 for t in range(3))
    same = ablation_effects(tr.logits, {0: capture(model, ids, n_loops=3).logits})
    assert (same.value == 0).all()
