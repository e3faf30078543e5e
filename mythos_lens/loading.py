"""Open a model directory of any supported family, and its tokenizer.

Two directory formats: ours (``config.json`` with ``"format": "mythos-lens/1"`` +
``model.safetensors``: OpenMythos, see :mod:`mythos_lens.checkpoint`) and transformers'
(``config.json`` with a ``model_type`` whose family has an adapter, weights as safetensors,
e.g. ``save_pretrained`` of HRM-Text). Weights are read from safetensors only, never unpickled.
A directory may carry a ``tokenizer.json`` (``tokenizers``); then text can be given as input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mythos_lens.checkpoint import (
    CONFIG_FILE,
    FORMAT,
    check_checkpoint,
    load_checkpoint,
    memory_limit_bytes,
)
from mythos_lens.errors import MythosLensError
from mythos_lens.model import check_device

# transformers model_type -> (class name in transformers, what it is)
TRANSFORMERS_MODELS = {
    "hrm_text": ("HrmTextForCausalLM", "HRM-Text"),
    "albert": ("AlbertForMaskedLM", "ALBERT (shared layers)"),
}
TOKENIZER_FILE = "tokenizer.json"


def _config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        why = "" if directory.is_dir() else " (does not exist)"
        raise MythosLensError(f"no {CONFIG_FILE} in {str(directory)!r}{why}",
                              "a checkpoint directory")  # fmt: skip
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise MythosLensError(f"{path} is not valid JSON ({exc})", "a JSON config") from None
    if not isinstance(raw, dict):
        raise MythosLensError(f"{path} holds a {type(raw).__name__}", "a JSON object")
    return raw


def model_format(directory: str | os.PathLike) -> str:
    """``"mythos-lens"`` or ``"transformers"``: which kind of directory this is."""
    d = Path(directory)
    raw = _config(d)
    if raw.get("format") == FORMAT:
        return "mythos-lens"
    if raw.get("model_type") in TRANSFORMERS_MODELS:
        return "transformers"
    raise MythosLensError(
        f"{d / CONFIG_FILE} is neither a mythos-lens checkpoint nor a supported transformers "
        f"model (model_type {raw.get('model_type')!r})",
        f"format {FORMAT!r} or model_type in {sorted(TRANSFORMERS_MODELS)}",
    )


def _weight_files(d: Path) -> list[Path]:
    files = sorted(d.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (only pickled {pickled}: convert them to safetensors)" if pickled else ""
        raise MythosLensError(f"no .safetensors weights in {str(d)!r}{hint}", "safetensors")
    return files


def check_model_dir(directory: str | os.PathLike, max_bytes: int | None = None) -> str:
    """Validate a model directory without loading weights; returns its format."""
    d = Path(directory)
    fmt = model_format(d)
    if fmt == "mythos-lens":
        check_checkpoint(d, max_bytes)
        return fmt
    size = sum(p.stat().st_size for p in _weight_files(d))
    limit = memory_limit_bytes() if max_bytes is None else max_bytes
    if size > limit:
        raise MythosLensError(f"{d} holds {size / 2**30:.2f} GiB of weights",
                              f"at most {limit / 2**30:.2f} GiB")  # fmt: skip
    return fmt


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """The model in `directory` (either format), in eval mode on `device`."""
    d = Path(directory)
    dev = check_device(device)
    if check_model_dir(d) == "mythos-lens":
        return load_checkpoint(d, dev)
    import transformers

    cls_name, _ = TRANSFORMERS_MODELS[_config(d)["model_type"]]
    cls = getattr(transformers, cls_name)
    try:
        model = cls.from_pretrained(d, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise MythosLensError(f"{d} could not be loaded ({str(exc).splitlines()[0][:200]})",
                              f"a {cls_name} saved with save_pretrained") from None  # fmt: skip
    return model.to(dev).eval()


def load_tokenizer(directory: str | os.PathLike) -> Any | None:
    """The directory's ``tokenizer.json`` as a ``tokenizers.Tokenizer``, or None."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception types
        raise MythosLensError(
            f"{path} could not be read ({exc})", "a tokenizers JSON file"
        ) from None


def encode_texts(tokenizer: Any, text: str) -> list[list[int]]:
    """One token-id sequence per non-empty line of `text` (all lines must have the same number
    of tokens: sequences are batched without padding)."""
    if tokenizer is None:
        raise MythosLensError(
            "text input without a tokenizer", f"a {TOKENIZER_FILE} beside the model"
        )
    if not isinstance(text, str) or not text.strip():
        raise MythosLensError("no text", "one or more non-empty lines")
    rows = [tokenizer.encode(line).ids for line in text.splitlines() if line.strip()]
    lengths = sorted({len(r) for r in rows})
    if lengths[0] == 0:
        raise MythosLensError("a line encodes to no tokens", "text the tokenizer knows")
    if len(lengths) > 1:
        raise MythosLensError(f"lines of {lengths} tokens", "lines of the same number of tokens")
    return rows
