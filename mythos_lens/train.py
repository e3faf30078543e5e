"""Train the unmodified upstream ``open_mythos.OpenMythos`` on a ground-truth task.

``train(TrainConfig(...))`` builds the model, trains it on freshly drawn training-split examples
(every batch is new; held-out inputs never occur, see ``mythos_lens.tasks.base.sequence_split``),
evaluates on the held-out split as it goes, and optionally writes a checkpoint (``save_checkpoint``
with the training config and task spec in ``metadata``) plus ``metrics.json``.

Training-recipe choices (the architecture is never changed):

* ``embed_init_std`` (default 1.0): re-draw the tied token embedding from N(0, std²) before training.
  Upstream initialises it at N(0, 0.02); at that scale DESIGN.md §7 found in-context lookup stuck at
  chance. ``None`` keeps upstream's initialisation.
* ``lora=False``: the per-loop LoRA scale ``recurrent.lora.scale.weight`` is zeroed and frozen (with
  LoRA's ``down`` and ``B``), so the LoRA delta ``(down(x) * scale[t]) @ B`` is exactly zero.
* ``act_threshold`` (default 1e9): the cumulative halting probability can never reach it, so every
  loop runs and the coda sees ``sum_t p_t h_t`` over all loops (upstream's ACT weighting).
* ``readout_rule`` (default ``act``): what the coda reads (``last``: the last h_t; ``normalized``:
  the p_t as a distribution; ``mythos_lens.readout_rule``), recorded in the checkpoint.
* ``loops_min``: when set, the loop count of each batch is drawn uniformly from
  ``[loops_min, loops]`` (OpenMythos issue 28: random-loop training extrapolates in depth better).
* ``curriculum_steps``: hop count 1 only until 1-hop held-out accuracy reaches ``curriculum_acc``
  or this many steps pass; then hop counts ``1 … train_hops`` uniformly.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_mythos.main import OpenMythos
from tqdm.auto import tqdm

from mythos_lens.atomic import write_json_atomic
from mythos_lens.checkpoint import save_checkpoint
from mythos_lens.curricula import CURRICULA
from mythos_lens.errors import MythosLensError, check_float, check_int
from mythos_lens.evaluate import extrapolation_table, forward_last, heldout_set, per_hop_accuracy
from mythos_lens.model import build_model, check_device, tiny_config
from mythos_lens.readout_rule import RULES, set_readout_rule
from mythos_lens.tasks.pointer import PointerTask
from mythos_lens.tasks.registry import get_task

METRICS_FILE = "metrics.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Every knob of a training run; stored verbatim in the checkpoint metadata."""

    name: str = "run"
    task: str = "pointer"
    task_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # model (upstream MythosConfig fields; vocab_size and max_seq_len follow the task)
    dim: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    n_experts: int = 4
    n_shared_experts: int = 1
    n_experts_per_tok: int = 2
    expert_dim: int = 32
    lora_rank: int = 4
    prelude_layers: int = 1
    coda_layers: int = 1
    rope_theta: float = 10000.0
    # LoRA scale rows (default `loops`); loops beyond them reuse the last row
    max_loop_iters: int | None = None
    # recurrence
    loops: int = 4
    loops_min: int | None = None
    act_threshold: float = 1e9
    readout_rule: str = "act"  # what the coda reads: act (upstream), last, normalized
    lora: bool = True
    embed_init_std: float | None = 1.0
    # optimisation
    steps: int = 8000
    batch: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_schedule: str = "constant"  # or "cosine" (to min_lr_ratio * lr at the last step)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    curriculum_steps: int = 2000
    curriculum_acc: float = 0.95
    # what each step trains on (mythos_lens.curricula)
    curriculum: str = "hops"  # hops (1 hop first) | length (chain length 2 -> L, fixed-point)
    target: str = "answer"  # answer | hop (the entity reached after n_loops hops)
    function_share: float = 0.0  # length curriculum: share of random-function batches
    loops_slack: int = 2  # length curriculum: loops drawn from [1, max depth so far + slack]
    length_acc: float = 0.9  # length curriculum: accuracy that passes a chain length
    tail: list[list[float]] = field(default_factory=list)  # [[steps, lr_from, lr_to], ...] after
    tail_focus: float = 0.5  # share of full-length batches in the tail phases
    # evaluation
    eval_every: int = 250
    eval_examples: int = 256  # per hop count, during training
    early_stop_acc: float | None = 0.99  # every training hop count >= this ...
    early_stop_patience: int = 2  # ... at this many evaluations in a row
    final_eval_examples: int = 1000  # per hop count
    extrap_examples: int = 256  # per (hop count, loops) cell
    extrap_loops: list[int] | None = None  # default 1 … 2 * loops
    eval_loops: int | None = None  # loop count of held-out evaluation; default `loops`
    eval_seed: int = 1234
    # runtime
    device: str = "cpu"
    dtype: str = "float32"  # "bfloat16" runs the forward under autocast (weights stay float32)
    threads: int | None = None
    progress: bool = True
    out_dir: str | None = None


