"""AppTest tests: every page and control, checked against the numbers the library computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from apphelpers import LOOPS, figure, figures, z

from mythos_lens.capture import capture
from mythos_lens.checkpoint import load_checkpoint, load_task
from mythos_lens.interventions import AblateLora
from mythos_lens.readouts import coda_lens, exit_states, logit_lens
from probes.lens import apply_lens, lens_table
from probes.routing import random_overlap_baseline
from probes.similarity import cka_matrix, loop_deltas

HOPS, SEED, N = 2, 0, 32  # the sidebar's default task input


def reference(root: Path, name: str = "pointer-lora-on", n_loops: int = LOOPS, **kw):
    """Model, task batch and trace of the default input, computed without the app."""
    model = load_checkpoint(root / name)
    batch = load_task(root / name).generate(N, "heldout", seed=SEED, hops=[HOPS])
    tr = capture(model, batch.input_ids, n_loops=n_loops, run_all_loops=True, **kw)
    return model, batch, tr


def test_opens_on_default_checkpoint_and_task_input(app, checkpoint_root):
    assert app.sidebar.selectbox(key="checkpoint").value == "pointer-lora-on"
    assert app.sidebar.radio(key="input_source").value == "Task instance"
    assert app.sidebar.number_input(key="n_loops").value == LOOPS
    assert app.sidebar.number_input(key="n_loops").label == "Loops (trained with 2–6)"
    assert not app.error
    # it opens on the exit lens: what a run stopped after each loop outputs, then the output
    heat = figure(app, "exit lens")
    model, batch, tr = reference(checkpoint_root)
    task = load_task(checkpoint_root / "pointer-lora-on")
    # x axis: the first example's tokens, decoded with the task's vocabulary
    assert heat["data"][0]["x"] == [
        f"{p}:{s}" for p, s in enumerate(task.decode(batch.input_ids[0]))
    ]
    assert heat["data"][0]["y"] == [f"loop {t}" for t in range(LOOPS)] + ["output"]
    exit_lg = apply_lens(exit_states(tr["act_weight"], tr["resid_post"]), coda_lens(model))
    want = lens_table(exit_lg, tr.logits)
    want = want[want["batch"] == 0].pivot(index="loop", columns="pos", values="top_1_prob")
    grid = z(heat)
    np.testing.assert_allclose(grid[:-1], want.to_numpy(), rtol=1e-5)
    np.testing.assert_array_equal(grid[-2], grid[-1])  # the last exit is the output


@pytest.mark.parametrize("lens", ["logit", "coda"])
def test_trajectory_heatmap_matches_lens_table(app, checkpoint_root, lens):
    model, batch, tr = reference(checkpoint_root)
    readout = logit_lens(model) if lens == "logit" else coda_lens(model)
    want = lens_table(apply_lens(tr["resid_post"], readout), tr.logits)
    want = want[want["batch"] == 0]
    app.radio(key="lens").set_value(lens).run()
    app.selectbox(key="traj_metric").set_value("KL(final ‖ lens), nats").run()
    grid = z(figure(app, f"{lens} lens: KL"))[:-1]  # the last row is the output reference
    assert grid.shape == (LOOPS, batch.input_ids.shape[1])
    expect = want.pivot(index="loop", columns="pos", values="kl_final_lens").to_numpy()
    np.testing.assert_allclose(grid, expect, rtol=1e-5, atol=1e-6)
    # hover lists the top tokens, decoded; the cell text is the top-1 token
    task = load_task(checkpoint_root / "pointer-lora-on")
    trace0 = figure(app, f"{lens} lens: KL")["data"][0]
    row = want[(want["loop"] == 2) & (want["pos"] == 5)].iloc[0]
    assert trace0["text"][2][5] == task.describe_token(int(row["top_1"]))
    assert trace0["customdata"][2][5].split()[:2] == [
        task.describe_token(int(row["top_1"])),
        task.describe_token(int(row["top_2"])),
    ]


def test_answer_rank_heatmap_and_rank_lines(app, checkpoint_root):
    model, batch, tr = reference(checkpoint_root)
    app.radio(key="lens").set_value("logit").run()
    app.selectbox(key="traj_metric").set_value(
        "rank of the target (answer at the last position)"
    ).run()
    lg = apply_lens(tr["resid_post"], logit_lens(model))
    answer_rank = lens_table(lg, tr.logits, control_ids=batch.answer[:, None].expand(N, 18))
    want = answer_rank[(answer_rank["batch"] == 0) & (answer_rank["pos"] == 17)]
    grid = z(figure(app, "logit lens: rank of the target"))
    np.testing.assert_array_equal(grid[:-1, -1], want.sort_values("loop")["control_rank"])
    # the rank-trajectory chart defaults to the answer at the last position, exit/logit/coda
    lines = figure(app, "rank of v")
    assert [t["name"] for t in lines["data"]] == ["exit", "logit", "coda"]
    np.testing.assert_array_equal(
        np.asarray(lines["data"][1]["y"]), want.sort_values("loop")["control_rank"]
    )
    # another token and position
    task = load_task(checkpoint_root / "pointer-lora-on")
    app.selectbox(key="traj_token").set_value("k3").run()
    app.number_input(key="traj_pos").set_value(4).run()
    app.multiselect(key="traj_lenses").set_value(["coda"]).run()
    lines = figure(app, "rank of k3 at position 4")
    clg = apply_lens(tr["resid_post"], coda_lens(model))
    k3 = lens_table(clg, tr.logits, control_ids=torch.full((N, 18), 4))
    want = k3[(k3["batch"] == 0) & (k3["pos"] == 4)].sort_values("loop")["control_rank"]
    assert task.describe_token(4) == "k3"
    assert [t["name"] for t in lines["data"]] == ["coda"]
    np.testing.assert_array_equal(np.asarray(lines["data"][0]["y"]), want)


def test_n_loops_beyond_training_and_example_choice(app, checkpoint_root):
    app.sidebar.number_input(key="n_loops").set_value(7).run()
    assert not app.exception and not app.error
    app.radio(key="lens").set_value("logit").run()
    heat = figure(app, "logit lens")
    assert len(heat["data"][0]["y"]) == 7 + 1
    model, batch, tr = reference(checkpoint_root, n_loops=7)
    app.sidebar.number_input(key="example").set_value(3).run()
    want = lens_table(apply_lens(tr["resid_post"], logit_lens(model)), tr.logits)
    want = want[want["batch"] == 3].pivot(index="loop", columns="pos", values="top_1_prob")
    np.testing.assert_allclose(z(figure(app, "logit lens"))[:-1], want.to_numpy(), rtol=1e-5)


def test_task_controls_change_the_input(app, checkpoint_root):
    task = load_task(checkpoint_root / "pointer-lora-on")
    app.sidebar.number_input(key="hops").set_value(5).run()
    app.sidebar.number_input(key="seed").set_value(9).run()
    app.sidebar.selectbox(key="split").set_value("train").run()
    app.sidebar.number_input(key="n_examples").set_value(4).run()
    ids = task.generate(4, "train", seed=9, hops=[5]).input_ids[0]
    x = figure(app, "exit lens")["data"][0]["x"]
    assert x == [f"{p}:{s}" for p, s in enumerate(task.decode(ids))]
    assert "h5" in x[-2]


def test_tuned_lens(app, checkpoint_root):
    app.radio(key="lens").set_value("tuned").run()
    assert not app.exception, app.exception
    grid = z(figure(app, "tuned lens"))[:-1]
    assert grid.shape == (LOOPS, 18)
    assert np.isfinite(grid).all() and (grid > 0).all() and (grid <= 1).all()


def test_experts_page(app, checkpoint_root):
    model, batch, tr = reference(checkpoint_root)
    app.switch_page("views/experts.py").run()
    assert not app.exception, app.exception
    E, k = model.cfg.n_experts, model.cfg.n_experts_per_tok
    # one token x loop grid per routing slot: the expert each token chose at each loop
    task = load_task(checkpoint_root / "pointer-lora-on")
    for slot in range(k):
        fig = figure(app, f"Expert in routing slot {slot}")
        np.testing.assert_array_equal(z(fig), tr["expert_ids"][:, 0, :, slot].numpy())
        assert fig["data"][0]["x"][-1] == f"17:{task.describe_token(int(batch.input_ids[0, -1]))}"
    overlap = figure(app, "Router overlap_at_k")
    base = random_overlap_baseline(k, E)["overlap_at_k"]
    assert f"{base:.3f}" in overlap["layout"]["title"]["text"]
    m = z(overlap)
    np.testing.assert_allclose(np.diag(m), 1.0)
    # loops 0 vs 1 by hand: mean |S_0 ∩ S_1| / k over all tokens
    s0, s1 = tr["expert_ids"][0], tr["expert_ids"][1]
    inter = (s0.unsqueeze(-1) == s1.unsqueeze(-2)).any(-1).sum(-1).double() / k
    assert m[0, 1] == pytest.approx(float(inter.mean()))
    app.radio(key="ov_metric").set_value("jaccard").run()
    jac = z(figure(app, "Router jaccard"))
    np.testing.assert_allclose(np.diag(jac), 1.0)
    assert (jac <= m + 1e-12).all()  # Jaccard never exceeds overlap@k
    load = figure(app, "Expert load per loop")
    assert len(load["data"]) == E
    stacked = np.sum([np.asarray(t["y"], dtype=float) for t in load["data"]], axis=0)
    np.testing.assert_allclose(stacked, 1.0)


def test_loops_page(app, checkpoint_root):
    model, _, tr = reference(checkpoint_root)
    app.switch_page("views/loops.py").run()
    assert not app.exception, app.exception
    cka = [figure(app, f"CKA (debiased): {s}") for s in ("h_t", "Δh_t", "block output")]
    for f in cka:
        m = z(f)
        assert m.shape == (LOOPS, LOOPS)
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
        np.testing.assert_allclose(m, m.T, atol=1e-9)
    np.testing.assert_allclose(z(cka[1]), cka_matrix(loop_deltas(tr["resid_post"], tr["e"])))
    app.radio(key="cka_kind").set_value("biased").run()
    biased = z(figure(app, "CKA (biased): block output"))
    np.testing.assert_allclose(biased, cka_matrix(tr["block_out"], "biased"))
    steps = figure(app, "Step of the carried state")
    assert {t["name"] for t in steps["data"]} == {"rel_step", "cos_prev_step"}
    kl = figure(app, "KL(p_(t-1) ‖ p_t), exit lens")
    assert sorted(set(np.asarray(kl["data"][0]["x"]).tolist())) == list(range(1, LOOPS))
    halt = z(figure(app, "Cumulative halting probability"))
    np.testing.assert_allclose(halt, tr["cum_halt_prob"][:, 0].numpy(), rtol=1e-5)
    rho = [m for m in app.metric if m.label.startswith("ρ(A)")][0]
    assert float(rho.value) == pytest.approx(float(tr.params["injection_A"].max()), abs=1e-4)
    app.toggle(key="jac").set_value(True).run()
    assert not app.exception, app.exception
    jac = app.dataframe[-1].value
    assert list(jac["loop"]) == list(range(LOOPS)) and (jac["spectral_radius"] > 0).all()
    assert (jac["spectral_norm"] >= jac["spectral_radius"] - 1e-6).all()


def test_loops_page_at_one_loop_keeps_act_and_rho(app):
    app.sidebar.number_input(key="n_loops").set_value(1).run()
    app.switch_page("views/loops.py").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    steps = figure(app, "Step of the carried state")
    assert {t["name"] for t in steps["data"]} == {"rel_step"}  # cos_prev_step needs 2 loops
    assert z(figure(app, "Cumulative halting probability")).shape[0] == 1
    assert any(m.label.startswith("ρ(A)") for m in app.metric)


def test_lora_page_ablation(app, checkpoint_root):
    model, batch, tr = reference(checkpoint_root)
    app.switch_page("views/lora.py").run()
    assert not app.exception, app.exception
    cos = z(figure(app, "Cosine between per-loop LoRA scale"))
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-6)
    ratio = figure(app, "‖LoRA delta‖")
    assert {t["name"] for t in ratio["data"]} == {"norm_ratio", "mean_token_ratio"}
    app.multiselect(key="ablate_loops").set_value([1, 3]).run()
    assert not app.exception, app.exception
    effects = app.dataframe[0].value
    assert list(effects.index) == ["1", "1+3", "3"]
    ab = capture(model, batch.input_ids, n_loops=LOOPS, run_all_loops=True,
                 interventions=[AblateLora(loops=[1, 3])])  # fmt: skip
    changed = (ab.logits[:, -1].argmax(-1) != tr.logits[:, -1].argmax(-1)).double().mean()
    assert effects.loc["1+3", "top1_changed"] == pytest.approx(float(changed))
    assert effects.loc["1+3", "kl"] > 0
    bars = figure(app, "Effect at the last position")
    assert set(bars["data"][0]["x"]) == {"1", "3", "1+3"}
    # router overlap with and without LoRA: loops before the first ablated loop are untouched
    base, abl = z(figure(app, "overlap@k, with LoRA")), z(figure(app, "ablated at [1, 3]"))
    assert base[0, 1] == pytest.approx(abl[0, 1])


def test_lora_off_checkpoint_has_no_direction_and_no_effect(app):
    app.sidebar.selectbox(key="checkpoint").set_value("pointer-lora-off").run()
    app.switch_page("views/lora.py").run()
    assert not app.exception, app.exception
    cos = figure(app, "Cosine between per-loop LoRA scale")
    assert np.isnan(z(cos)).all()
    assert "no direction" in cos["layout"]["title"]["text"]
    app.multiselect(key="ablate_loops").set_value([0, 2]).run()
    effects = app.dataframe[0].value
    assert (effects["kl"] == 0).all() and (effects["top1_changed"] == 0).all()


def test_compare_page(app, checkpoint_root):
    app.switch_page("views/compare.py").run()
    assert not app.exception, app.exception
    assert app.selectbox(key="compare_with").value == "pointer-lora-off"
    assert [h.value for h in app.subheader] == ["pointer-lora-on", "pointer-lora-off"]
    cos = [z(f) for f in figures(app) if f["layout"]["title"]["text"] == "LoRA scale cosine"]
    assert len(cos) == 2 and not np.isnan(cos[0]).any() and np.isnan(cos[1]).all()
    _, batch, _ = reference(checkpoint_root)
    model_off = load_checkpoint(checkpoint_root / "pointer-lora-off")
    pred = model_off(batch.input_ids, n_loops=LOOPS)[:, -1].argmax(-1)
    acc = float((pred == batch.answer).double().mean())
    assert app.metric[1].value == f"2 hop(s): {acc:.0%}"
    heat = [f for f in figures(app) if f["layout"]["title"]["text"].startswith("coda lens")]
    assert len(heat) == 2 and not np.array_equal(z(heat[0]), z(heat[1]))


def test_typed_ids(app, checkpoint_root):
    app.sidebar.radio(key="input_source").set_value("Token ids").run()
    app.sidebar.text_area(key="ids_text").set_value("1 10 2 12, 17 3\n2 9 1 11 18 1").run()
    assert not app.exception and not app.error
    app.radio(key="lens").set_value("logit").run()
    heat = figure(app, "logit lens")
    assert heat["data"][0]["x"] == ["0:k0", "1:v1", "2:k1", "3:v3", "4:h1", "5:k2"]
    # no answer for typed ids: the target metric is not offered
    assert not any("target" in o for o in app.selectbox(key="traj_metric").options)
    model = load_checkpoint(checkpoint_root / "pointer-lora-on")
    tr = capture(model, torch.tensor([[1, 10, 2, 12, 17, 3], [2, 9, 1, 11, 18, 1]]),
                 n_loops=LOOPS, run_all_loops=True)  # fmt: skip
    want = lens_table(apply_lens(tr["resid_post"], logit_lens(model)), tr.logits)
    want = want[want["batch"] == 0].pivot(index="loop", columns="pos", values="top_1_prob")
    np.testing.assert_allclose(z(heat)[:-1], want.to_numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 999", "token id 999 is outside the vocabulary"),
        ("1 2 -1", "'-1' on line 1 is not a token id"),
        ("1 2 " + "9" * 30, "is too large"),
        ("1 x 3", "'x' on line 1 is not a token id"),
        ("1 2 3\n1 2", "equal-length lines"),
        (" ".join(["1"] * 40), "max_seq_len"),
    ],
)
def test_bad_ids_show_an_error(app, text, message):
    app.sidebar.radio(key="input_source").set_value("Token ids").run()
    app.sidebar.text_area(key="ids_text").set_value(text).run()
    assert not app.exception, app.exception
    assert len(app.error) == 1 and message in app.error[0].value, [e.value for e in app.error]
    assert not app.get("plotly_chart")


def test_impossible_loop_count_shows_an_error(app):
    app.sidebar.number_input(key="n_loops").set_value(0).run()
    assert not app.exception, app.exception
    assert "n_loops" in app.error[0].value and not app.get("plotly_chart")
    app.sidebar.number_input(key="n_loops").set_value(2).run()
    assert not app.error and len(figure(app, "exit lens")["data"][0]["y"]) == 2 + 1


def test_bad_upload_shows_an_error(app, checkpoint_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MYTHOS_LENS_UPLOADS", str(tmp_path / "uploads"))
    good = checkpoint_root / "pointer-lora-on"
    app.sidebar.file_uploader(key="up_weights").upload("model.safetensors", b"not safetensors")
    app.sidebar.file_uploader(key="up_config").upload(
        "config.json", (good / "config.json").read_bytes()
    )
    app.run()
    assert not app.exception, app.exception
    assert any("Upload rejected" in e.value and "could not be read" in e.value for e in app.error)
    assert app.sidebar.selectbox(key="checkpoint").value == "pointer-lora-on"
    app.sidebar.file_uploader(key="up_config").set_value(
        ("config.json", b"{not json", "application/json")
    )
    app.run()
    assert any("not valid JSON" in e.value for e in app.error), [e.value for e in app.error]
    assert list((tmp_path / "uploads").iterdir()) == []  # rejected uploads leave nothing behind


def test_good_upload_becomes_the_checkpoint(app, checkpoint_root):
    off = checkpoint_root / "pointer-lora-off"
    app.sidebar.file_uploader(key="up_weights").upload(
        "model.safetensors", (off / "model.safetensors").read_bytes()
    )
    app.sidebar.file_uploader(key="up_config").upload(
        "config.json", (off / "config.json").read_bytes()
    )
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    name = app.sidebar.selectbox(key="checkpoint").value
    assert name.startswith("upload:model-")
    app.switch_page("views/lora.py").run()
    assert np.isnan(z(figure(app, "Cosine between per-loop LoRA scale"))).all()


def test_causal_page(app, checkpoint_root):
    from mythos_lens.patching import patch_sweep
    from probes.effective_depth import effective_depth, loops_that_matter
    from probes.patching import patch_effects, sweep_table

    model, batch, tr = reference(checkpoint_root)
    app.switch_page("views/causal.py").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    # effective depth at the last position, over every input of the selection
    exit_lg = apply_lens(exit_states(tr["act_weight"], tr["resid_post"]), coda_lens(model))
    depth = effective_depth(exit_lg[:, :, -1:], tr.logits[:, -1:])
    want = loops_that_matter(depth, LOOPS)
    fig = figure(app, "loops at position 17")
    needing = [t for t in fig["data"] if t["name"] == "tokens needing loop t"][0]
    np.testing.assert_allclose(np.asarray(needing["y"]), want["share_needing"])
    # attention of the query at loop 1, every head, with the hop-2 pair outlined
    app.slider(key="attn_loop").set_value(1).run()
    heads = figure(app, "loop 1: attention of position 17")
    pat = capture(model, batch.input_ids, n_loops=LOOPS, run_all_loops=True,
                  sites=["attn_pattern"])["attn_pattern"]  # fmt: skip
    np.testing.assert_allclose(z(heads), pat[1, 0, :, 17, :].numpy(), rtol=1e-5)
    task = load_task(checkpoint_root / "pointer-lora-on")
    truth = task.pair_truth(batch, LOOPS)
    pair = int(truth["expected_pair"][1, 0])
    outlined = sorted(int(s["x0"] + 0.5) for s in heads["layout"]["shapes"])
    assert outlined == truth["pair_positions"][0, pair].tolist()
    # the patching map of example 0: corrupted start key, denoising h_t
    corrupt = task.corrupt(batch, seed=0).input_ids
    res = patch_sweep(model, batch.input_ids[:1], corrupt[:1], n_loops=LOOPS)
    table = sweep_table(res.cells, patch_effects(res.patched, res.baseline, res.source))
    grid = table.pivot(index="loop", columns="pos", values="restored").to_numpy()
    np.testing.assert_allclose(
        z(figure(app, "resid_post, denoise")), grid, rtol=1e-5, equal_nan=True
    )
    app.selectbox(key="patch_site").set_value("lora_delta").run()
    assert not app.exception and figure(app, "lora_delta, denoise")


def test_loops_page_filters_loops_that_do_not_matter(app, checkpoint_root):
    from probes.effective_depth import effective_depth, loops_that_matter

    model, _, tr = reference(checkpoint_root)
    exit_lg = apply_lens(exit_states(tr["act_weight"], tr["resid_post"]), coda_lens(model))
    m = loops_that_matter(effective_depth(exit_lg[:, :, -1:], tr.logits[:, -1:]), LOOPS)
    used = m[m["matters"]]["loop"].tolist()
    app.switch_page("views/loops.py").run()
    app.toggle(key="only_matter").set_value(True).run()
    assert not app.exception
    assert z(figure(app, "CKA (debiased): Δh_t")).shape == (len(used), len(used))


def test_checkpoint_list_includes_a_study_folder(tmp_path, monkeypatch):
    import app.state as state

    for d in ("b", "a", "study/x-s1", "study/x-s0", "empty", "study/nothing"):
        (tmp_path / d).mkdir(parents=True)
    for d in ("b", "a", "study/x-s1", "study/x-s0"):
        (tmp_path / d / "config.json").write_text("{}")
    monkeypatch.setenv(state.CHECKPOINTS_ENV, str(tmp_path))
    listed = state.shipped_checkpoints()
    assert list(listed) == ["a", "b", "study/x-s0", "study/x-s1"]
    assert listed["study/x-s0"] == str(tmp_path / "study" / "x-s0")
