"""`mythos-lens study lora|depth` on tiny random checkpoints: tables, intervals, verdict, report."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_analyze import _Parser, small_cfg
from tiny_models import tiny_checkpoint

from mythos_lens.cli import main
from mythos_lens.errors import MythosLensError
from mythos_lens.studies.lora import run_lora_study
from mythos_lens.studies.models import reuse_models
from mythos_lens.studies.quantities import QUANTITIES
from mythos_lens.studies.stats import STUDY_COLUMNS, t_interval
from mythos_lens.studies.verdict import lora_verdict


@pytest.fixture(scope="module")
def shipped_like(tmp_path_factory):
    d = tmp_path_factory.mktemp("shipped")
    for seed in (0, 1):
        tail = "" if seed == 0 else f"-s{seed}"
        tiny_checkpoint(d / f"pointer-lora-on{tail}", lora=True, seed=seed)
        tiny_checkpoint(d / f"pointer-lora-off{tail}", lora=False, seed=seed)
    tiny_checkpoint(d / "pointer-lora-on-s2", lora=True, seed=2)  # no off partner: left out
    return d


def test_t_interval():
    m, lo, hi, n = t_interval([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3)
    assert math.isclose(hi - m, 4.302652729911275 * 1 / math.sqrt(3), rel_tol=1e-9)
    assert lo == pytest.approx(2 * m - hi)
    assert np.isnan(t_interval([5.0])[1])
    assert t_interval([0.0, 0.0, float("nan")])[1:] == (0.0, 0.0, 2)


def test_reuse_pairs_seeds(shipped_like):
    paths = reuse_models(shipped_like, None)
    assert sorted(paths) == [("off", 0), ("off", 1), ("on", 0), ("on", 1)]
    with pytest.raises(MythosLensError):
        reuse_models(shipped_like / "nowhere", None)


def test_lora_study(shipped_like, tmp_path):
    paths = reuse_models(shipped_like, None)
    out = run_lora_study(paths, tmp_path / "s", small_cfg(), plotlyjs="cdn")
    study = pd.read_parquet(out / "study.parquet")
    assert list(study.columns) == list(STUDY_COLUMNS)
    assert set(study.arm) == {"on", "off", "on-off"}
    assert set(study.quantity) >= set(QUANTITIES) - {"accuracy"} | {"cka_dh_mean"}
    # on-off is the paired difference of the per-seed values
    r = study[(study.quantity == "cka_dh") & (study.x == 0)].set_index("arm")
    on = np.array(r.loc["on", "values"].split(","), float)
    off = np.array(r.loc["off", "values"].split(","), float)
    assert r.loc["on-off", "mean"] == pytest.approx((on - off).mean(), abs=1e-5)
    assert (study.n <= 2).all()
    off_ab = study[(study.quantity.str.startswith("ablate")) & (study.arm == "off")]
    assert (off_ab["mean"] == 0).all()
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["lora_off_ablation_exactly_zero"] is True
    assert verdict["n_seed_pairs"] == 2 and verdict["overall"]
    text = (out / "report.html").read_text()
    p = _Parser()
    p.feed(text)
    assert p.figures >= 4 and p.summary_items >= 8
    assert "Verdict" in text
    for name in ("cka", "ablation", "probes", "depth"):
        assert (out / "tables" / f"{name}.parquet").is_file()


def test_verdict_follows_the_numbers():
    def rows(q, arm, vals, variant=""):
        m, lo, hi, n = t_interval(vals)
        return {"quantity": q, "variant": variant, "x": -1, "hop": -1, "arm": arm, "n": n,
                "mean": m, "ci_low": lo, "ci_high": hi, "values": ""}  # fmt: skip

    used = [rows("ablate_all_dkl", "on", [0.5, 0.6, 0.7]),
            rows("mean_scale_dkl", "on", [0.1, 0.2, 0.15]),
            rows("cka_dh_mean", "on-off", [-0.2, -0.25, -0.3])]  # fmt: skip
    v = lora_verdict(pd.DataFrame(used), True)
    assert v["lines"]["cka_dh"]["sign"] == -1 and "cka_dh" in v["overall"]
    unused = [rows("ablate_all_dkl", "on", [0.0, 0.01, -0.01])]
    assert v["overall"] != lora_verdict(pd.DataFrame(unused), True)["overall"]
    assert lora_verdict(pd.DataFrame(unused), True)["verdict"].startswith("No detectable")
    assert v["verdict"].startswith("Yes")
    partly = used[:2] + [rows("cka_dh_mean", "on-off", [-0.2, 0.25, 0.0])]
    assert lora_verdict(pd.DataFrame(partly), True)["verdict"].startswith("Partly")


def test_study_depth_cli(shipped_like, tmp_path, capsys):
    out = tmp_path / "d"
    code = main(["study", "depth", str(shipped_like / "pointer-lora-on"),
                 str(shipped_like / "pointer-lora-on-s1"), "--out", str(out),
                 "--depth-loops", "1-3", "--depth-examples", "8", "--no-progress",
                 "--plotlyjs", "cdn"])  # fmt: skip
    assert code == 0
    seeds = pd.read_parquet(out / "depth_seeds.parquet")
    assert set(seeds.group) == {"pointer-lora-on"} and (seeds.n == 2).all()
    marks = pd.read_parquet(out / "depth_marks.parquet")
    assert {"mark", "overthinking", "best"} <= set(marks.columns)
    assert "Depth (pointer-lora-on-s1), 1 hop(s)" in (out / "report.html").read_text()
