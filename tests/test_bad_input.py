"""Hardening (issue 9): every bad input gets one MythosLensError saying what was wrong and what
was expected — never a silent wrong answer. Test names carry the issue's item numbers."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import make_model

from mythos_lens.capture import capture, run
from mythos_lens.checkpoint import load_checkpoint, save_checkpoint
from mythos_lens.errors import MythosLensError
from mythos_lens.inputs import parse_token_ids
from mythos_lens.interventions import (
    AblateLora,
    EditSite,
    ForceExperts,
    FreezeRouter,
    Patch,
    SetLoraScale,
)
from mythos_lens.model import (
    build_model,
    check_n_loops,
    config_from_dict,
    config_to_dict,
    model_bytes,
)
from mythos_lens.model import tiny_config as tiny
from probes.convergence import rho_A
from probes.lora import lora_delta_ratio
from probes.similarity import cka_matrix

# -- 1. interventions aimed at loops that never run -------------------------------------------


@pytest.mark.parametrize(
    "visitor",
    [
        AblateLora(loops=[99]),
        SetLoraScale(loops=[5]),
        Patch("resid_post", 7, torch.zeros(3, 10, 32)),
        ForceExperts(4, torch.zeros(3, 10, 2, dtype=torch.long)),
        FreezeRouter(source_loop=10),
        EditSite("block_out", lambda v, e: v, loops=[6]),
    ],
    ids=repr,
)
def test_01_intervention_beyond_n_loops_raises_before_running(visitor, ids):
    model = make_model("gqa_all_loops")
    with pytest.raises(MythosLensError, match=r"targets loop \d+ but the run has n_loops=4"):
        capture(model, ids, n_loops=4, interventions=[visitor])


def test_01_intervention_after_act_stopped_early_names_the_fix(ids):
    model = make_model("gqa_early_exit")
    ran = capture(model, ids, n_loops=4).n_loops
    assert ran < 4  # upstream's ACT stops this random model early
    with pytest.raises(MythosLensError, match=rf"only {ran} of 4 loops ran.*run_all_loops=True"):
        capture(model, ids, n_loops=4, interventions=[AblateLora(loops=[ran])])
    tr = capture(model, ids, n_loops=4, interventions=[AblateLora(loops=[ran])], run_all_loops=True)
    assert tr.n_loops == 4 and torch.equal(tr["lora_delta"][ran], torch.zeros_like(tr["e"]))


# -- 2. every loop count is validated (upstream reads `n_loops or max_loop_iters`) -------------


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "3", None])
def test_02_loop_counts_are_validated(bad):
    with pytest.raises(MythosLensError, match="n_loops"):
        check_n_loops(bad)


def test_02_depth_accuracy_refuses_zero_loops():
    from mythos_lens.evaluate import depth_accuracy
    from mythos_lens.tasks.registry import get_task
    from mythos_lens.train import TrainConfig, model_config_for

    task = get_task("pointer", n_entities=4, train_hops=1, max_hops=1)
    model = build_model(model_config_for(TrainConfig(dim=32, expert_dim=16), task))
    with pytest.raises(MythosLensError, match="n_loops=0"):
        depth_accuracy(model, task, [1], [0, 1, 2], 4, 0, progress=False)


def test_02_analyze_config_refuses_zero_depth_loops():
    from mythos_lens.analysis.config import AnalyzeConfig

    with pytest.raises(MythosLensError, match="depth_loops entry=0"):
        AnalyzeConfig(depth_loops=[0, 1, 2])
    with pytest.raises(MythosLensError, match="batch_size=0"):
        AnalyzeConfig(batch_size=0)


# -- 3. capture never silently destroys or truncates --------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64, "float16"])
def test_03_store_dtype_must_be_floating(dtype, ids):
    with pytest.raises(MythosLensError, match="store_dtype"):
        capture(make_model("gqa_all_loops"), ids, store_dtype=dtype)


@pytest.mark.parametrize("positions", [[1.5], [True], ["a"], [[0, 1.0]]])
def test_03_positions_must_be_integers(positions, ids):
    with pytest.raises(MythosLensError, match="positions"):
        capture(make_model("gqa_all_loops"), ids, positions=positions)


# -- 4. configs and probes refuse NaN and impossible values ------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    [
        ("act_threshold", float("nan"), "act_threshold=nan"),
        ("act_threshold", 0.0, "act_threshold=0.0"),
        ("rope_theta", -1.0, "rope_theta=-1.0"),
        ("dropout", -0.1, "dropout=-0.1"),
        ("dropout", 1.5, "dropout=1.5"),
        ("prelude_layers", -1, "prelude_layers=-1"),
        ("vocab_size", 10**12, "vocab_size"),
    ],
)
def test_04_config_values_are_validated(field, value, phrase):
    raw = config_to_dict(tiny())
    raw[field] = value
    with pytest.raises(MythosLensError, match=phrase.replace(".", r"\.")):
        config_from_dict(raw)
    with pytest.raises(MythosLensError, match=phrase.replace(".", r"\.")):
        build_model(tiny(**{field: value}))


def test_04_probes_refuse_nan():
    with pytest.raises(MythosLensError, match="NaN"):
        rho_A(torch.tensor([0.5, float("nan")]))
    x = torch.ones(2, 1, 3, 4)
    with pytest.raises(MythosLensError, match="NaN"):
        lora_delta_ratio(x * float("nan"), x)


# -- 9. a checkpoint is checked from its header before anything is allocated --------------------


def _fake_checkpoint(tmp_path, **cfg_overrides):
    model = make_model("gqa_all_loops")
    d = save_checkpoint(model, tmp_path / "ck")
    raw = json.loads((d / "config.json").read_text())
    raw["mythos_config"].update(cfg_overrides)
    (d / "config.json").write_text(json.dumps(raw))
    return d


def test_09_huge_config_is_refused_before_allocating(tmp_path):
    d = _fake_checkpoint(tmp_path, vocab_size=2_000_000, dim=4096, n_heads=32, n_kv_heads=8)
    with pytest.raises(MythosLensError, match=r"needs \d+\.\d+ GiB"):
        load_checkpoint(d)


def test_09_header_mismatch_is_refused_without_allocating(tmp_path):
    # 500k x 512 float32 embedding = 1 GB: a header check must refuse it without building it.
    d = _fake_checkpoint(tmp_path, vocab_size=500_000, dim=512, n_heads=8, n_kv_heads=4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MythosLensError, match=r"tensor '.*' in .* is F32"):
        load_checkpoint(d)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, grown_mb
    (d / "model.safetensors").unlink()
    with pytest.raises(MythosLensError, match="no model.safetensors"):
        load_checkpoint(d)


# -- 10. bf16 weights round-trip ----------------------------------------------------------------


def test_10_bf16_checkpoint_round_trips(tmp_path, ids):
    model = make_model("gqa_all_loops").to(torch.bfloat16)
    d = save_checkpoint(model, tmp_path / "bf16")
    assert json.loads((d / "config.json").read_text())["weights_dtype"] == "bfloat16"
    loaded = load_checkpoint(d)
    for name, p in model.named_parameters():
        assert torch.equal(loaded.get_parameter(name), p.float()), name  # exact upcast
    assert loaded.embed.weight.dtype == torch.float32
    assert torch.isfinite(capture(loaded, ids).logits).all()  # and it runs


def test_10_mixed_dtypes_refused_at_save(tmp_path):
    model = make_model("gqa_all_loops")
    model.recurrent.injection.to(torch.float16)
    with pytest.raises(MythosLensError, match="one floating dtype"):
        save_checkpoint(model, tmp_path / "mixed")


# -- 12. library inputs ----------------------------------------------------------------------


def test_12_sites_of_the_wrong_type(ids):
    with pytest.raises(MythosLensError, match="sites=5"):
        capture(make_model("gqa_all_loops"), ids, sites=5)


def test_12_python_lists_are_accepted_where_tensors_are(ids):
    model = make_model("gqa_all_loops")
    base = capture(model, ids, n_loops=3)
    value = base["resid_post"][1].tolist()
    patched = capture(model, ids, n_loops=3, interventions=[Patch("resid_post", 1, value)])
    assert torch.allclose(patched.logits, base.logits, atol=1e-6)
    forced = base["expert_ids"][2].tolist()
    again = capture(model, ids, n_loops=3, interventions=[ForceExperts(2, forced)])
    assert torch.equal(again["expert_ids"][2], base["expert_ids"][2])
    with pytest.raises(MythosLensError, match="integer ids"):
        ForceExperts(1, [[[0.5, 1.5]]])


def test_12_hook_returning_a_non_tensor(ids):
    with pytest.raises(MythosLensError, match="returned a int"):
        capture(
            make_model("gqa_all_loops"), ids, interventions=[EditSite("block_out", lambda v, e: 3)]
        )


def test_12_patch_position_outside_the_sequence(ids):
    model = make_model("gqa_all_loops")
    with pytest.raises(MythosLensError, match="patch position 50 for a sequence of 10"):
        run(model, ids, n_loops=2, visitors=[Patch("resid_post", 1, torch.zeros(3, 1, 32), [50])])


def test_12_cka_with_an_empty_loop_axis():
    with pytest.raises(MythosLensError, match="shape"):
        cka_matrix(torch.zeros(0, 2, 4, 5))


@pytest.mark.parametrize("n", [np.int64(3), torch.tensor(3), np.array(3)])
def test_12_any_integral_scalar_is_a_loop_count(n, ids):
    model = make_model("gqa_all_loops")
    assert capture(model, ids, n_loops=n).n_loops == 3
    assert run(model, ids, n_loops=n)[1] == 3


# -- property-based: every input either works or raises MythosLensError, never anything else ---

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_token_ids_on_arbitrary_text(text):
    try:
        rows = parse_token_ids(text)
    except MythosLensError:
        return
    assert rows and len({len(r) for r in rows}) == 1
    assert all(isinstance(t, int) and 0 <= t < 2**63 for r in rows for t in r)


@st.composite
def _config_dicts(draw):
    """A valid config with up to three fields replaced (or dropped, or one added)."""
    raw = config_to_dict(tiny())
    values = JSON | st.integers(-3, 300) | st.floats(-1e3, 1e12) | st.sampled_from(["gqa", "mla"])
    changes = draw(st.dictionaries(st.sampled_from([*raw, "extra_field"]), values, max_size=3))
    raw.update(changes)
    if draw(st.booleans()) and draw(st.booleans()):
        raw.pop(draw(st.sampled_from(sorted(raw))))
    return raw


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, _config_dicts()))
def test_config_validation_on_arbitrary_json(raw):
    try:
        cfg = config_from_dict(raw)
    except MythosLensError:
        return
    if model_bytes(cfg) <= 50e6:  # a config that validates builds (when it is small)
        build_model(cfg)


def test_01_transformerlens_hook_at_a_loop_that_does_not_run(ids):
    from mythos_lens.hooked import HookedMythos

    hooked = HookedMythos(make_model("gqa_all_loops"))
    hook = ("recurrent.loop.7.hook_resid_post", lambda v, hook: v * 0)
    with pytest.raises(MythosLensError, match="hook 'recurrent.loop.7.hook_resid_post' targets"):
        hooked.run_with_hooks(ids, n_loops=4, fwd_hooks=[hook])
    hooked.run_with_hooks(ids, n_loops=8, fwd_hooks=[hook])  # reached: fine
    hooked(ids, n_loops=4)  # the targets do not outlive the call
