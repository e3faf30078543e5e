"""What mythos-lens knows about the upstream OpenMythos model: config, construction, validation."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch
from open_mythos.main import MythosConfig, OpenMythos

from mythos_lens.errors import MythosLensError, check_float, check_int

UPSTREAM_VERSION = "0.5.0"

# Field name -> python type, read from the upstream dataclass so a new upstream field is never missed.
CONFIG_FIELDS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(MythosConfig)}


def config_to_dict(cfg: MythosConfig) -> dict[str, Any]:
    """All MythosConfig fields as a JSON-ready dict."""
    return dataclasses.asdict(cfg)


def config_from_dict(raw: dict[str, Any]) -> MythosConfig:
    """Validate a JSON dict of MythosConfig fields and build the config.

    Unknown fields, missing fields, wrong types and impossible combinations raise MythosLensError.
    """
    if not isinstance(raw, dict):
        raise MythosLensError(f"model config is a {type(raw).__name__}", "a JSON object of fields")
    unknown = sorted(set(raw) - set(CONFIG_FIELDS))
    if unknown:
        raise MythosLensError(
            f"unknown MythosConfig field(s) {unknown}", f"only {sorted(CONFIG_FIELDS)}"
        )
    missing = sorted(set(CONFIG_FIELDS) - set(raw))
    if missing:
        raise MythosLensError(f"missing MythosConfig field(s) {missing}", "every field present")
    values: dict[str, Any] = {}
    for name, typ in CONFIG_FIELDS.items():
        v = raw[name]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            try:
                v = float(v)
            except OverflowError:
                raise MythosLensError(f"config field {name!r} is {v}", "a finite number") from None
        if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
            raise MythosLensError(
                f"config field {name!r} is {v!r} ({type(v).__name__})", f"a {typ.__name__}"
            )
        values[name] = v
    cfg = MythosConfig(**values)
    check_config(cfg)
    return cfg


def check_config(cfg: MythosConfig) -> None:
    """Raise MythosLensError for a config upstream would build wrongly or fail on later."""
    positive = [
        "vocab_size", "dim", "n_heads", "n_kv_heads", "max_seq_len", "max_loop_iters",
        "n_experts", "n_experts_per_tok", "expert_dim", "lora_rank", "max_output_tokens",
    ]  # fmt: skip
    if cfg.attn_type == "mla":
        positive += ["kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
                     "v_head_dim"]  # fmt: skip
    most = 2**31 - 1  # a tensor dimension; larger is a typo, not a model
    for name in positive:
        check_int(f"config {name}", getattr(cfg, name), 1, most)
    for name in ("prelude_layers", "coda_layers", "n_shared_experts"):
        check_int(f"config {name}", getattr(cfg, name), 0, most)
    # act_threshold may be huge (1e9: nothing halts) but must be a positive finite number.
    check_float("config act_threshold", cfg.act_threshold, 0.0, lo_open=True)
    check_float("config rope_theta", cfg.rope_theta, 0.0, lo_open=True)
    check_float("config dropout", cfg.dropout, 0.0, 1.0)
    if cfg.dropout == 1.0:
        raise MythosLensError("config dropout=1.0", "a dropout probability in [0, 1)")
    if cfg.attn_type not in ("gqa", "mla"):
        raise MythosLensError(f"config attn_type={cfg.attn_type!r}", "'gqa' or 'mla'")
    if cfg.dim % cfg.n_heads:
        raise MythosLensError(
            f"dim={cfg.dim} with n_heads={cfg.n_heads}", "dim divisible by n_heads"
        )
    if cfg.attn_type == "gqa" and cfg.n_heads % cfg.n_kv_heads:
        raise MythosLensError(
            f"n_heads={cfg.n_heads} with n_kv_heads={cfg.n_kv_heads}",
            "n_heads divisible by n_kv_heads",
        )
    if cfg.attn_type == "gqa" and (cfg.dim // cfg.n_heads) % 2:
        raise MythosLensError(
            f"head dim {cfg.dim // cfg.n_heads} (dim {cfg.dim} / n_heads {cfg.n_heads}) is odd",
            "an even head dim (RoPE rotates channel pairs)",
        )
    if cfg.attn_type == "mla" and cfg.qk_rope_head_dim % 2:
        raise MythosLensError(
            f"qk_rope_head_dim={cfg.qk_rope_head_dim} is odd", "an even RoPE width"
        )
    if cfg.n_experts_per_tok > cfg.n_experts:
        raise MythosLensError(
            f"n_experts_per_tok={cfg.n_experts_per_tok} > n_experts={cfg.n_experts}",
            "top-k no larger than the number of routed experts",
        )
    if (cfg.dim // 8) % 2:
        raise MythosLensError(
            f"dim={cfg.dim} gives an odd loop-embedding width dim//8={cfg.dim // 8}",
            "dim // 8 even (upstream's loop_index_embedding needs it)",
        )


def check_n_loops(n_loops: Any, model: OpenMythos | None = None) -> int:
    """A loop count: any integral scalar >= 1 (Python, numpy or 0-d tensor). ``None`` means the
    model's ``max_loop_iters`` (what upstream does with ``n_loops=None``); upstream reads
    ``n_loops or max_loop_iters``, so 0 must never reach it — it is refused here."""
    if n_loops is None:
        if model is None:
            raise MythosLensError("n_loops=None without a model", "an integer >= 1")
        return model.cfg.max_loop_iters
    return check_int("n_loops", n_loops, 1)


def check_device(device: Any) -> torch.device:
    """A torch device that exists on this machine ('cpu', 'cuda', 'cuda:1', 'mps', ...)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MythosLensError(
            f"device={device!r}", "a torch device such as 'cpu' or 'cuda'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MythosLensError(f"device={device!r} but CUDA is not available here", "'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MythosLensError(
                f"device={device!r}", f"a CUDA index < {torch.cuda.device_count()}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise MythosLensError(f"device={device!r} but MPS is not available here", "'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise MythosLensError(f"device={device!r}", "'cpu', 'cuda' or 'mps'")
    return dev


def build_model(cfg: MythosConfig, seed: int = 0) -> OpenMythos:
    """A freshly initialised upstream OpenMythos, reproducible from `seed`, in eval mode."""
    check_config(cfg)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = OpenMythos(cfg)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()


def model_skeleton(cfg: MythosConfig) -> OpenMythos:
    """An OpenMythos of `cfg` on the meta device: every shape, no memory (for checks before
    anything is allocated)."""
    check_config(cfg)
    try:
        with torch.device("meta"):
            return OpenMythos(cfg)
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise MythosLensError(
            f"config cannot be built ({exc})", "a buildable MythosConfig"
        ) from None


def model_bytes(cfg: MythosConfig) -> int:
    """Bytes of every parameter and buffer of a float32 OpenMythos of `cfg` (RoPE tables
    included), computed without allocating."""
    m = model_skeleton(cfg)
    return sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))


