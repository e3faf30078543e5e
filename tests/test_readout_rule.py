"""Readout rules (issue 12): what the coda reads is a recipe choice, applied by hooks wherever the
model runs, recorded in the checkpoint, and respected by the exit lens."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model

from mythos_lens.adapters.openmythos import exit_logits
from mythos_lens.capture import capture, run
from mythos_lens.checkpoint import load_checkpoint, save_checkpoint
from mythos_lens.errors import MythosLensError
from mythos_lens.interventions import Patch
from mythos_lens.readout_rule import readout_rule_of, set_readout_rule
from mythos_lens.readouts import coda_lens


@pytest.mark.parametrize("rule", ["last", "normalized"])
def test_rules_apply_everywhere_and_exit_lens_stays_exact(rule, ids, tmp_path):
    model = set_readout_rule(make_model("gqa_all_loops"), rule)
    with torch.no_grad():
        plain = model(ids, n_loops=5)
    tr = capture(model, ids, n_loops=5)
    assert torch.equal(tr.logits, plain)
    h, p = tr["resid_post"], tr["halt_prob"]
    want = h[-1] if rule == "last" else (p.unsqueeze(-1) * h).sum(0) / p.sum(0).unsqueeze(-1)
    torch.testing.assert_close(tr["act_out"], want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(coda_lens(model)(tr["act_out"]), tr.logits, atol=1e-5, rtol=1e-5)
    ex = exit_logits(model, tr)
    for t in range(5):
        assert torch.equal(ex[t], run(model, ids, n_loops=t + 1)[0])  # a real stopped run
    save_checkpoint(model, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    assert readout_rule_of(loaded) == rule and torch.equal(
        capture(loaded, ids, n_loops=5).logits, plain
    )
    assert capture(loaded, ids, n_loops=5).meta["readout_rule"] == rule


def test_rule_reads_edited_states(ids):
    model = set_readout_rule(make_model("mla_all_loops"), "last")
    zero = torch.zeros(3, 10, 32)
    tr = capture(model, ids, n_loops=3, interventions=[Patch("resid_post", 2, zero)])
    assert torch.equal(tr["act_out"], zero)  # the coda reads the patched last state
    assert torch.equal(tr.logits, coda_lens(model)(zero))


def test_act_removes_the_rule_and_bad_rules_are_refused(ids):
    model = make_model("gqa_all_loops")
    with torch.no_grad():
        base = model(ids, n_loops=3)
    set_readout_rule(model, "last")
    set_readout_rule(model, "act")
    with torch.no_grad():
        assert torch.equal(model(ids, n_loops=3), base)
    assert readout_rule_of(model) == "act"
    with pytest.raises(MythosLensError, match="readout rule 'first'"):
        set_readout_rule(model, "first")
    with pytest.raises(MythosLensError, match="act_threshold out of reach"):
        set_readout_rule(make_model("gqa_early_exit"), "last")
