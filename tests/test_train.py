"""Training: LoRA off is exactly zero, loss falls, runs reproduce, checkpoints and shipped models."""

import json
from pathlib import Path

import pytest
import torch

from mythos_lens.checkpoint import load_checkpoint, read_config
from mythos_lens.cli import main
from mythos_lens.errors import MythosLensError
from mythos_lens.evaluate import heldout_set, per_hop_accuracy
from mythos_lens.tasks import task_from_spec
from mythos_lens.train import TrainConfig, disable_lora, preset_config, train

DATA = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
REQUIRED = ["pointer-lora-on", "pointer-lora-off"]
# every shipped checkpoint, the LoRA study's (one folder down) included
SHIPPED = sorted(set(REQUIRED) | {str(p.parent.relative_to(DATA)) for p in
                                  [*DATA.glob("*/config.json"), *DATA.glob("*/*/config.json")]})  # fmt: skip

# A fast run: small model, few steps, small evaluations.
FAST = dict(
    dim=32, steps=40, batch=32, threads=1, eval_every=20, eval_examples=32, final_eval_examples=32,
    extrap_examples=16, extrap_loops=[1, 2], loops=2, curriculum_steps=0, progress=False,
)  # fmt: skip


def test_lora_off_delta_is_exactly_zero_after_training():
    result = train(TrainConfig(lora=False, **FAST))
    lora = result.model.recurrent.lora
    assert torch.equal(lora.scale.weight, torch.zeros_like(lora.scale.weight))
    assert not any(p.requires_grad for p in lora.parameters())
    x = torch.randn(3, 5, 32) * 10
    for t in range(6):  # including loops beyond max_loop_iters (reuse the last row)
        assert torch.equal(lora(x, t), torch.zeros_like(x))


def test_lora_on_trains_the_scale():
    from mythos_lens.model import build_model
    from mythos_lens.tasks import get_task
    from mythos_lens.train import model_config_for

    cfg = TrainConfig(lora=True, **FAST)
    before = build_model(model_config_for(cfg, get_task("pointer")), seed=0)
    after = train(cfg).model
    assert after.recurrent.lora.scale.weight.requires_grad
    assert not torch.equal(before.recurrent.lora.scale.weight, after.recurrent.lora.scale.weight)


def test_disable_lora_on_a_nonzero_scale():
    from mythos_lens.model import build_model, tiny_config

    model = build_model(tiny_config(), seed=1)
    x = torch.randn(2, 4, 32)
    assert model.recurrent.lora(x, 0).abs().sum() > 0
    disable_lora(model)
    assert torch.equal(model.recurrent.lora(x, 0), torch.zeros_like(x))


def test_bfloat16_autocast_runs_with_float32_weights():
    result = train(TrainConfig(dtype="bfloat16", **{**FAST, "steps": 4, "eval_every": 2}))
    assert result.model.embed.weight.dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert len(result.metrics["history"]) == 2


def test_tiny_training_lowers_the_loss():
    cfg = TrainConfig(**{**FAST, "steps": 120, "eval_every": 40})
    hist = train(cfg).metrics["history"]
    assert len(hist) == 3
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]


def test_same_seed_reproduces_and_checkpoint_is_complete(tmp_path):
    a = train(TrainConfig(seed=5, out_dir=str(tmp_path / "a"), **FAST))
    b = train(TrainConfig(seed=5, **FAST))
    c = train(TrainConfig(seed=6, **FAST))
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embed.weight"], sc["embed.weight"])
    raw = read_config(tmp_path / "a")
    assert raw["metadata"]["train_config"]["seed"] == 5
    assert task_from_spec(raw["metadata"]["task"]).spec() == a.task.spec()
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert set(metrics["heldout_accuracy"]) == {"1", "2", "3"}
    assert {"accuracy", "uniform", "ignore_start"} <= set(metrics["heldout_accuracy"]["1"])
    table = metrics["extrapolation"]["accuracy"]
    assert set(table) == {str(h) for h in range(1, 7)} and set(table["1"]) == {"1", "2"}
    loaded = load_checkpoint(tmp_path / "a")
    sl = loaded.state_dict()
    assert all(torch.equal(sa[k], sl[k]) for k in sa)


def test_cli_train_smoke(tmp_path, capsys):
    rc = main(["train", "--preset", "smoke", "--set", json.dumps({"dim": 32, "loops": 2}),
               "--steps", "10", "--lora", "off", "--threads", "1", "--out", str(tmp_path / "s"),
               "--no-progress"])  # fmt: skip
    assert rc == 0
    assert "held-out accuracy" in capsys.readouterr().out
    assert read_config(tmp_path / "s")["metadata"]["train_config"]["lora"] is False
    assert main(["train", "--preset", "nope"]) == 2
    assert main(["train", "--set", '{"colour": 1}']) == 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"steps": 0},
        {"loops": 0},
        {"loops": 4, "loops_min": 5},
        {"lr": -1.0},
        {"lr_schedule": "linear"},
        {"dtype": "float16"},
        {"device": "tpu9"},
        {"task": "nope"},
        {"task_params": {"train_hops": 0}},
        {"extrap_loops": []},
        {"embed_init_std": 0.0},
    ],
)
def test_bad_train_config_raises(overrides):
    with pytest.raises(MythosLensError, match="expected"):
        train(TrainConfig(**{**FAST, **overrides}))


def test_unknown_preset_raises():
    with pytest.raises(MythosLensError, match="unknown preset"):
        preset_config("nope")
    assert preset_config("pointer-lora-on", seed=2).name == "pointer-lora-on-s2"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reaches_recorded_accuracy(name):
    directory = DATA / name
    model = load_checkpoint(directory)
    meta = read_config(directory)["metadata"]
    metrics = json.loads((directory / "metrics.json").read_text())
    task = task_from_spec(meta["task"])
    cfg = meta["train_config"]
    if not cfg["lora"]:
        assert torch.equal(
            model.recurrent.lora.scale.weight, torch.zeros_like(model.recurrent.lora.scale.weight)
        )
    hops = list(range(1, task.train_hops + 1))
    fresh = heldout_set(task, hops, 150, seed=98765)  # a seed training and metrics never used
    assert task.in_heldout(fresh.input_ids).all()
    acc = per_hop_accuracy(model, fresh, metrics["eval_loops"])
    for h in hops:
        recorded = metrics["heldout_accuracy"][str(h)]["accuracy"]
        if name in REQUIRED:  # the app's default models must be good at the task
            assert recorded >= 0.9
        assert abs(acc[h] - recorded) < 0.06, (h, acc[h], recorded)
