"""Activation patching per loop step (issue 11): batched sweeps, transplants and LoRA
cross-patching, with their known answers."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model, tiny_checkpoint

from mythos_lens.capture import capture, run
from mythos_lens.checkpoint import load_checkpoint
from mythos_lens.interventions import Patch, SetLoraScale
from mythos_lens.patching import SWEEP_SITES, lora_cross_patch, patch_sweep
from probes.patching import patch_effects, sweep_table


@pytest.fixture
def pair(ids):
    corrupt = ids.clone()
    corrupt[:, -1] = (ids[:, -1] + 7) % 64
    return ids, corrupt


@pytest.mark.parametrize("case", ["gqa_all_loops", "mla_early_exit"])
@pytest.mark.parametrize("site", SWEEP_SITES)
def test_self_patching_changes_nothing_exactly(case, site, ids):
    res = patch_sweep(make_model(case), ids, ids, site=site, n_loops=3)
    assert len(res.cells) == 3 * ids.shape[1]
    assert torch.equal(res.patched, res.baseline)


def test_clean_state_everywhere_gives_the_clean_logits(pair):
    clean, corrupt = pair
    model = make_model("gqa_all_loops")
    tr = capture(model, clean, n_loops=4)
    patches = [Patch.from_trace(tr, "e", None)]
    patches += [Patch.from_trace(tr, "resid_post", t) for t in range(4)]
    restored, _ = run(model, corrupt, n_loops=4, visitors=patches)
    assert torch.equal(restored, tr.logits)
    own = capture(model, corrupt, n_loops=4)
    again = capture(model, corrupt, n_loops=4,
                    interventions=[Patch.from_trace(own, "resid_post", 2)])  # fmt: skip
    assert torch.equal(again.logits, own.logits)


def test_sweep_cells_match_single_patches(pair):
    clean, corrupt = pair
    model = make_model("mla_all_loops")
    res = patch_sweep(model, clean, corrupt, n_loops=3, loops=[0, 2], positions=[4, -1])
    assert res.cells.values.tolist() == [[0, 4], [0, 9], [2, 4], [2, 9]]
    tr = capture(model, clean, n_loops=3, run_all_loops=True)
    for c, (t, p) in enumerate(res.cells.itertuples(index=False)):
        single, _ = run(model, corrupt, n_loops=3, run_all_loops=True,
                        visitors=[Patch.from_trace(tr, "resid_post", t, positions=[p])])  # fmt: skip
        torch.testing.assert_close(res.patched[c], single[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.source, tr.logits[:, -1], atol=1e-5, rtol=1e-5)
    eff = patch_effects(res.patched, res.baseline, res.source)
    table = sweep_table(res.cells, eff)
    assert list(table.columns[:2]) == ["loop", "pos"] and (table["n"] == clean.shape[0]).all()


def test_patch_effects_known_answer():
    # vocab of 3; the source prefers token 0, the baseline token 1
    source = torch.tensor([[2.0, 0.0, 0.0]])
    baseline = torch.tensor([[0.0, 2.0, 0.0]])
    patched = torch.tensor([[[1.0, 1.5, 0.0]], [[3.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]]])
    eff = patch_effects(patched, baseline, source)
    # LD = logit[0] - logit[1]: source 2, baseline -2; patched -0.5, 3, -2
    assert eff["logit_diff"].tolist() == [-0.5, 3.0, -2.0]
    assert eff["restored"].tolist() == [0.375, 1.25, 0.0]
    assert eff["flipped"].tolist() == [False, True, False]
    assert eff["delta_kl"].iloc[2] == 0.0 and eff["delta_kl"].iloc[1] < 0


def test_noise_direction_and_transplant(pair):
    clean, corrupt = pair
    model = make_model("gqa_all_loops")
    res = patch_sweep(model, clean, corrupt, n_loops=2, direction="noise", positions=[-1])
    base = capture(model, clean, n_loops=2, run_all_loops=True).logits[:, -1]
    torch.testing.assert_close(res.baseline[0], base, atol=1e-5, rtol=1e-5)
    src = capture(model, corrupt, n_loops=4)
    moved = capture(model, clean, n_loops=4,
                    interventions=[Patch.from_trace(src, "resid_post", 1, to_loop=3)])  # fmt: skip
    assert torch.equal(moved["resid_post"][3], src["resid_post"][1])


def test_lora_cross_patch_identity_is_zero_and_cells_match(ids):
    model = make_model("gqa_all_loops")
    cells, patched, base = lora_cross_patch(model, ids, n_loops=5)
    R = model.recurrent.lora.scale.num_embeddings
    assert len(cells) == 5 * R
    for c, (t, r) in enumerate(cells.itertuples(index=False)):
        if r == min(t, R - 1):
            assert torch.equal(patched[c], base[c])
    c = cells.index[(cells["loop"] == 1) & (cells["row"] == 3)][0]
    table = model.recurrent.lora.scale.weight.detach()
    single, _ = run(model, ids, n_loops=5, run_all_loops=True,
                    visitors=[SetLoraScale([1], table[3].clone())])  # fmt: skip
    torch.testing.assert_close(patched[c], single[:, -1], atol=1e-5, rtol=1e-5)
    assert (patched[c] - base[c]).abs().max() > 1e-3


def test_lora_cross_patch_is_exactly_zero_without_lora(tmp_path, ids):
    model = load_checkpoint(tiny_checkpoint(tmp_path / "off", lora=False))
    cells, patched, base = lora_cross_patch(model, ids % 16, n_loops=4)
    assert torch.equal(patched, base)
