"""A third architecture through the same adapter data (issue 13): ALBERT's shared layers."""

from __future__ import annotations

import torch
from transformers import AlbertConfig, AlbertForMaskedLM

from mythos_lens.capture import capture
from mythos_lens.interventions import SkipStep


def albert(layers: int = 4, groups: int = 1) -> AlbertForMaskedLM:
    torch.manual_seed(0)
    cfg = AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_attention_heads=2,
                       intermediate_size=64, num_hidden_layers=layers, num_hidden_groups=groups,
                       inner_group_num=1, max_position_embeddings=64)  # fmt: skip
    return AlbertForMaskedLM(cfg).eval()


def test_every_repeat_of_the_shared_layers_equals_plain_hooks():
    model = albert()
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    outs = []
    handle = model.albert.encoder.albert_layer_groups[0].register_forward_hook(
        lambda mod, args, out: outs.append(out.clone())
    )
    with torch.no_grad():
        ref = model(input_ids=x).logits
    handle.remove()
    tr = capture(model, x)
    assert torch.equal(tr.logits, ref)
    assert tr.steps["repeat"] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    for t, o in enumerate(outs):
        assert torch.equal(tr["repeat_out"][t], o)
    with torch.no_grad():
        assert torch.equal(model.predictions(tr["repeat_out"][-1]), ref)  # the readout
    more = capture(model, x, n_loops=7)  # repeat the shared layers more often
    assert more["repeat_out"].shape[0] == 7 and model.config.num_hidden_layers == 4
    skipped = capture(model, x, interventions=[SkipStep("repeat_out", 2)])
    assert torch.equal(skipped["repeat_out"][2], skipped["repeat_out"][1])


def test_two_groups_are_labelled():
    tr = capture(albert(layers=4, groups=2), torch.randint(0, 64, (1, 5)))
    assert tr.steps["repeat"] == [(0, 0), (0, 1), (1, 2), (1, 3)]
