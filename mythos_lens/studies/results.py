"""The published results: study outputs copied to ``analyses/results/`` and the README's Results
blocks rendered from those files only (a test re-renders them and compares with README.md).

A README block is the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mythos_lens.atomic import atomic_path
from mythos_lens.errors import MythosLensError

LORA_FILES = ("endpoints.csv", "control_tests.csv", "control.csv", "pairs.csv", "models.csv",
              "descriptives.csv", "loops.csv", "nulls.csv", "verdict.json", "design.json",
              "run.json", "report.html")  # fmt: skip
DEPTH_FILES = ("depth.csv", "depth_marks.csv", "depth_seeds.csv", "hop_evidence.csv",
               "recipes.csv", "run.json", "report.html")  # fmt: skip


def export(lora_dir: str | Path | None, depth_dir: str | Path | None, results: str | Path) -> None:
    """Copy the result files of a LoRA study and a depth study into ``results/lora`` and
    ``results/depth``."""
    for src, sub, files in ((lora_dir, "lora", LORA_FILES), (depth_dir, "depth", DEPTH_FILES)):
        if src is None:
            continue
        dst = Path(results) / sub
        dst.mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (Path(src) / f).is_file():
                raise MythosLensError(f"{Path(src) / f} is missing", f"a complete {sub} study")
            with atomic_path(dst / f) as tmp:
                shutil.copyfile(Path(src) / f, tmp)


def _n(x: float, nd: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _ci(x: float, low: float, high: float) -> str:
    """A signed difference with its interval: ``+0.123 [+0.010, +0.230]``."""
    return f"{_n(x, sign=True)} [{_n(low, sign=True)}, {_n(high, sign=True)}]"


def _p(p: float) -> str:
    return "–" if p is None or not np.isfinite(p) else f"{p:.3g}"


def lora_verdict_block(r: Path) -> str:
    v = json.loads((r / "lora" / "verdict.json").read_text())
    run = json.loads((r / "lora" / "run.json").read_text())
    pr = v["primary"]
    return (f"**Verdict** (`analyses/results/lora/verdict.json`): *{v['verdict']}.*\n\n"
            f"Primary endpoint, fixed in advance — on − off of {pr['meaning']}: "
            f"**{_n(pr['mean_diff'], sign=True)}**, 95 % bootstrap interval over seed pairs "
            f"[{_n(pr['ci_low'], sign=True)}, {_n(pr['ci_high'], sign=True)}], over seeds × "
            f"examples [{_n(pr['hb_low'], sign=True)}, {_n(pr['hb_high'], sign=True)}]; exact "
            f"two-sided sign-flip p = {_p(pr['p_value'])} (n = {pr['n']} seed pairs, smallest "
            f"possible p {_p(pr['min_p'])}): {pr['decision']}.\n\n"
            f"Run: design `{v['design']}`, analysis {run['analysis_seconds']:.0f} s "
            f"({run['jobs']} processes), peak memory {run['peak_rss_mb']:.0f} MB (main) / "
            f"{run['peak_rss_mb_workers']:.0f} MB (largest worker).")  # fmt: skip


def lora_endpoints_block(r: Path) -> str:
    ep = pd.read_csv(r / "lora" / "endpoints.csv")
    desc = pd.read_csv(r / "lora" / "descriptives.csv").set_index(["measure", "arm"])
    lines = ["| endpoint | role | LoRA on | LoRA off | on − off [95 % CI] | p | Holm p | "
             "differentiation sign | decision |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for _, e in ep.iterrows():
        on = desc["mean"].get((e.endpoint, "on"), np.nan)
        off = desc["mean"].get((e.endpoint, "off"), np.nan)
        lines.append(f"| `{e.endpoint}` | {e.role} | {_n(on)} | {_n(off)} | "
                     f"{_ci(e.mean_diff, e.ci_low, e.ci_high)} | {_p(e.p_value)} | "
                     f"{_p(e.p_holm) if e.role == 'secondary' else '(primary)'} | "
                     f"{e.differentiation_sign} | {e.decision} |")  # fmt: skip
    return "\n".join(lines)


def lora_control_block(r: Path) -> str:
    ct = pd.read_csv(r / "lora" / "control_tests.csv")
    lines = ["| planted size (× LoRA's) | endpoint | distinct rows | same row | distinct − same "
             "[95 % CI] | p | detected |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for _, c in ct.iterrows():
        lines.append(f"| {c['size']:g} | `{c.endpoint}` | {_n(c.mean_distinct)} | "
                     f"{_n(c.mean_same)} | {_ci(c.mean_diff, c.get('ci_low'), c.get('ci_high'))} | "
                     f"{_p(c.get('p_value'))} | {'yes' if c.get('detected') is True else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def lora_models_block(r: Path) -> str:
    pairs = pd.read_csv(r / "lora" / "pairs.csv")
    desc = pd.read_csv(r / "lora" / "descriptives.csv").set_index(["measure", "arm"])
    used = pairs[pairs.used]
    replaced = sorted(pairs[~pairs.used].seed.unique().tolist())

    def d(m: str, arm: str, nd: int = 3) -> str:
        if (m, arm) not in desc.index:
            return "–"
        x = desc.loc[(m, arm)]
        return f"{_n(x['mean'], nd)} [{_n(x.ci_low, nd)}, {_n(x.ci_high, nd)}]"

    steps = used.groupby("arm").reached_step.agg(["min", "median", "max"])
    rows = [
        ("seed pairs used", str(used.seed.nunique()), ""),
        ("pairs replaced (missed the stopping criterion)", str(replaced or "none"), ""),
        ("steps to the criterion (min / median / max)",
         *(f"{int(steps.loc[a, 'min'])} / {steps.loc[a, 'median']:.0f} / "
           f"{int(steps.loc[a, 'max'])}" for a in ("on", "off"))),
        ("held-out accuracy (analysis examples)", d("accuracy", "on"), d("accuracy", "off")),
        ("loops that matter (of the loops run)", d("n_matter", "on", 2), d("n_matter", "off", 2)),
        ("Σ ACT weight at the answer (not read: readout last)", d("act_weight_sum", "on"),
         d("act_weight_sum", "off")),
        ("‖LoRA delta‖ at the answer", d("lora_delta_norm", "on"), d("lora_delta_norm", "off")),
        ("log10 KL(model ‖ LoRA removed)", d("log10_kl_lora_removed", "on", 2), "(no LoRA)"),
        ("Δ accuracy, LoRA removed", d("delta_acc_lora_removed", "on"),
         d("delta_acc_lora_removed", "off")),
    ]  # fmt: skip
    lines = ["| | LoRA on | LoRA off |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" if c else f"| {a} | {b} | |" for a, b, c in rows]
    return "\n".join(lines)


def _marked(acc: float, mark: str, over: bool) -> str:
    return f"{acc:.2f}" + ("↑" if mark == "helps" else "") + ("▼" if over else "")


def depth_table_block(r: Path) -> str:
    marks = pd.read_csv(r / "depth" / "depth_marks.csv")
    recipes = pd.read_csv(r / "depth" / "recipes.csv").set_index("checkpoint")
    out = []
    for ck, g in marks.groupby("checkpoint", sort=False):
        rc = recipes.loc[ck]
        loops = sorted(g.n_loops.unique())
        out.append(f"`{ck}` (readout `{rc.readout_rule}`, trained on depth ≤ "
                   f"{rc.trained_depth}, evaluated at {rc.trained_loops} loops; there, loops that "
                   f"matter at the answer: {rc.loops_that_matter or 'none'}, Σ ACT weight "
                   f"{rc.act_weight_sum:.3f}"
                   f"{'' if rc.readout_rule == 'act' else ', not read by this readout'}):\n")  # fmt: skip
        out.append("| depth \\ loops | " + " | ".join(str(n) for n in loops) + " |")
        out.append("|---" * (len(loops) + 1) + "|")
        for hop, gh in g.groupby("hops", sort=True):
            cells = {int(x.n_loops): _marked(x.accuracy, x["mark"] if isinstance(x["mark"], str)
                                             else "", bool(x.overthinking))
                     for _, x in gh.iterrows()}  # fmt: skip
            trained = "" if hop <= rc.trained_depth else " (beyond training)"
            out.append(f"| {hop}{trained} | " + " | ".join(cells[n] for n in loops) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def hop_evidence_block(r: Path, checkpoint: str | None = None) -> str:
    h = pd.read_csv(r / "depth" / "hop_evidence.csv")
    ck = checkpoint or h.checkpoint.iloc[0]
    h = h[h.checkpoint == ck]
    lines = [f"`{ck}`, at loop t < depth (chance {h.chance_exit.iloc[0]:.3f}; exit = a run "
             "stopped after loop t outputs the entity after hop t+1; end = it already outputs "
             "the final answer; attention = the most-attended context pair is hop t+1's; probe "
             "= linear probe on h_t decodes the entity after hop t+1):\n",
             "| depth | loop t | exit reads hop t+1 | exit reads end | attention reads pair | "
             "probe (majority baseline) | ACT weight |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for _, x in h[h.loop < h.depth].iterrows():
        lines.append(f"| {x.depth}{'' if x.trained_depth else '*'} | {x.loop} | "
                     f"{_n(x.exit_reads_hop, 2)} | {_n(x.exit_reads_end, 2)} | "
                     f"{_n(x.attn_reads_pair, 2)} | {_n(x.probe_hop, 2)} "
                     f"({_n(x.probe_majority, 2)}) | "
                     f"{_n(x.act_weight, 3)} |")  # fmt: skip
    lines.append("\n\\* beyond the trained depth.")
    return "\n".join(lines)


def collect_bench_block(r: Path) -> str:
    """``analyses/bench_collect.py``'s figures: tokens/s of 1 vs 2 processes, peak RSS."""
    b = json.loads((r / "collect" / "bench_collect.json").read_text())
    rows = ["| model | instruments | tokens | processes | tokens/s | × of 1 process "
            "| peak RSS per process (MB) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    base = {}
    for s in b["summary"]:
        key = (s["model"], s["instruments"], s["tokens"])
        base.setdefault(key, s["tokens_per_s"])
        rows.append(f"| `{s['model']}` | {'on' if s['instruments'] else 'off'} | {s['tokens']:,} "
                    f"| {s['ranks']} | {s['tokens_per_s']:,.0f} | "
                    f"{s['tokens_per_s'] / base[key]:.2f} | {s['peak_rss_mb']:.0f} |")  # fmt: skip
    before, after = b["load_average_before"][0], b["load_average_after"][0]
    return "\n".join([*rows, "", f"`{b['command']}`, {b['cpus']} CPUs, load average {before:.1f} "
                      f"before and {after:.1f} after (medians of {b['summary'][0]['runs']} "
                      "run(s) per row; one thread per process)."])  # fmt: skip


BLOCKS: dict[str, Callable[[Path], str]] = {
    "lora-verdict": lora_verdict_block,
    "lora-endpoints": lora_endpoints_block,
    "lora-control": lora_control_block,
    "lora-models": lora_models_block,
    "depth-table": depth_table_block,
    "hop-evidence": hop_evidence_block,
    # upstream's ACT readout beside it: what its loops compute and how much of it reaches the coda
    "hop-evidence-act": lambda r: hop_evidence_block(r, "pointer-lora-off"),
    "collect-bench": collect_bench_block,
}
_BLOCK = re.compile(r"<!-- results:([\w-]+) -->\n(.*?)\n<!-- /results:\1 -->", re.S)


def readme_blocks(readme: str) -> dict[str, str]:
    """The results blocks of a README text: ``{name: text}``."""
    return {m.group(1): m.group(2) for m in _BLOCK.finditer(readme)}


def render_readme(readme: str, results: str | Path) -> str:
    """`readme` with every results block re-rendered from the files under `results`."""
    r = Path(results)

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in BLOCKS:
            raise MythosLensError(
                f"README block {name!r} has no renderer", f"one of {list(BLOCKS)}"
            )
        return f"<!-- results:{name} -->\n{BLOCKS[name](r)}\n<!-- /results:{name} -->"

    return _BLOCK.sub(sub, readme)