def tiny_config(**overrides: Any) -> MythosConfig:
    """A small config for tests and demos (all loops fit in milliseconds on a CPU)."""
    base = dict(
        vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=32, max_loop_iters=4,
        prelude_layers=1, coda_layers=1, attn_type="gqa", kv_lora_rank=16, q_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_experts=4, n_shared_experts=1,
        n_experts_per_tok=2, expert_dim=16, act_threshold=0.99, rope_theta=10000.0, lora_rank=4,
        max_output_tokens=16, dropout=0.0,
    )  # fmt: skip
    base.update(overrides)
    return MythosConfig(**base)


def loop_embedding(d: int, n_loops: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Upstream's loop-index embedding vectors ``[n_loops, d]``: what ``open_mythos.main.
    loop_index_embedding`` adds to a zero state at loops ``0 … n_loops−1`` (a sinusoid on the
    first ``d // 8`` channels), in `like`'s dtype and device."""
    from open_mythos.main import loop_index_embedding

    z = torch.zeros(1, 1, d) if like is None else torch.zeros_like(like.reshape(-1, d)[:1, None])
    return torch.cat([loop_index_embedding(z, t, d // 8)[0] for t in range(n_loops)])


def require_openmythos(model: object) -> OpenMythos:
    """Return `model` if it is an upstream OpenMythos, else raise MythosLensError."""
    if not isinstance(model, OpenMythos):
        raise MythosLensError(
            f"model is a {type(model).__module__}.{type(model).__qualname__}",
            f"an open_mythos.OpenMythos (open-mythos {UPSTREAM_VERSION})",
        )
    return model


# model -> (its modules, a stamp of its tensors when last found finite). In-place updates
# (optimizer steps, copy_) bump version counters; assigning a new tensor changes its id.
_finite_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stamp(modules: list[torch.nn.Module]) -> tuple:
    return tuple(
        (id(t), t._version)
        for m in modules
        for t in (*m._parameters.values(), *m._buffers.values())
        if t is not None
    )


def check_finite_weights(model: torch.nn.Module) -> None:
    """Raise MythosLensError naming the first parameter or buffer holding NaN or inf.

    The scan is skipped while no tensor has changed since the last clean scan. Tensors on the
    meta device (weights accelerate offloaded to disk or CPU) hold no values here: they are
    checked where they were loaded (``load_checkpoint``).
    """
    cached = _finite_checked.get(model)
    if cached is not None and _stamp(cached[0]) == cached[1]:
        return
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not t.is_meta and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise MythosLensError(
                f"weight {name!r} holds {bad} NaN/inf value(s)", "finite weights everywhere"
            )
    modules = list(model.modules())
    _finite_checked[model] = (modules, _stamp(modules))


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's token embedding."""
    w = model.embed.weight
    return w.device, w.dtype
