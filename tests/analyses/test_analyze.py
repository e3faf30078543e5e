"""`mythos-lens analyze`: tables with documented columns, a report that parses, atomic output,
bounded memory, determinism."""

import html.parser
import tracemalloc

import pandas as pd
import pytest
import torch

from mythos_lens.analysis import run as analysis_run
from mythos_lens.analysis.columns import TABLE_COLUMNS
from mythos_lens.analysis.config import AnalyzeConfig, task_inputs
from mythos_lens.analysis.run import analyze, analyze_model
from mythos_lens.analysis.summary import depth_marks, depth_statements
from mythos_lens.checkpoint import load_checkpoint, load_task
from mythos_lens.cli import main
from mythos_lens.errors import MythosLensError


def small_cfg(**kw):
    base = dict(n_examples=24, batch_size=12, probe_examples=24, probe_splits=3,
                depth_loops=[1, 3], depth_examples=8, spectral_examples=1, spectral_iters=4,
                progress=False)  # fmt: skip
    return AnalyzeConfig(**{**base, **kw})


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.figures, self.plots, self.summary_items, self.stack = 0, 0, 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figures += 1
        if tag == "div" and (a.get("id") or "").startswith("fig-"):
            self.plots += 1
        if tag == "section":
            self.stack.append(a.get("id"))
        if tag == "li" and self.stack and self.stack[-1] == "summary":
            self.summary_items += 1

    def handle_endtag(self, tag):
        if tag == "section" and self.stack:
            self.stack.pop()