@dataclass
class TrainResult:
    """What `train` returns: the trained model (eval mode), its task and the metrics dict."""

    model: OpenMythos
    task: PointerTask
    metrics: dict[str, Any]
    out_dir: Path | None


# Presets behind `mythos-lens train --preset NAME`; see data/README.md for the shipped ones.
PRESETS: dict[str, dict[str, Any]] = {
    # Fixed-point chains (implicit depth), the coda reading the last state: chain length grows
    # 2 -> 7, half the batches random functions, each step taught the hop its loop count
    # reaches; then two decaying learning-rate phases. Trained on depths 1-3 with <= 5 loops.
    "fixed-point-last": dict(name="fixed-point-last", task="fixed-point", curriculum="length",
                             target="hop", function_share=0.5, loops_slack=2,
                             readout_rule="last", loops=5, max_loop_iters=5, eval_loops=3,
                             steps=22750, tail=[[3600, 1e-3, 1e-4], [3650, 3e-4, 3e-5]],
                             extrap_loops=list(range(1, 11)), threads=1),
    # The same recipe with upstream's readout (the coda reads the ACT-weighted sum of all h_t):
    # the comparison that shows what ACT does to the loops (data/README.md).
    "fixed-point-act": dict(name="fixed-point-act", task="fixed-point", curriculum="length",
                            target="hop", function_share=0.5, loops_slack=2,
                            readout_rule="act", loops=5, max_loop_iters=5, eval_loops=3,
                            steps=22750, tail=[[3600, 1e-3, 1e-4], [3650, 3e-4, 3e-5]],
                            extrap_loops=list(range(1, 11)), threads=1),
    # Loops drawn per batch from 2 … 6 (evaluated at 4): reached 100/100/99.8 % on 1/2/3 hops in
    # 10k steps and stays flat up to 12 loops (OpenMythos issue 28); see data/README.md.
    "pointer-lora-on": dict(name="pointer-lora-on", lora=True, loops=6, loops_min=2,
                            eval_loops=4, steps=14000, threads=1),
    "pointer-lora-off": dict(name="pointer-lora-off", lora=False, loops=6, loops_min=2,
                             eval_loops=4, steps=14000, threads=1),
    "smoke": dict(name="smoke", steps=60, eval_every=30, final_eval_examples=64,
                  extrap_examples=32, extrap_loops=[1, 4], curriculum_steps=20),
}  # fmt: skip


def preset_config(name: str, /, **overrides: Any) -> TrainConfig:
    """The TrainConfig of preset `name` (seed `s` > 0 appends ``-s<s>`` to the run name)."""
    if name not in PRESETS:
        raise MythosLensError(f"unknown preset {name!r}", f"one of {sorted(PRESETS)}")
    cfg = TrainConfig(**{**PRESETS[name], **overrides})
    if cfg.seed and "name" not in overrides:
        cfg.name = f"{cfg.name}-s{cfg.seed}"
    return cfg


