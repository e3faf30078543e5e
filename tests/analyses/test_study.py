"""The LoRA study (design, seed pairs with replacement, measures, within-model nulls, positive
control, verdict) and the depth study, on tiny models."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import tiny_checkpoint

from mythos_lens.checkpoint import load_checkpoint, load_task
from mythos_lens.errors import MythosLensError
from mythos_lens.studies.control import planted_model, unit_rows
from mythos_lens.studies.design import (
    DESIGNS,
    ENDPOINTS,
    FUNCTIONAL_ENDPOINTS,
    STUDY_RECIPE,
    V1_ENDPOINTS,
    LoraStudyDesign,
    get_design,
)
from mythos_lens.studies.lora import run_lora_study
from mythos_lens.studies.measures import (
    ModelData,
    adjacent_pairs,
    cka_dh,
    lora_nulls,
    mean_adjacent_cka,
)
from mythos_lens.studies.models import study_models, train_in_order
from mythos_lens.studies.verdict import lora_verdict

TINY_RECIPE = dict(STUDY_RECIPE, task_params={"n_entities": 4, "train_hops": 2, "max_hops": 3},
                   dim=32, expert_dim=16, lora_rank=2, eval_every=10, eval_examples=16,
                   final_eval_examples=16, extrap_examples=8, extrap_loops=[1, 3],
                   curriculum_steps=5)  # fmt: skip


def tiny_design(**kw) -> LoraStudyDesign:
    base = dict(name="tiny", seeds=(0, 1), spare_seeds=(100,), threshold=0.0, consecutive=1,
                step_cap=20, recipe=TINY_RECIPE, n_examples=48, null_examples=24, n_null=6,
                probe_splits=2, n_bootstrap=10, control_sizes=(1.0,))  # fmt: skip
    return LoraStudyDesign(**{**base, **kw})


def test_design_is_fixed_and_round_trips():
    full = get_design("full")
    assert full.primary == "cka_dh" and len(full.seeds) >= 8 and full.n_null >= 100
    assert set(full.secondary) == set(V1_ENDPOINTS) - {"cka_dh"}
    assert LoraStudyDesign.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    cfg = full.train_config(False, 3)
    assert (cfg.lora, cfg.seed, cfg.steps, cfg.early_stop_acc, cfg.early_stop_patience) == (
        False, 3, full.step_cap, full.threshold, full.consecutive)  # fmt: skip
    assert cfg.name == "study-lora-off-s3" and cfg.readout_rule == STUDY_RECIPE["readout_rule"]
    assert {"full", "quick", "v2"} <= set(DESIGNS)
    with pytest.raises(MythosLensError, match="unknown study design"):
        get_design("huge")


def test_design_v2_is_v1s_recipe_on_fresh_seeds():
    v1, v2 = get_design("full"), get_design("v2")
    assert v2.recipe == v1.recipe and (v2.threshold, v2.consecutive, v2.step_cap) == (
        v1.threshold, v1.consecutive, v1.step_cap)  # fmt: skip
    examined = {*v1.seed_order, *get_design("quick").seed_order}
    assert not examined & set(v2.seed_order) and len(v2.seeds) >= 8
    assert v2.seed_order[:8] == tuple(range(200, 208))
    # the same (arm, seed) trains the same model under either design: v2 may reuse nothing of
    # v1's only because its seeds differ
    assert v2.train_config(True, 200) == v1.train_config(True, 200)


def _fake_trained(path, seed, lora, accs, design):
    """A tiny checkpoint recording `design`'s recipe, with a training history whose held-out
    accuracies are `accs`."""
    tiny_checkpoint(path, lora=lora, seed=seed)
    config = json.loads((path / "config.json").read_text())
    train_config = dataclasses.asdict(design.train_config(lora, seed))
    config.setdefault("metadata", {})["train_config"] = json.loads(json.dumps(train_config))
    (path / "config.json").write_text(json.dumps(config))
    hist = [{"step": 10 * (i + 1), "heldout_acc": {"1": a, "2": a}} for i, a in enumerate(accs)]
    metrics = {"steps": 10 * len(accs), "history": hist,
               "heldout_accuracy": {"1": {"accuracy": accs[-1]}, "2": {"accuracy": accs[-1]}}}  # fmt: skip
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_train_in_order_stops_once_enough_pairs_meet_the_criterion(tmp_path):
    # threshold 1.0 in 8 steps: no pair meets it, so every seed in order is trained
    d = tiny_design(threshold=1.0, step_cap=8, seeds=(0,), spare_seeds=(100,))
    assert train_in_order(d, tmp_path / "a", jobs=2) == []
    assert {p.name for p in (tmp_path / "a").iterdir()} == {
        f"study-lora-{a}-s{s}" for a in ("on", "off") for s in (0, 100)}  # fmt: skip
    # threshold 0: the first pair meets it and the spare is never trained
    assert train_in_order(tiny_design(seeds=(0,)), tmp_path / "b", jobs=2) == [0]
    assert not (tmp_path / "b" / "study-lora-on-s100").exists()
    m = json.loads((tmp_path / "b" / "study-lora-on-s0" / "metrics.json").read_text())
    assert m["peak_rss_mb"] > 50


def test_a_design_without_endpoints_trains_but_refuses_to_measure(tmp_path):
    d = tiny_design(primary=None)
    with pytest.raises(MythosLensError, match="no endpoints fixed"):
        run_lora_study(d, {}, pd.DataFrame(), tmp_path / "out", jobs=1)
    assert not (tmp_path / "out").exists()


def test_worker_errors_reach_the_parent_whole():
    import pickle

    e = pickle.loads(pickle.dumps(MythosLensError("bad thing", "a good one")))
    assert (type(e), str(e), e.what, e.expected) == (
        MythosLensError, "bad thing; expected a good one", "bad thing", "a good one")  # fmt: skip


def test_pairs_missing_the_criterion_are_replaced(tmp_path):
    d = tiny_design(threshold=0.9, consecutive=2, spare_seeds=(100, 101))
    good, bad = [0.5, 0.95, 0.97], [0.95, 0.5, 0.96]  # bad never passes twice in a row
    for seed, on, off in ((0, good, good), (1, good, bad), (100, good, good)):
        _fake_trained(tmp_path / f"study-lora-on-s{seed}", seed, True, on, d)
        _fake_trained(tmp_path / f"study-lora-off-s{seed}", seed, False, off, d)
    paths, pairs = study_models(d, tmp_path, train=False)
    assert sorted({s for _, s in paths}) == [0, 100]
    row = pairs.set_index(["seed", "arm"])
    assert row.loc[(1, "off"), "reached"] == False and row.loc[(1, "on"), "reached"] == True  # noqa: E712
    assert not row.loc[(1, "on"), "used"] and row.loc[(100, "on"), "role"] == "spare"
    assert row.loc[(0, "on"), "reached_step"] == 30
    # a design with another recipe refuses these models instead of measuring them
    with pytest.raises(MythosLensError, match="trained with steps=20"):
        study_models(dataclasses.replace(d, step_cap=30), tmp_path, train=False)
    (tmp_path / "study-lora-on-s100" / "model.safetensors").unlink()
    with pytest.raises(MythosLensError, match="study-lora-on-s100"):
        study_models(d, tmp_path, train=False)


def test_cka_dh_known_answers():
    rng = np.random.default_rng(0)
    h0, v = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    same = np.stack([h0 + (t + 1) * v for t in range(3)])  # every update is the same v
    assert cka_dh(ModelData(h=same, h0=h0, matters=[0, 1, 2])) == pytest.approx(1.0)
    indep = np.cumsum(rng.normal(size=(3, 4000, 6)), 0) + 0  # independent updates
    d = ModelData(h=indep, h0=np.zeros((4000, 6)), matters=[0, 1, 2])
    assert abs(cka_dh(d)) < 0.02
    assert adjacent_pairs([0, 1, 3]) == [(0, 1)]
    assert np.isnan(mean_adjacent_cka(same, []))
    assert np.isnan(cka_dh(ModelData(h=same, h0=h0, matters=[0, 2])))


def test_within_model_nulls(tmp_path):
    on = load_checkpoint(tiny_checkpoint(tmp_path / "on", lora=True))
    off = load_checkpoint(tiny_checkpoint(tmp_path / "off", lora=False))
    task = load_task(tmp_path / "on")
    b = task.generate(24, "heldout", seed=0)
    # LoRA off: every row is zero, so every permutation / mean swap is the identity: effect 0, p 1
    for res in lora_nulls(off, b.input_ids, b.answer, 3, 5, seed=0).values():
        assert res["effect"] == 0.0 and res["p_value"] == 1.0
    a = lora_nulls(on, b.input_ids, b.answer, 3, 5, seed=1)
    again = lora_nulls(on, b.input_ids, b.answer, 3, 5, seed=1)
    assert a == again  # same seed, same null
    assert a["rows_vs_permutations"]["n_null"] == 5 and a["rows_vs_equal_norm"]["effect"] != 0


def test_planted_control_rows_and_size(tmp_path):
    off = load_checkpoint(tiny_checkpoint(tmp_path / "off", lora=False))
    b = load_task(tmp_path / "off").generate(32, "heldout", seed=0)
    d, s = unit_rows(4, 3, "distinct", 0), unit_rows(4, 3, "same", 0)
    assert torch.allclose(d.norm(dim=-1), torch.ones(4, dtype=torch.float64))
    assert (s == s[0]).all() and not (d == d[0]).all()
    for variant in ("distinct", "same"):
        m, achieved = planted_model(off, b.input_ids, n_loops=3, loops=[0, 1, 2],
                                    target_norm=0.5, variant=variant, seed=0)  # fmt: skip
        assert achieved == pytest.approx(0.5, rel=0.05)
        assert off.recurrent.lora.scale.weight.abs().sum() == 0  # the original is untouched


def _endpoints(primary_p, primary_diff, rows_p=0.5, min_p=0.0078):
    rows = []
    for e, (meaning, sign) in ENDPOINTS.items():
        p, diff = (primary_p, primary_diff) if e == "cka_dh" else (rows_p, -0.1)
        rows.append({"endpoint": e, "role": "primary" if e == "cka_dh" else "secondary", "n": 8,
                     "mean_diff": diff, "ci_low": diff - 0.1, "ci_high": diff + 0.1,
                     "p_value": p, "p_holm": p, "min_p": min_p, "hb_low": np.nan,
                     "hb_high": np.nan, "meaning": meaning, "differentiation_sign": sign,
                     "decision": "detected" if p <= 0.05 else "not detected"})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("p, diff, control, expected", [
    (0.01, -0.2, [], "Yes"),
    (0.01, +0.2, [], "No, the opposite"),
    (0.5, -0.01, [(1.0, True)], "Not detected, although the study could see it"),
    (0.5, -0.01, [(1.0, False), (4.0, True)], "only at 4×"),
    (0.5, -0.01, [(1.0, False), (4.0, False)], "Inconclusive"),
    (1.0, -0.2, [(1.0, False)], "Not decidable with 8 seed pairs"),  # min_p 0.5 below
])  # fmt: skip
def test_verdict_rules(p, diff, control, expected):
    ct = pd.DataFrame([{"size": s, "endpoint": "cka_dh", "mean_diff": -0.1, "p_value": 0.01,
                        "detected": det} for s, det in control],
                      columns=["size", "endpoint", "mean_diff", "p_value", "detected"])  # fmt: skip
    pairs = pd.DataFrame({"seed": [0, 0, 9, 9], "used": [True, True, False, False]})
    desc = pd.DataFrame(columns=["measure", "arm", "mean", "ci_low", "ci_high", "n"])
    min_p = 0.5 if "decidable" in expected else 0.0078
    v = lora_verdict(_endpoints(p, diff, min_p=min_p), ct, desc, pairs, get_design("full"))
    assert expected in v["verdict"]
    assert v["replaced_seeds"] == [9] and "replaced" in v["statement"]
    json.dumps(v, allow_nan=False)  # strict JSON


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    d = tiny_design()
    paths, pairs = study_models(d, root / "ck", train=True, jobs=1)
    out = run_lora_study(d, paths, pairs, root / "out", jobs=1, plotlyjs="cdn")
    return d, out


def test_lora_study_end_to_end(tiny_study):
    d, out = tiny_study
    names = {"pairs", "models", "nulls", "loops", "endpoints", "descriptives", "control",
             "control_tests"}  # fmt: skip
    assert {p.stem for p in out.glob("*.csv")} == names
    ep = pd.read_csv(out / "endpoints.csv")
    assert list(ep.endpoint) == list(d.endpoints) and ep.role.iloc[0] == "primary"
    nulls = pd.read_csv(out / "nulls.csv")
    off = nulls[nulls.arm == "off"]
    assert len(off) and (off.effect == 0).all() and (off.p_value == 1).all()
    models = pd.read_csv(out / "models.csv")
    off_use = models[(models.arm == "off") & (models.measure == "delta_acc_lora_removed")]
    assert (off_use.value == 0).all()
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["n_seed_pairs"] <= 2 and verdict["design"] == "tiny"
    assert LoraStudyDesign.from_dict(json.loads((out / "design.json").read_text())) == d
    ctrl = pd.read_csv(out / "control.csv")
    assert set(ctrl.variant) == {"distinct", "same"}
    assert np.allclose(ctrl.delta_norm, ctrl.target_norm, rtol=0.05)
    assert "Verdict" in (out / "report.html").read_text()


def test_design_v2_study_end_to_end(tiny_study, tmp_path):
    """v2 on the same tiny models: functional endpoints, the dose control in the on models,
    per-model classification and the v2 verdict."""
    d, out = tiny_study
    d2 = dataclasses.replace(d, name="tiny-v2", version=2, primary="kl_collapse_identity",
                             endpoints=(*FUNCTIONAL_ENDPOINTS, "cka_h"), control_doses=(0.5,),
                             n_permutations=2)  # fmt: skip
    paths, pairs = study_models(d2, out.parent / "ck", train=False)
    v2 = run_lora_study(d2, paths, pairs, tmp_path / "v2", jobs=1, plotlyjs="cdn")
    models = pd.read_csv(v2 / "models.csv")
    off = models[models.arm == "off"].set_index(["seed", "measure"]).value
    for s in models.seed.unique():  # without LoRA the LoRA interventions are exactly 0
        assert off[(s, "kl_collapse_lora")] == 0 and off[(s, "kl_permute_lora")] == 0
    uses = pd.read_csv(v2 / "uses.csv")
    assert (
        set(uses.arm) == {"on", "off"} and not uses[uses.arm == "off"].uses_loop_specific_lora.any()
    )
    ct = pd.read_csv(v2 / "control_tests.csv")
    assert sorted(ct["size"]) == [0.5, 1.0] and set(ct.endpoint) == {"kl_collapse_identity"}
    ctrl = pd.read_csv(v2 / "control.csv")
    k0 = ctrl[(ctrl.dose == 0) & (ctrl.metric == "output_kl")]
    assert (k0.value == 0).all()  # dose 0 is the base itself
    v = json.loads((v2 / "verdict.json").read_text())
    assert v["design"] == "tiny-v2" and v["uses_loop_specific_lora"]["n"] == len(uses) // 2
    assert v["verdict"].split(":")[0] in {"Inconclusive", "Not decidable with 2 seed pairs"}


def test_lora_study_is_deterministic(tiny_study, tmp_path):
    d, out = tiny_study
    paths, pairs = study_models(d, out.parent / "ck", train=False)
    again = run_lora_study(d, paths, pairs, tmp_path / "again", jobs=1, plotlyjs="cdn")
    for name in ("endpoints", "models", "nulls", "control"):
        pd.testing.assert_frame_equal(pd.read_csv(out / f"{name}.csv"),
                                      pd.read_csv(again / f"{name}.csv"))  # fmt: skip


def test_design_dataclass_has_no_unfixed_field():
    # every field has a default: the design is complete without arguments
    assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(LoraStudyDesign))  # fmt: skip


def _tiny_fixed_point(path, seed=0, readout="act"):
    from mythos_lens.checkpoint import save_checkpoint
    from mythos_lens.model import build_model
    from mythos_lens.readout_rule import set_readout_rule
    from mythos_lens.tasks.registry import get_task
    from mythos_lens.train import TrainConfig, model_config_for

    task = get_task("fixed-point")
    cfg = TrainConfig(dim=32, n_experts=4, expert_dim=16, lora_rank=2, loops=3)
    model = set_readout_rule(build_model(model_config_for(cfg, task), seed=seed), readout)
    meta = {"task": task.spec(), "train_config": {"readout_rule": readout, "eval_loops": 3}}
    save_checkpoint(model, path, metadata=meta)
    return path


def test_hop_evidence_matches_direct_runs(tmp_path):
    from mythos_lens.capture import run
    from mythos_lens.studies.hop_evidence import HOP_EVIDENCE_COLUMNS, hop_evidence

    ck = _tiny_fixed_point(tmp_path / "fp")
    model, task = load_checkpoint(ck), load_task(ck)
    h = hop_evidence(model, task, "fp", n_loops=4, per_depth=16, seed=0, probe_splits=2)
    assert list(h.columns) == list(HOP_EVIDENCE_COLUMNS)
    assert len(h) == task.max_hops * 4
    for d in (1, 3):
        b = task.generate(16, "heldout", seed=d, hops=[d])  # the batch hop_evidence draws
        for t in range(4):
            out = run(model, b.input_ids, n_loops=t + 1)[0][:, -1].argmax(-1)
            hop = torch.as_tensor(task.value_id(b.hop_entities[:, min(t, d - 1)].numpy()))
            row = h[(h.depth == d) & (h.loop == t)].iloc[0]
            assert row.exit_reads_end == pytest.approx(float((out == b.answer).double().mean()))
            assert row.exit_reads_hop == pytest.approx(float((out == hop).double().mean()))
            assert np.isnan(row.attn_reads_pair) == (t >= d)


def test_study_depth_cli(tmp_path):
    from mythos_lens.cli import main

    for s in (0, 1):
        _tiny_fixed_point(tmp_path / ("fp" if s == 0 else f"fp-s{s}"), seed=s)
    _tiny_fixed_point(tmp_path / "last", readout="last")  # its exit lens needs halt_prob
    out = tmp_path / "d"
    code = main(["study", "depth", str(tmp_path / "fp"), str(tmp_path / "fp-s1"),
                 str(tmp_path / "last"), "--out",
                 str(out), "--depth-loops", "1-3", "--depth-examples", "8", "--no-progress",
                 "--plotlyjs", "cdn"])  # fmt: skip
    assert code == 0
    seeds = pd.read_parquet(out / "depth_seeds.parquet")
    assert set(seeds.group) == {"fp", "last"}
    assert (seeds[seeds.group == "fp"].n == 2).all() and (seeds[seeds.group == "last"].n == 1).all()
    two = seeds[seeds.group == "fp"]
    assert (two.ci_low <= two["mean"]).all() and (two["mean"] <= two.ci_high).all()
    marks = pd.read_parquet(out / "depth_marks.parquet")
    assert {"mark", "overthinking", "best"} <= set(marks.columns)
    hops = pd.read_parquet(out / "hop_evidence.parquet")
    assert (
        set(hops.checkpoint) == {"fp", "fp-s1", "last"}
        and hops.loop.max() == task_max(tmp_path) + 1
    )
    rec = pd.read_csv(out / "recipes.csv")
    assert list(rec.readout_rule) == ["act", "act", "last"] and (rec.trained_loops == 3).all()
    assert rec.act_weight_sum.between(0, 3).all() and rec.loops_that_matter.notna().all()
    assert "exit lens reads hop t+1" in (out / "report.html").read_text()


def task_max(tmp_path):
    return load_task(tmp_path / "fp").max_hops
