"""Copy the study's headline numbers and three small figures into ``analyses/results/``.

Usage (after ``mythos-lens study lora`` and ``mythos-lens study depth``)::

    .venv/bin/python analyses/export_results.py runs/study-lora runs/study-depth

Writes ``lora_similarity.html``, ``lora_ablation.html``, ``depth.html`` (plotly.js from the CDN:
a few KB each), ``study_key.csv``, ``depth_seeds.csv``, ``verdict.json``, and prints the Markdown
table used in README.md's Results section. Everything is read from the studies' tables; nothing is
computed here beyond selecting rows.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from mythos_lens.studies.figures import study_figures

RESULTS = Path(__file__).resolve().parent / "results"

KEY_ROWS = [
    ("ablate_all_dkl", "", "KL(base ‖ LoRA ablated at every loop), nats"),
    ("ablate_all_dacc", "", "Δ accuracy, LoRA ablated at every loop"),
    ("mean_scale_dkl", "", "KL(base ‖ every loop's LoRA scale → mean scale)"),
    ("mean_scale_dacc", "", "Δ accuracy, every loop's scale → mean scale"),
    ("cka_h_mean", "", "mean_t CKA(h_t, h_t+1)"),
    ("cka_dh_mean", "", "mean_t CKA(Δh_t, Δh_t+1)"),
    ("cka_block_out_mean", "", "mean_t CKA(block_out_t, block_out_t+1)"),
    ("router_overlap_excess_mean", "", "mean_t router overlap@k(t, t+1) − k/E"),
    ("loop_id_acc", "resid_post/all", "loop-identity probe on h_t, all channels"),
    ("loop_id_acc", "resid_post/no_loop_emb", "loop-identity probe on h_t, no loop-emb channels"),
    ("loop_id_majority", "resid_post/no_loop_emb", "loop-identity majority baseline"),
]


def _ci(r: pd.Series) -> str:
    if pd.isna(r.ci_low):
        return f"{r['mean']:.3f} (n={int(r.n)})"
    return f"{r['mean']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def markdown_table(study: pd.DataFrame) -> str:
    """Rows of KEY_ROWS: LoRA on, LoRA off, paired on − off (mean [95 % t-interval])."""
    lines = ["| quantity | LoRA on | LoRA off | on − off (paired) |", "|---|---|---|---|"]
    for q, variant, label in KEY_ROWS:
        sub = study[(study.quantity == q) & (study.variant == variant) & (study.x == -1)]
        if sub.empty:
            continue
        by = sub.set_index("arm")
        lines.append(f"| {label} | {_ci(by.loc['on'])} | {_ci(by.loc['off'])} | "
                     f"{_ci(by.loc['on-off'])} |")  # fmt: skip
    return "\n".join(lines)


def main(study_dir: str, depth_dir: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    study = pd.read_parquet(Path(study_dir) / "study.parquet")
    figs = study_figures(study)
    for (_caption, fig), name in zip(figs[:2], ("lora_similarity", "lora_ablation"), strict=True):
        fig.update_layout(template="plotly_white")
        fig.write_html(RESULTS / f"{name}.html", include_plotlyjs="cdn", full_html=True,
                       div_id=name)  # fmt: skip
    keys = {q for q, _, _ in KEY_ROWS}
    study[study.quantity.isin(keys) | (study.quantity.str.startswith("ablate"))].to_csv(
        RESULTS / "study_key.csv", index=False
    )
    shutil.copy(Path(study_dir) / "verdict.json", RESULTS / "verdict.json")
    # depth: the first figure of the depth report is rebuilt from its table
    seeds = pd.read_parquet(Path(depth_dir) / "depth_seeds.parquet")
    seeds.to_csv(RESULTS / "depth_seeds.csv", index=False)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    marks = pd.read_parquet(Path(depth_dir) / "depth_marks.parquet")
    groups = list(dict.fromkeys(seeds.group))
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=groups)
    for i, grp in enumerate(groups, start=1):
        g = seeds[seeds.group == grp]
        grid = g.pivot(index="hops", columns="n_loops", values="mean")
        mk = marks[marks.checkpoint.str.startswith(grp)]
        over = mk.groupby(["hops", "n_loops"])["overthinking"].mean().unstack()
        text = [[f"{grid.iloc[r, c]:.2f}" + ("▼" if over.iloc[r, c] >= 0.5 else "")
                 for c in range(grid.shape[1])] for r in range(grid.shape[0])]  # fmt: skip
        fig.add_trace(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index, zmin=0,
                                 zmax=1, text=text, texttemplate="%{text}",
                                 showscale=i == len(groups)), row=1, col=i)  # fmt: skip
    fig.update_xaxes(title_text="loops at test")
    fig.update_yaxes(title_text="hops", autorange="reversed")
    fig.update_layout(title="Held-out accuracy, hops × loops (▼ = overthinking)", height=420,
                      template="plotly_white")  # fmt: skip
    fig.write_html(RESULTS / "depth.html", include_plotlyjs="cdn", full_html=True, div_id="depth")
    print(markdown_table(study))
    print()
    print(json.loads((RESULTS / "verdict.json").read_text())["overall"])


if __name__ == "__main__":
    main(*sys.argv[1:3])
