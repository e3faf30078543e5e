"""Known-answer tests for lenses per loop, the tuned lens and the model-side readouts."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import make_model

from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from mythos_lens.readouts import coda_lens, logit_lens
from probes.lens import TunedLens, apply_lens, fit_tuned_lens, lens_long, lens_table


def test_lens_table_hand_computed(tmp_path):
    # vocab 4; final prefers token 2; loop 0 = uniform, loop 1 = the final logits exactly
    final = torch.tensor([[[0.0, 1.0, 3.0, 2.0]]])
    lg = torch.stack([torch.zeros(1, 1, 4), final])
    df = lens_table(lg, final, target_ids=[[3]], control_ids=[[0]], k=2, positions=[9], lens="x")
    r0, r1 = df.iloc[0], df.iloc[1]
    assert r1.top_1 == 2 and r1.top_2 == 3 and r1.final_rank == 0 and r1.target_rank == 1
    assert r1.control_rank == 3 and r1.kl_final_lens == pytest.approx(0.0, abs=1e-12)
    assert r0.final_rank == 0 and r0.control_rank == 0  # ties share the best rank
    assert r0.entropy == pytest.approx(math.log(4)) and r0.top_1_prob == pytest.approx(0.25)
    p = torch.softmax(final.double(), -1)[0, 0]
    assert r0.kl_final_lens == pytest.approx(float((p * (p.log() - math.log(0.25))).sum()))
    assert (df.pos == 9).all() and (df.lens == "x").all()
    for name, frame in [("wide", df), ("long", lens_long(df))]:
        frame.to_parquet(tmp_path / f"{name}.parquet")
        pd.testing.assert_frame_equal(frame, pd.read_parquet(tmp_path / f"{name}.parquet"))


def test_default_control_token_is_seeded_and_avoids_final_and_target():
    g = torch.Generator().manual_seed(0)
    final = torch.randn(3, 20, 5, generator=g)
    lg = torch.randn(2, 3, 20, 5, generator=g)
    tgt = torch.randint(0, 5, (3, 20), generator=g)
    a = lens_table(lg, final, target_ids=tgt)
    b = lens_table(lg, final, target_ids=tgt)
    assert a.control_token.equals(b.control_token)
    assert (a.control_token != a.final_token).all() and (a.control_token != a.target_token).all()


def test_bad_lens_inputs():
    lg, fin = torch.zeros(2, 1, 3, 5), torch.zeros(1, 3, 5)
    with pytest.raises(MythosLensError, match="4 dims"):
        lens_table(fin, fin)
    with pytest.raises(MythosLensError, match="final_logits"):
        lens_table(lg, torch.zeros(1, 4, 5))
    with pytest.raises(MythosLensError, match="k <= vocab"):
        lens_table(lg, fin, k=6)
    with pytest.raises(MythosLensError, match="vocabulary"):
        lens_table(lg, fin, target_ids=[[0, 1, 5]])
    with pytest.raises(MythosLensError, match="readout returned"):
        apply_lens(torch.zeros(2, 1, 3, 4), lambda h: h[..., :1, :])


@pytest.mark.parametrize("case", ["gqa_early_exit", "mla_all_loops"])
def test_coda_lens_on_act_out_equals_model_logits(case):
    model = make_model(case)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    tr = capture(model, ids, n_loops=4)
    got = coda_lens(model)(tr.stream["act_out"])
    assert torch.allclose(got, tr.logits, atol=1e-6)
    # per-loop lenses: shapes, and the logit lens is head(norm(h)) token by token
    h = tr.loop["resid_post"]
    cl = apply_lens(h, coda_lens(model))
    ll = apply_lens(h, logit_lens(model))
    assert cl.shape == ll.shape == (tr.n_loops, 2, 9, 64)
    assert torch.allclose(ll[0], model.head(model.norm(h[0])), atol=1e-6)
    df = lens_table(cl, tr.logits, target_ids=ids, positions=tr.positions, lens="coda")
    assert len(df) == tr.n_loops * 2 * 9


def test_readouts_leave_no_gradient_on_the_model():
    model = make_model("gqa_all_loops")
    h = torch.randn(1, 4, 32, requires_grad=True)
    (coda_lens(model)(h).sum() + logit_lens(model)(h).sum()).backward()
    assert h.grad is not None
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(MythosLensError, match="model dim"):
        logit_lens(model)(torch.zeros(3, 5))
    with pytest.raises(MythosLensError, match="max_seq_len"):
        coda_lens(model)(torch.zeros(1, 33, 32))


def planted_problem(seed=0):
    """Final logits = W (M_t h_t) for known per-loop maps M_t near identity: the tuned lens can
    reach KL 0, the plain readout W h cannot."""
    g = torch.Generator().manual_seed(seed)
    L, B, P, d, V = 2, 8, 16, 6, 10
    W = torch.randn(V, d, generator=g)
    h = torch.randn(L, B, P, d, generator=g)
    M = [torch.eye(d) + 0.5 * torch.randn(d, d, generator=g) for _ in range(L)]
    b = torch.randn(L, d, generator=g) * 0.5
    # both loops must yield the same final logits: h_1 := M_0-consistent transform of h_0
    h[1] = torch.linalg.solve(M[1], (h[0] @ M[0].T + b[0] - b[1]).reshape(-1, d).T).T.reshape(
        B, P, d
    )
    final = (h[0] @ M[0].T + b[0]) @ W.T
    return h, final, (lambda x: x @ W.T)


def test_tuned_lens_zero_init_is_identity_and_training_recovers_planted_translator(tmp_path):
    h, final, readout = planted_problem()
    fresh = TunedLens(2, 6)
    assert torch.equal(fresh(h), h)
    plain = lens_table(apply_lens(h, readout), final).groupby("loop").kl_final_lens.mean()
    lens = fit_tuned_lens(h, final, readout, steps=400, lr=3e-2, batch_tokens=128, progress=False)
    tuned = lens_table(lens.logits(h, readout), final).groupby("loop").kl_final_lens.mean()
    assert (plain > 0.3).all()
    assert (tuned < 0.02 * plain).all()
    assert lens.meta["kl_after"][0] < lens.meta["kl_before"][0]
    again = fit_tuned_lens(h, final, readout, steps=400, lr=3e-2, batch_tokens=128, progress=False)
    assert torch.equal(again.A, lens.A)  # seeded
    lens.save(tmp_path / "tl")
    back = TunedLens.load(tmp_path / "tl")
    assert torch.equal(back.A, lens.A) and torch.equal(back.b, lens.b)
    assert back.meta["steps"] == 400
    assert sorted(p.name for p in (tmp_path / "tl").iterdir()) == [
        "tuned_lens.json",
        "tuned_lens.safetensors",
    ]
    (tmp_path / "tl" / "tuned_lens.json").write_text('{"format": "x"}')
    with pytest.raises(MythosLensError, match="format"):
        TunedLens.load(tmp_path / "tl")


def test_tuned_lens_on_a_capture_reduces_kl():
    model = make_model("gqa_all_loops")
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    tr = capture(model, ids, n_loops=3)
    lens = fit_tuned_lens(
        tr.loop["resid_post"], tr.logits, logit_lens(model), steps=60, lr=1e-2, progress=False
    )
    assert np.all(np.array(lens.meta["kl_after"]) < np.array(lens.meta["kl_before"]))
    assert all(p.grad is None for p in model.parameters())