def check_train_config(cfg: TrainConfig) -> None:
    """Raise MythosLensError for a config that cannot train (every field, with its bounds)."""
    ints = {"steps": 1, "batch": 1, "loops": 1, "eval_every": 1, "eval_examples": 1,
            "final_eval_examples": 1, "extrap_examples": 1, "early_stop_patience": 1,
            "warmup_steps": 0, "curriculum_steps": 0, "seed": 0, "eval_seed": 0}  # fmt: skip
    for name, lo in ints.items():
        check_int(name, getattr(cfg, name), lo)
    for name in ("loops_min", "max_loop_iters", "eval_loops", "threads"):
        if getattr(cfg, name) is not None:
            check_int(name, getattr(cfg, name), 1)
    if cfg.loops_min is not None and cfg.loops_min > cfg.loops:
        raise MythosLensError(
            f"loops_min={cfg.loops_min} with loops={cfg.loops}", "1 <= loops_min <= loops"
        )
    check_float("lr", cfg.lr, 0.0, lo_open=True)
    check_float("grad_clip", cfg.grad_clip, 0.0, lo_open=True)
    check_float("act_threshold", cfg.act_threshold, 0.0, lo_open=True)
    check_float("rope_theta", cfg.rope_theta, 0.0, lo_open=True)
    check_float("weight_decay", cfg.weight_decay, 0.0)
    check_float("min_lr_ratio", cfg.min_lr_ratio, 0.0, 1.0)
    check_float("curriculum_acc", cfg.curriculum_acc, 0.0, 1.0)
    if cfg.early_stop_acc is not None:
        check_float("early_stop_acc", cfg.early_stop_acc, 0.0, 1.0)
    if cfg.embed_init_std is not None:
        check_float("embed_init_std", cfg.embed_init_std, 0.0, lo_open=True)
    if cfg.curriculum not in CURRICULA:
        raise MythosLensError(f"curriculum={cfg.curriculum!r}", f"one of {sorted(CURRICULA)}")
    if cfg.target not in ("answer", "hop"):
        raise MythosLensError(f"target={cfg.target!r}", "'answer' or 'hop'")
    check_float("function_share", cfg.function_share, 0.0, 1.0)
    check_float("tail_focus", cfg.tail_focus, 0.0, 1.0)
    check_float("length_acc", cfg.length_acc, 0.0, 1.0)
    check_int("loops_slack", cfg.loops_slack, 0)
    if not isinstance(cfg.tail, list):
        raise MythosLensError(f"tail={cfg.tail!r}", "a list of [steps, lr_from, lr_to]")
    for phase in cfg.tail:
        if not isinstance(phase, (list, tuple)) or len(phase) != 3:
            raise MythosLensError(f"tail phase {phase!r}", "[steps, lr_from, lr_to]")
        check_int("tail steps", phase[0], 1)
        check_float("tail lr", phase[1], 0.0, lo_open=True)
        check_float("tail lr", phase[2], 0.0)
    if cfg.readout_rule not in RULES:
        raise MythosLensError(f"readout_rule={cfg.readout_rule!r}", f"one of {list(RULES)}")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise MythosLensError(f"lr_schedule={cfg.lr_schedule!r}", "'constant' or 'cosine'")
    if cfg.dtype not in DTYPES:
        raise MythosLensError(f"dtype={cfg.dtype!r}", f"one of {sorted(DTYPES)}")
    if not isinstance(cfg.name, str) or not cfg.name or "/" in cfg.name:
        raise MythosLensError(f"name={cfg.name!r}", "a non-empty run name without '/'")
    if not isinstance(cfg.task_params, dict):
        raise MythosLensError(f"task_params={cfg.task_params!r}", "a JSON object of parameters")
    if cfg.extrap_loops is not None:
        if isinstance(cfg.extrap_loops, (str, bytes)) or not cfg.extrap_loops:
            raise MythosLensError(
                f"extrap_loops={cfg.extrap_loops!r}", "a non-empty list of integers >= 1"
            )
        for x in cfg.extrap_loops:
            check_int("extrap_loops entry", x, 1)
    for name in ("lora", "progress"):
        if not isinstance(getattr(cfg, name), bool):
            raise MythosLensError(f"{name}={getattr(cfg, name)!r}", "true or false")
    check_device(cfg.device)


def model_config_for(cfg: TrainConfig, task: PointerTask):
    """The upstream MythosConfig this run trains (GQA; vocabulary and length from the task)."""
    vocab = 8 * math.ceil(task.vocab_size / 8)
    return tiny_config(
        vocab_size=vocab, dim=cfg.dim, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
        max_seq_len=task.seq_len, max_loop_iters=cfg.max_loop_iters or cfg.loops,
        prelude_layers=cfg.prelude_layers, coda_layers=cfg.coda_layers, attn_type="gqa",
        n_experts=cfg.n_experts, n_shared_experts=cfg.n_shared_experts,
        n_experts_per_tok=cfg.n_experts_per_tok, expert_dim=cfg.expert_dim,
        act_threshold=float(cfg.act_threshold), rope_theta=float(cfg.rope_theta),
        lora_rank=cfg.lora_rank, max_output_tokens=1, dropout=0.0,
    )  # fmt: skip


def disable_lora(model: OpenMythos) -> None:
    """Zero and freeze the per-loop LoRA scale (and freeze ``down``/``B``): the delta is exactly 0."""
    lora = model.recurrent.lora
    with torch.no_grad():
        lora.scale.weight.zero_()
    for p in lora.parameters():
        p.requires_grad_(False)


def reinit_embedding(model: OpenMythos, std: float, seed: int) -> None:
    """Re-draw the tied token embedding (= output head) from N(0, std²), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    w = model.embed.weight
    with torch.no_grad():
        w.copy_(torch.randn(w.shape, generator=g) * std)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate at 0-based `step`: warm-up, the main schedule, then the tail phases."""
    if step >= cfg.steps and cfg.tail:
        done = cfg.steps
        for n, lr_from, lr_to in cfg.tail:
            if step < done + n:
                return lr_from + (lr_to - lr_from) * (step - done) / n
            done += n
        return cfg.tail[-1][2]
    return _main_lr(cfg, step)


