"""Does loop t do hop t+1 — within and beyond the trained depth? Per depth and loop, three views
of held-out examples run with more loops than any depth needs:

- ``exit_reads_hop``: the output of a run stopped after loop t is the value of the entity after
  hop t+1 (chance: 1 / the number of entities);
- ``attn_reads_pair``: the shared block's attention at the query, at loop t, is highest on the
  key/value pair that hop t+1 must read (best head; chance: about 1 / pairs);
- ``probe_hop``: a linear probe on h_t at the query decodes the entity after hop t+1 (held-out
  folds by sequence; majority baseline beside it).

Loops at or past the depth have no hop left (the fixed point absorbs): their rows read the end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.adapters import adapter_for
from mythos_lens.capture import capture
from probes.attention import pair_mass
from probes.linear import probe_per_loop, summarize

HOP_EVIDENCE_COLUMNS = {
    "checkpoint": "checkpoint name",
    "depth": "depth of the examples (hops from the start to the fixed point)",
    "loop": "loop step t (its hop would be t+1)",
    "trained_depth": "depth <= the largest trained depth",
    "exit_reads_hop": "share of examples whose run stopped after loop t outputs the value of the "
    "entity after hop min(t+1, depth)",
    "exit_reads_end": "share whose run stopped after loop t outputs the final answer (equals "
    "exit_reads_hop once t+1 >= depth)",
    "attn_reads_pair": "share whose most-attended pair at the query (best head) is the pair of "
    "hop t+1 (NaN at loops >= depth: nothing left to read)",
    "probe_hop": "linear-probe accuracy of the entity after hop min(t+1, depth) from h_t",
    "probe_majority": "majority-class baseline of that probe",
    "chance_exit": "1 / entities",
    "act_weight": "mean ACT weight of loop t at the query (its sum over loops: what upstream's coda "
    "reads)",
    "n": "examples",
}


def hop_evidence(
    model: Any, task: Any, name: str, *, n_loops: int, per_depth: int = 256, seed: int = 0,
    probe_splits: int = 4,
) -> pd.DataFrame:  # fmt: skip
    """The table of the module docstring for depths 1 … ``task.max_hops`` at `n_loops` loops.
    Columns: :data:`HOP_EVIDENCE_COLUMNS`."""
    adapter = adapter_for(model)
    state = adapter.roles["state"]
    rows = []
    for d in range(1, task.max_hops + 1):
        b = task.generate(per_depth, "heldout", seed=seed * 1000 + d, hops=[d])
        sites = {state, *adapter.exit_sites, *(s for s in ("attn_pattern", "act_weight")
                                               if s in adapter.sites)}  # fmt: skip
        tr = capture(model, b.input_ids, n_loops=n_loops, run_all_loops=True, sites=sorted(sites))
        ex = adapter.exit_logits(model, tr)[:, :, -1].argmax(-1)  # [loop, B]
        act = tr["act_weight"][:, :, -1].double().mean(1) if "act_weight" in tr else None
        truth = task.pair_truth(b, n_loops) if hasattr(task, "pair_truth") else None
        mass = None
        if truth is not None and "attn_pattern" in tr:
            mass = pair_mass(tr["attn_pattern"], truth["pair_positions"], -1)  # [L, B, H, P]
        hop_cols = torch.clamp(torch.arange(n_loops), max=d - 1)  # hop t+1, capped at the end
        labels = b.hop_entities[:, hop_cols].T  # [loop, B]: entity after hop min(t+1, d)
        probes = summarize(probe_per_loop(tr[state][:, :, -1:], labels.unsqueeze(-1),
                                          n_splits=probe_splits, seed=seed))  # fmt: skip
        for t in range(n_loops):
            want = torch.as_tensor(task.value_id(labels[t].numpy()))
            attn = float("nan")
            if mass is not None and t < d:
                best = mass[t].argmax(-1)  # [B, H]: most-read pair per head
                hit = (best == truth["expected_pair"][t].view(-1, 1)).double().mean(0)
                attn = float(hit.max())
            p = probes[probes["loop"] == t].set_index("metric")["mean"]
            rows.append({"checkpoint": name, "depth": d, "loop": t,
                         "trained_depth": d <= task.train_hops,
                         "exit_reads_hop": float((ex[t] == want).double().mean()),
                         "exit_reads_end": float((ex[t] == b.answer).double().mean()),
                         "attn_reads_pair": attn, "probe_hop": float(p.get("task_acc", np.nan)),
                         "probe_majority": float(p.get("majority_acc", np.nan)),
                         "chance_exit": 1.0 / task.n_entities,
                         "act_weight": float(act[t]) if act is not None else np.nan,
                         "n": per_depth})  # fmt: skip
    return pd.DataFrame(rows, columns=list(HOP_EVIDENCE_COLUMNS))
