"""What users pass, validated: token ids (as tensors or text), positions, storage dtypes.

Every check raises :class:`~mythos_lens.errors.MythosLensError` saying what was wrong and
what was expected."""

from __future__ import annotations

import re
from typing import Any

import torch

from mythos_lens.errors import MythosLensError
from mythos_lens.model import (
    model_device_dtype,
)

_TOKEN_ID = re.compile(r"[0-9]+")


_MAX_ID = 2**63 - 1


def parse_token_ids(text: str) -> list[list[int]]:
    """Token ids written as text: one sequence per line, ids (ASCII digits) separated by spaces
    or commas.

    Raises MythosLensError for anything else: a non-integer or negative id, one too large for
    int64, an empty input or lines of different lengths (vocabulary and length limits are
    checked against a model by :func:`as_input_ids`)."""
    if not isinstance(text, str):
        raise MythosLensError(f"token ids given as a {type(text).__name__}", "text")
    rows = []
    for n, line in enumerate(text.strip().splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        row = []
        for p in parts:
            if not _TOKEN_ID.fullmatch(p):
                raise MythosLensError(
                    f"{p[:40]!r} on line {n} is not a token id", "non-negative integers"
                )
            if len(p) > 19 or int(p) > _MAX_ID:
                raise MythosLensError(f"token id {p[:40]} on line {n} is too large", "an int64")
            row.append(int(p))
        rows.append(row)
    if not rows:
        raise MythosLensError("no token ids", "at least one id, e.g. '1 9 2 12'")
    if len({len(r) for r in rows}) > 1:
        raise MythosLensError(
            f"sequences of lengths {sorted({len(r) for r in rows})}", "equal-length lines"
        )
    return rows


def as_input_ids(
    input_ids: Any,
    model: Any = None,
    *,
    vocab_size: int | None = None,
    max_len: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Validate token ids and return them as ``[batch, seq]`` int64 (on `device`).

    Accepts a tensor, numpy array or nested list, ``[seq]`` or ``[batch, seq]``. Limits come
    from `vocab_size` / `max_len` or, given an OpenMythos `model`, from its config (and the
    device from its embedding).
    """
    if model is not None:
        vocab_size, max_len = model.cfg.vocab_size, model.cfg.max_seq_len
        device, _ = model_device_dtype(model)
    if device is not None and torch.device(device).type == "meta":
        device = None  # weights offloaded by accelerate, whose hooks move the inputs
    if not isinstance(input_ids, torch.Tensor):
        try:
            input_ids = torch.as_tensor(input_ids)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise MythosLensError(
                f"input_ids could not be read as a tensor ({exc})", "integer token ids"
            ) from None
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise MythosLensError(f"input_ids have dtype {input_ids.dtype}", "integer token ids")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise MythosLensError(
            f"input_ids have shape {tuple(input_ids.shape)}", "a non-empty [batch, seq] or [seq]"
        )
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        bad = lo if lo < 0 else hi
        top = "" if vocab_size is None else f", {vocab_size - 1}"
        raise MythosLensError(f"token id {bad} is outside the vocabulary", f"ids in [0{top}]")
    if max_len is not None and input_ids.shape[1] > max_len:
        raise MythosLensError(
            f"sequence length {input_ids.shape[1]} exceeds max_seq_len",
            f"at most {max_len} tokens",
        )
    return input_ids.to(device=device, dtype=torch.long)


def check_positions(positions: Any, seq: int) -> torch.Tensor | None:
    if positions is None:
        return None
    try:
        pos = torch.as_tensor(positions)
    except (TypeError, ValueError, RuntimeError):
        raise MythosLensError(f"positions={positions!r}", "a list of integer positions") from None
    if pos.is_floating_point() or pos.is_complex() or pos.dtype == torch.bool:
        raise MythosLensError(f"positions of dtype {pos.dtype} ({positions!r})", "integers")
    pos = pos.reshape(-1).to(torch.long)
    if pos.numel() == 0 or int(pos.min()) < -seq or int(pos.max()) >= seq:
        raise MythosLensError(
            f"positions {pos.tolist()} for a sequence of {seq}", f"indices in [-{seq}, {seq - 1}]"
        )
    return torch.remainder(pos, seq)


def check_store_dtype(dtype: Any) -> torch.dtype | None:
    """Captured activations may be stored in another floating dtype, never an integer one
    (int8 or bool would silently destroy them)."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise MythosLensError(
            f"store_dtype={dtype!r}", "None or a floating torch dtype (float32, bfloat16, ...)"
        )
    return dtype
