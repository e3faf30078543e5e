"""Checkpoints round-trip bit-exactly; bad input raises our one error with a useful message."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import make_model

from mythos_lens.capture import capture
from mythos_lens.checkpoint import load_checkpoint, save_checkpoint
from mythos_lens.errors import MythosLensError
from mythos_lens.model import check_finite_weights, config_from_dict, config_to_dict
from mythos_lens.trace import Trace


@pytest.mark.parametrize("case", ["gqa_early_exit", "mla_all_loops"])
def test_checkpoint_round_trip_bit_exact(case, ids, tmp_path):
    model = make_model(case)
    with torch.no_grad():
        model.recurrent.block.ffn.router_bias.copy_(torch.arange(4.0) / 10)
    save_checkpoint(model, tmp_path / "ck", metadata={"task": "unit"})
    loaded = load_checkpoint(tmp_path / "ck")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.head.weight is loaded.embed.weight
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["metadata"] == {"task": "unit"}
    assert not list((tmp_path / "ck").glob("*.tmp"))
    for f in ("model.safetensors", "config.json"):  # shareable, not mkstemp's 0600
        assert (tmp_path / "ck" / f).stat().st_mode & 0o777 == 0o644


def _saved(tmp_path):
    model = make_model("gqa_all_loops")
    return save_checkpoint(model, tmp_path / "ck")


def test_checkpoint_names_first_mismatch(tmp_path):
    d = _saved(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["recurrent.lora.B"] = torch.zeros(3, 3)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(MythosLensError, match=r"'recurrent.lora.B'.*\(3, 3\)"):
        load_checkpoint(d)
    del tensors["recurrent.lora.B"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(MythosLensError, match="lacks tensor 'recurrent.lora.B'"):
        load_checkpoint(d)


def test_checkpoint_config_validation(tmp_path):
    d = _saved(tmp_path)
    raw = json.loads((d / "config.json").read_text())
    raw["mythos_config"]["dim"] = "wide"
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(MythosLensError, match="'dim'"):
        load_checkpoint(d)
    raw["mythos_config"]["dim"] = 32
    raw["mythos_config"]["bogus"] = 1
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(MythosLensError, match="unknown MythosConfig field"):
        load_checkpoint(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(MythosLensError, match="not valid JSON"):
        load_checkpoint(d)
    (d / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(MythosLensError, match="format"):
        load_checkpoint(d)
    with pytest.raises(MythosLensError, match="no config.json"):
        load_checkpoint(tmp_path / "missing")


def test_checkpoint_rejects_corrupt_and_pickled_weights(tmp_path):
    d = _saved(tmp_path)
    torch.save({"x": torch.zeros(1)}, d / "model.safetensors")  # a pickle in disguise
    with pytest.raises(MythosLensError, match="could not be read"):
        load_checkpoint(d)


def test_config_round_trip_and_checks():
    model = make_model("mla_all_loops")
    raw = config_to_dict(model.cfg)
    assert config_from_dict(raw) == model.cfg
    for field, value, msg in [
        ("attn_type", "xyz", "attn_type"),
        ("n_experts_per_tok", 9, "top-k"),
        ("n_heads", 5, "divisible"),
        ("dim", 40, "loop-embedding"),
    ]:
        bad = dict(raw, **{field: value})
        with pytest.raises(MythosLensError, match=msg):
            config_from_dict(bad)


def test_bad_inputs_raise_one_error(ids):
    model = make_model("gqa_all_loops")
    cases = [
        (dict(input_ids=ids + 64), "token id 126 is outside the vocabulary; expected ids in"),
        (dict(input_ids=ids - 70), "outside the vocabulary"),
        (dict(input_ids=torch.zeros(1, 33, dtype=torch.long)), "exceeds max_seq_len"),
        (dict(input_ids=ids.float()), "integer token ids"),
        (dict(input_ids=ids, n_loops=0), "n_loops=0; expected an integer >= 1"),
        (dict(input_ids=ids, n_loops=2.5), "n_loops"),
        (dict(input_ids=ids, sites=["resid"]), "unknown site 'resid'"),
        (dict(input_ids=ids, positions=[10]), "positions"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(MythosLensError, match=msg):
            capture(model, **kwargs)
    with pytest.raises(MythosLensError, match="expected a looped model with an adapter"):
        capture(torch.nn.Linear(2, 2), ids)


def test_nan_weights_are_named():
    model = make_model("gqa_all_loops")
    check_finite_weights(model)
    with torch.no_grad():
        model.recurrent.injection.B[3] = float("nan")
    with pytest.raises(MythosLensError, match="'recurrent.injection.B' holds 1 NaN"):
        capture(model, torch.zeros(1, 4, dtype=torch.long))


def test_trace_save_load_and_tables(ids, tmp_path):
    model = make_model("gqa_early_exit")
    trace = capture(model, ids, n_loops=4, positions=[2, 5])
    path = trace.save(tmp_path / "t.safetensors")
    back = Trace.load(path)
    assert back.n_loops == trace.n_loops and back.meta == trace.meta
    for name in trace.sites + list(trace.params):
        assert torch.equal(back[name], trace[name]), name
    df = trace.to_frame("expert_ids")
    assert list(df.columns) == ["loop", "batch", "pos", "slot", "value"]
    assert set(df["pos"]) == {2, 5}
    assert len(df) == trace["expert_ids"].numel()
    df.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)
    halt = trace.to_frame("halt_prob")
    row = halt[(halt.loop == 1) & (halt.batch == 2) & (halt.pos == 5)]
    assert row["value"].item() == pytest.approx(trace["halt_prob"][1, 2, 1].item())


def test_parse_token_ids():
    from mythos_lens.inputs import parse_token_ids

    assert parse_token_ids("1 2, 3\n\n4 5 6\n") == [[1, 2, 3], [4, 5, 6]]
    for text, msg in [
        ("1 x 3", "'x' on line 1 is not a token id"),
        ("1 2 3\n1 2", "equal-length lines"),
        ("  \n", "no token ids"),
    ]:
        with pytest.raises(MythosLensError, match=msg):
            parse_token_ids(text)