@pytest.fixture(scope="module")
def result(tiny_ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "out"
    torch.set_num_threads(1)
    analyze(list(tiny_ckpts), out, small_cfg(), plotlyjs="cdn")
    return out


def test_every_table_with_documented_columns(result):
    for name, cols in TABLE_COLUMNS.items():
        pq = pd.read_parquet(result / f"{name}.parquet")
        csv = pd.read_csv(result / f"{name}.csv")
        assert list(pq.columns) == list(cols), name
        assert list(csv.columns) == list(cols), name
        assert len(pq) > 0 and len(csv) == len(pq), name
        assert set(pq["checkpoint"]) == {"tiny-on", "tiny-off"}, name


def test_lora_off_ablation_is_exactly_zero_and_on_is_not(result):
    ab = pd.read_parquet(result / "ablation.parquet")
    off = ab[(ab.checkpoint == "tiny-off") & ab.metric.isin(["kl", "top1_changed", "delta_acc"])]
    assert (off["value"] == 0).all()
    on = ab[(ab.checkpoint == "tiny-on") & (ab.metric == "kl")]
    assert (on["value"] > 0).any()
    cos = pd.read_parquet(result / "lora_cosine.parquet")
    assert cos[cos.checkpoint == "tiny-off"]["value"].isna().all()


def test_baselines_beside_every_probe_number(result):
    pr = pd.read_parquet(result / "probes.parquet")
    for _, g in pr.groupby(["checkpoint", "probe", "site", "channels", "loop"]):
        assert {"task_acc", "control_acc", "majority_acc", "selectivity"} <= set(g.metric)
    li = pr[(pr.probe == "loop_index") & (pr.metric == "majority_acc")]
    assert li["mean"].between(0, 1).all()
    ro = pd.read_parquet(result / "router.parquet")
    assert (ro[ro.metric == "overlap_at_k"]["random_baseline"] == 0.5).all()  # k/E = 2/4


def test_report_parses_with_figures_and_summary(result):
    text = (result / "report.html").read_text()
    p = _Parser()
    p.feed(text)
    assert p.figures >= 8 and p.plots == p.figures
    assert p.summary_items >= 10
    assert "Loop-identity probe" in text and "Ablating LoRA" in text
    assert "exactly zero, as it must be without LoRA" in text
    assert text.count("cdn.plot.ly") == 1


def test_interrupted_run_leaves_no_partial_output(tiny_ckpts, tmp_path, monkeypatch):
    calls = []

    def boom(i):
        calls.append(i)
        if i == 1:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        analyze([tiny_ckpts[0]], out, small_cfg(), on_batch=boom)
    assert calls == [0, 1]
    assert list(tmp_path.iterdir()) == []
    # a failure while writing (after every table is computed) cleans up too
    monkeypatch.setattr(analysis_run, "build_report", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        analyze([tiny_ckpts[0]], out, small_cfg())
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tiny_ckpts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MythosLensError, match="exists"):
        analyze([tiny_ckpts[0]], out, small_cfg())


def test_same_seed_identical_tables(tiny_ckpts, tmp_path):
    for d in ("a", "b"):
        analyze([tiny_ckpts[0]], tmp_path / d, small_cfg(seed=3), plotlyjs="cdn")
    for name in TABLE_COLUMNS:
        a = pd.read_parquet(tmp_path / "a" / f"{name}.parquet")
        b = pd.read_parquet(tmp_path / "b" / f"{name}.parquet")
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert (tmp_path / "a" / f"{name}.csv").read_bytes() == (
            tmp_path / "b" / f"{name}.csv"
        ).read_bytes()


def test_bounded_memory(tiny_ckpts):
    """10x more inputs: Python/numpy peak (tracemalloc) and the tensors kept across batches
    (retained_bytes) do not grow with the number of inputs."""
    model = load_checkpoint(tiny_ckpts[0])
    task = load_task(tiny_ckpts[0])
    peaks, kept = [], []
    for n in (24, 240):
        cfg = small_cfg(n_examples=n, probe_examples=12)
        inputs = task_inputs(task, n, 0, None)
        tracemalloc.start()
        tables = analyze_model(model, inputs, cfg, "m")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        kept.append(int(tables["_meta"]["retained_bytes"].iloc[0]))
        assert int(tables["_meta"]["n_examples"].iloc[0]) == n
    assert kept[0] == kept[1]
    assert peaks[1] < 2 * peaks[0], peaks


def test_cli_analyze_and_ids_file(tiny_ckpts, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    task = load_task(tiny_ckpts[0])
    batch = task.generate(12, "heldout", seed=1)
    ids.write_text("\n".join(" ".join(map(str, r.tolist())) for r in batch.input_ids))
    code = main(["analyze", str(tiny_ckpts[0]), "--out", str(tmp_path / "o"), "--ids", str(ids),
                 "--batch-size", "6", "--probe-examples", "12", "--no-progress",
                 "--plotlyjs", "cdn"])  # fmt: skip
    assert code == 0
    assert "report" in capsys.readouterr().out
    assert len(pd.read_parquet(tmp_path / "o" / "accuracy.parquet")) == 0  # no labels
    assert len(pd.read_parquet(tmp_path / "o" / "cka.parquet")) > 0
    assert main(["analyze", str(tiny_ckpts[0]), "--out", str(tmp_path / "o")]) == 2  # exists


def test_depth_marks_help_and_overthinking():
    d = pd.DataFrame({"checkpoint": "m", "hops": 1, "n_loops": [1, 2, 3, 4], "n": 400,
                      "accuracy": [0.2, 0.9, 0.92, 0.5]})  # fmt: skip
    m = depth_marks(d)
    assert m["mark"].tolist() == ["", "helps", "flat", "hurts"]
    assert m["overthinking"].tolist() == [False, False, False, True]
    assert "overthinking" in depth_statements(d)[0]


def test_analyze_a_checkpoint_whose_coda_reads_the_last_state(tiny_ckpts, tmp_path):
    from mythos_lens.capture import run
    from mythos_lens.checkpoint import read_config, save_checkpoint
    from mythos_lens.readout_rule import set_readout_rule

    model = set_readout_rule(load_checkpoint(tiny_ckpts[0]), "last")
    save_checkpoint(model, tmp_path / "last", metadata=read_config(tiny_ckpts[0])["metadata"])
    code = main(["analyze", str(tmp_path / "last"), "--out", str(tmp_path / "o"), "-n", "24",
                 "--probe-examples", "24", "--no-progress", "--plotlyjs", "cdn"])  # fmt: skip
    assert code == 0  # the exit lens of this readout needs halt_prob: captured
    eff = pd.read_parquet(tmp_path / "o" / "effective_depth.parquet").sort_values("loop")
    last = eff.iloc[-1]
    assert last.kl_full_exit == pytest.approx(0.0, abs=1e-6) and last.same_top1 == 1.0
    # stopping after loop t is a real (t+1)-loop run of this readout, on the same 24 inputs
    batch = task_inputs(load_task(tmp_path / "last"), 24, 0, None).batch
    for t, row in enumerate(eff.itertuples()):
        out = run(load_checkpoint(tmp_path / "last"), batch.input_ids, n_loops=t + 1)[0][:, -1]
        assert row.exit_accuracy == float((out.argmax(-1) == batch.answer).double().mean())
