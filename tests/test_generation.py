"""Capture while generating (issue 13): prefill and every decode step labelled, every loop step
of every token kept, and the generated ids identical with and without capture."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny_models import make_model

from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from mythos_lens.generation import capture_generate

sys.path.insert(0, str(Path(__file__).parent / "adapters"))
from hrm_models import hrm_model  # noqa: E402


@pytest.mark.parametrize("case", ["gqa_all_loops", "mla_early_exit"])
def test_openmythos_generate_ids_unchanged_and_every_step_kept(case):
    model = make_model(case)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    plain = model.generate(prompt, max_new_tokens=4, n_loops=3, top_k=5)
    torch.manual_seed(0)
    g = capture_generate(model, prompt, max_new_tokens=4, n_loops=3, top_k=5,
                         sites=["resid_post", "attn_pattern"])  # fmt: skip
    assert torch.equal(g.output_ids, plain)  # capture changes no generated id
    assert len(g) == 4
    assert g[0].meta["generation"]["phase"] == "prefill" and g[0]["resid_post"].shape == (
        3,
        2,
        5,
        32,
    )
    for k in range(1, 4):
        step = g[k]
        assert step.meta["generation"] == {"forward": k, "phase": "decode",
                                           "first_position": 5 + k - 1, "positions": 1}  # fmt: skip
        assert step.n_loops == 3 and step["resid_post"].shape == (3, 2, 1, 32)
        assert step["attn_pattern"].shape == (3, 2, 4, 1, 5 + k)  # one query over the cache
        # the decode step's logits pick the next generated token's distribution
        assert step.logits.shape == (2, 1, 64)
    # prefill equals a plain capture of the prompt (the cache only adds keys later)
    ref = capture(model, prompt, n_loops=3, run_all_loops=True)
    torch.testing.assert_close(g[0]["resid_post"], ref["resid_post"], atol=1e-6, rtol=1e-6)


def test_hrm_generate_ids_unchanged_and_labelled():
    model = hrm_model()
    prompt = torch.randint(1, 64, (1, 6), generator=torch.Generator().manual_seed(4))
    plain = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                           max_new_tokens=3, do_sample=False, pad_token_id=0)  # fmt: skip
    g = capture_generate(model, prompt, max_new_tokens=3, sites=["L_out", "H_out"])
    assert torch.equal(g.output_ids, plain)
    assert len(g) == 3 and g.new_ids.shape == (1, 3)
    assert g[1].steps["L"] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert g[2]["L_out"].shape == (6, 1, 1, 32)
    with pytest.raises(MythosLensError, match="configured H_cycles"):
        capture_generate(model, prompt, max_new_tokens=2, n_loops=3)
