"""Instruments for looped transformers: tensors in, tidy pandas tables out (no model imports).

- ``probes.lens``: per-loop lenses (readout callables), lens tables, tuned lens.
- ``probes.linear``: sequence-grouped linear probes with control tasks and baselines.
- ``probes.similarity``: linear CKA (biased, debiased, minibatch, streaming), loop × loop.
- ``probes.routing``: router overlap between loops, expert load, co-activation.
- ``probes.convergence``: step norms, successive-lens KL, exits, spectral radius.
- ``probes.lora``: per-loop LoRA scale similarity, delta size, ablation effect tables.
- ``probes.stats``: seed-level tests (sign flip, Holm), bootstraps, nulls, endpoint tables.
- ``probes.plots``: plotly figures built from those tables.

Model-side callables (logit/coda lens, the loop map) live in ``mythos_lens.readouts``.
"""