def _main_lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    )


def train(cfg: TrainConfig) -> TrainResult:
    """Train per `cfg`; write checkpoint + metrics.json to ``cfg.out_dir`` when set.

    Returns the trained model (eval mode, on ``cfg.device``), the task and the metrics dict
    (held-out accuracy per hop with chance beside it, steps, wall time, depth-extrapolation table).
    """
    check_train_config(cfg)
    task = get_task(cfg.task, **cfg.task_params)
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, task)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, task: PointerTask) -> TrainResult:
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    mcfg = model_config_for(cfg, task)
    model = build_model(mcfg, seed=cfg.seed)
    if cfg.embed_init_std is not None:
        reinit_embedding(model, cfg.embed_init_std, seed=cfg.seed + 7919)
    if not cfg.lora:
        disable_lora(model)
    set_readout_rule(model, cfg.readout_rule)  # recorded in the checkpoint, applied on load
    model.to(device).train()
    eval_loops = cfg.eval_loops or cfg.loops
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    rng = np.random.default_rng([cfg.seed, 17])
    train_hops = list(range(1, task.train_hops + 1))
    eval_batch = heldout_set(task, train_hops, cfg.eval_examples, cfg.eval_seed)
    curriculum = CURRICULA[cfg.curriculum](cfg, task)
    history: list[dict[str, Any]] = []
    good_evals = 0
    losses: list[float] = []
    total = cfg.steps + sum(int(p[0]) for p in cfg.tail)
    t0 = time.perf_counter()
    step = 0
    bar = tqdm(total=total, desc=cfg.name, disable=not cfg.progress, dynamic_ncols=True)
    for step in range(1, total + 1):
        curriculum.in_tail = step > cfg.steps
        batch, target, n_loops = curriculum.batch(step, rng)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step - 1)
        logits = forward_last(model, batch.input_ids.to(device), n_loops, cfg.dtype)
        loss = F.cross_entropy(logits, target.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)

        if step % cfg.eval_every == 0 or step == total:
            acc = per_hop_accuracy(model, eval_batch, eval_loops, cfg.dtype)
            rec = {
                "step": step,
                "loss": round(float(np.mean(losses[-cfg.eval_every :])), 5),
                "heldout_acc": {str(h): round(a, 4) for h, a in acc.items()},
                "seconds": round(time.perf_counter() - t0, 1),
            }
            rec.update(curriculum.after_eval(model, step, acc))
            history.append(rec)
            bar.set_postfix(loss=rec["loss"], **{f"h{h}": f"{a:.2f}" for h, a in acc.items()})
            if curriculum.complete and cfg.early_stop_acc is not None:
                good_evals = good_evals + 1 if min(acc.values()) >= cfg.early_stop_acc else 0
                if good_evals >= cfg.early_stop_patience:
                    break
    bar.close()
    train_seconds = time.perf_counter() - t0
    model.eval()

    final_batch = heldout_set(task, train_hops, cfg.final_eval_examples, cfg.eval_seed + 1)
    final_acc = per_hop_accuracy(model, final_batch, eval_loops, cfg.dtype)
    chance = task.chance(final_batch)
    extrap_loops = cfg.extrap_loops or list(range(1, 2 * cfg.loops + 1))
    table = extrapolation_table(
        model, task, extrap_loops, cfg.extrap_examples, cfg.eval_seed + 2, cfg.dtype
    )
    metrics: dict[str, Any] = {
        "name": cfg.name,
        "heldout_accuracy": {
            str(h): {
                "accuracy": round(final_acc[h], 4),
                **{k: round(v, 4) for k, v in chance[h].items()},
            }
            for h in train_hops
        },
        "heldout_examples_per_hop": cfg.final_eval_examples,
        "eval_loops": eval_loops,
        "steps": step,
        **curriculum.summary(),
        "train_seconds": round(train_seconds, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 5),
        "torch_threads": torch.get_num_threads(),
        # of the whole process so far: one model per process gives that model's peak
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "extrapolation": table,
        "history": history,
    }
    out = None
    if cfg.out_dir is not None:
        out = Path(cfg.out_dir)
        meta = {"train_config": dataclasses.asdict(cfg), "task": task.spec()}
        save_checkpoint(model, out, metadata=meta)
        write_json_atomic(out / METRICS_FILE, metrics)
    return TrainResult(model=model, task=task, metrics=metrics, out_dir=out)
