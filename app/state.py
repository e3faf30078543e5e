"""Everything the pages share: the user's selection, cached models, tasks and traces.

Nothing here computes a statistic: models come from ``mythos_lens.checkpoint``, traces from
``mythos_lens.capture``, readouts from ``mythos_lens.readouts`` and every table from ``probes``.
Models are cached with ``st.cache_resource`` keyed by (directory, mtime of the weights), traces
and tables with ``st.cache_data`` keyed by (directory, mtime, token ids, n_loops, ablated loops).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import torch

from mythos_lens.adapters import adapter_for
from mythos_lens.adapters.base import Adapter
from mythos_lens.capture import capture
from mythos_lens.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_checkpoint,
    load_checkpoint,
    load_task,
)
from mythos_lens.checkpoint import checkpoint_metadata as read_metadata
from mythos_lens.errors import MythosLensError
from mythos_lens.inputs import parse_token_ids
from mythos_lens.interventions import AblateLora
from mythos_lens.loading import encode_texts, load_model, load_tokenizer
from mythos_lens.tasks.base import TaskBatch
from mythos_lens.tasks.pointer import PointerTask
from mythos_lens.trace import Trace
from probes.convergence import spectral_radius
from probes.lens import TunedLens, apply_lens, fit_tuned_lens, lens_table

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS_ENV = "MYTHOS_LENS_CHECKPOINTS"  # another folder of checkpoints (tests, your own runs)
DEFAULT_CHECKPOINT = "pointer-lora-on"
UPLOADS_ENV = "MYTHOS_LENS_UPLOADS"  # where uploads are kept (default: the system temp dir)
TUNED_LENS_EXAMPLES = 256  # training-split examples the tuned lens is fitted on
TUNED_LENS_STEPS = 150

Ids = tuple[tuple[int, ...], ...]

# The app's models are small: one torch thread is fastest and does not collapse when the CPU is
# shared (measured here: a 7-loop capture took 0.03 s on 1 thread, 0.6-8 s on 2 busy cores).
THREADS_ENV = "MYTHOS_LENS_APP_THREADS"


def use_threads() -> None:
    """Set torch's thread count for the app (``$MYTHOS_LENS_APP_THREADS``, default 1)."""
    n = int(os.environ.get(THREADS_ENV, "1"))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# -- checkpoints ------------------------------------------------------------------------------
def checkpoint_root() -> Path:
    """Where shipped checkpoints live: ``data/checkpoints`` (or ``$MYTHOS_LENS_CHECKPOINTS``)."""
    return Path(os.environ.get(CHECKPOINTS_ENV, REPO / "data" / "checkpoints"))


def shipped_checkpoints() -> dict[str, str]:
    """Checkpoint name -> directory for every folder of :func:`checkpoint_root` with a config,
    and one level down (a study's models: ``lora-study/study-lora-on-s0``), top level first."""
    root = checkpoint_root()
    if not root.is_dir():
        return {}
    top = sorted(p.parent for p in root.glob(f"*/{CONFIG_FILE}"))
    nested = sorted(p.parent for p in root.glob(f"*/*/{CONFIG_FILE}"))
    return {p.relative_to(root).as_posix(): str(p) for p in [*top, *nested]}


def checkpoint_key(directory: str) -> tuple[str, float]:
    """(directory, mtime of its weights file): the cache key of a checkpoint."""
    weights = Path(directory) / WEIGHTS_FILE
    mtime = weights.stat().st_mtime if weights.is_file() else 0.0
    return str(directory), mtime


@st.cache_resource(show_spinner="Loading checkpoint …", max_entries=8)
def _load_model(directory: str, mtime: float) -> Any:
    del mtime  # part of the cache key only
    return load_model(directory)


def model_for(directory: str) -> Any:
    """The validated model of a model directory, any supported family (cached per directory
    and mtime)."""
    return _load_model(*checkpoint_key(directory))


def adapter_of(directory: str) -> Adapter:
    """The adapter of a directory's model: which sites, roles and pages it has."""
    return adapter_for(model_for(directory))


def lenses_for(directory: str) -> tuple[str, ...]:
    """The lenses this model offers: exit (what a run stopped after step t outputs), its own
    readouts of the state (logit, coda, …), and tuned when it has a task to fit one on."""
    adapter = adapter_of(directory)
    tuned = ("tuned",) if task_for(directory) is not None and "logit" in adapter.readouts else ()
    return ("exit", *adapter.readouts, *tuned)


@st.cache_resource(max_entries=8)
def _load_tokenizer(directory: str, mtime: float) -> Any:
    del mtime
    return load_tokenizer(directory)


def tokenizer_for(directory: str) -> Any:
    """The directory's ``tokenizer.json`` (None without one)."""
    return _load_tokenizer(*checkpoint_key(directory))


@st.cache_resource(max_entries=8)
def _load_task(directory: str, mtime: float) -> PointerTask | None:
    del mtime
    return load_task(directory)


def task_for(directory: str) -> PointerTask | None:
    """The task the checkpoint was trained on, or None (e.g. an untrained upload)."""
    return _load_task(*checkpoint_key(directory))


def checkpoint_metadata(directory: str) -> dict:
    """The ``metadata`` block of our config.json (``{}`` for a transformers directory)."""
    return read_metadata(directory)


def save_upload(weights: bytes, config: bytes) -> str:
    """Write an uploaded checkpoint into a temp dir named by its content hash and validate it
    with ``load_checkpoint``; returns the directory. Raises MythosLensError when invalid, after
    removing what was written (a rejected upload leaves nothing on disk). At most
    :data:`MAX_UPLOADS` accepted uploads are kept (oldest removed first)."""
    digest = hashlib.sha256(weights + b"\0" + config).hexdigest()[:16]
    root = upload_root()
    out = root / digest
    if (out / WEIGHTS_FILE).is_file() and (out / CONFIG_FILE).is_file():
        os.utime(out)  # most recently used
        return str(out)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
    try:
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        (tmp / CONFIG_FILE).write_bytes(config)
        check_checkpoint(tmp)  # header only: an oversized config is refused before allocating
        load_checkpoint(tmp)  # names the first problem with the weights themselves
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune_uploads(root)
    return str(out)


MAX_UPLOADS = 16


def upload_root() -> Path:
    """Where accepted uploads are kept: ``$MYTHOS_LENS_UPLOADS`` or a temp-dir folder."""
    default = Path(tempfile.gettempdir()) / "mythos-lens-uploads"
    return Path(os.environ.get(UPLOADS_ENV, default))


def _prune_uploads(root: Path) -> None:
    kept = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in kept[MAX_UPLOADS:]:
        shutil.rmtree(old, ignore_errors=True)


# -- the selection ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """What the sidebar chose: checkpoint, input ids, loops; and, for task inputs, the truth."""

    name: str
    directory: str
    ids: Ids
    n_loops: int
    source: str  # "task" or "ids"
    answer: tuple[int, ...] | None = None  # per example, task inputs only
    hop_entities: tuple[tuple[int, ...], ...] | None = None
    hops: tuple[int, ...] | None = None
    task_args: tuple[int, int, int, str] | None = None  # (n, hops, seed, split) of task inputs

    @property
    def key(self) -> tuple[str, float]:
        return checkpoint_key(self.directory)

    def ids_tensor(self) -> torch.Tensor:
        return torch.tensor(self.ids, dtype=torch.long)

    def task_batch(self) -> TaskBatch | None:
        """The task batch behind a task input (None for typed ids)."""
        if self.task_args is None:
            return None
        return task_input(*self.key, *self.task_args)["batch"]


def current() -> Selection:
    """The selection made in the sidebar (set by ``app/main.py`` before each page runs)."""
    sel = st.session_state.get("selection")
    if sel is None:
        st.error("No input selected yet.")
        st.stop()
    return sel


@st.cache_data(max_entries=64, show_spinner=False)
def task_input(directory: str, mtime: float, n: int, hops: int, seed: int, split: str) -> dict:
    """``n`` task examples with ``hops`` hops (seeded), as plain tuples for caching."""
    task = _load_task(directory, mtime)
    if task is None:
        raise MythosLensError(f"checkpoint {directory!r} names no task", "typed token ids")
    b = task.generate(n, split, seed=seed, hops=[hops])
    return {
        "ids": tuple(map(tuple, b.input_ids.tolist())),
        "answer": tuple(b.answer.tolist()),
        "hop_entities": tuple(map(tuple, b.hop_entities.tolist())),
        "hops": tuple(b.hops.tolist()),
        "batch": b,
    }


def text_ids(directory: str, text: str) -> Ids:
    """Text tokenised with the directory's tokenizer (one sequence per line)."""
    return tuple(tuple(r) for r in encode_texts(tokenizer_for(directory), text))


def parse_ids(text: str) -> Ids:
    """Typed token ids (see ``mythos_lens.capture.parse_token_ids``) as a hashable cache key."""
    return tuple(tuple(row) for row in parse_token_ids(text))


# -- traces and tables (cached) ---------------------------------------------------------------
@st.cache_data(max_entries=64, show_spinner="Running the model …")
def trace_for(
    directory: str, mtime: float, ids: Ids, n_loops: int, ablate: tuple[int, ...] = ()
) -> Trace:
    """Every loop of one forward (all loops run; LoRA ablated at ``ablate``)."""
    model = _load_model(directory, mtime)
    interventions = [AblateLora(loops=list(ablate))] if ablate else []
    return capture(
        model,
        torch.tensor(ids, dtype=torch.long),
        n_loops=n_loops,
        interventions=interventions,
        run_all_loops=True,
    )


@st.cache_resource(max_entries=8, show_spinner="Fitting the tuned lens …")
def tuned_lens_for(directory: str, mtime: float, n_loops: int) -> TunedLens:
    """A tuned lens for ``n_loops`` loops of this checkpoint: loaded if the checkpoint ships one
    for that loop count, else fitted (seeded) on training-split task examples."""
    shipped = Path(directory) / "tuned_lens"
    if (shipped / "tuned_lens.json").is_file():
        lens = TunedLens.load(shipped)
        if lens.n_loops == n_loops:
            return lens
    model = _load_model(directory, mtime)
    adapter = adapter_for(model)
    task = _load_task(directory, mtime)
    if task is None:
        raise MythosLensError("no task to fit a tuned lens on", "a checkpoint trained on a task")
    batch = task.generate(TUNED_LENS_EXAMPLES, "train", seed=0)
    state = adapter.roles["state"]
    tr = capture(model, batch.input_ids, n_loops=n_loops, sites=[state, "logits"])
    return fit_tuned_lens(
        tr[state],
        tr.logits,
        adapter.readouts["logit"](model),
        steps=TUNED_LENS_STEPS,
        seed=0,
        progress=False,
    )


@st.cache_data(max_entries=32, show_spinner=False)
def lens_logits(
    directory: str, mtime: float, ids: Ids, n_loops: int, lens: str, ablate: tuple[int, ...] = ()
) -> torch.Tensor:
    """Per-step lens logits ``[loop, batch, pos, vocab]``: the exit lens (the output a run
    stopped after step t gives), or one of the model's readouts (logit, coda, …) or the tuned
    lens, applied to the carried state."""
    model = _load_model(directory, mtime)
    adapter = adapter_for(model)
    tr = trace_for(directory, mtime, ids, n_loops, ablate)
    h = tr[adapter.roles["state"]]
    if lens == "exit":
        return adapter.exit_logits(model, tr)
    if lens in adapter.readouts:
        return apply_lens(h, adapter.readouts[lens](model))
    if lens == "tuned":
        logit = adapter.readouts["logit"](model)
        return tuned_lens_for(directory, mtime, tr.n_loops).logits(h, logit)
    raise MythosLensError(f"lens {lens!r}", f"one of {['exit', *adapter.readouts, 'tuned']}")


@st.cache_data(max_entries=64, show_spinner=False)
def lens_frame(
    directory: str,
    mtime: float,
    ids: Ids,
    n_loops: int,
    lens: str,
    targets: Ids | None = None,
    control: Ids | None = None,
) -> pd.DataFrame:
    """``probes.lens.lens_table`` for one lens, with optional target and control tokens."""
    tr = trace_for(directory, mtime, ids, n_loops)
    lg = lens_logits(directory, mtime, ids, n_loops, lens)
    return lens_table(
        lg,
        tr.logits,
        target_ids=None if targets is None else torch.tensor(targets),
        control_ids=None if control is None else torch.tensor(control),
        positions=tr.positions,
        lens=lens,
    )


@st.cache_data(max_entries=32, show_spinner=False)
def output_frame(
    directory: str, mtime: float, ids: Ids, n_loops: int, targets: Ids | None = None
) -> pd.DataFrame:
    """``lens_table`` of the model's own output (one pseudo-loop): the reference row of the
    trajectory heatmaps."""
    tr = trace_for(directory, mtime, ids, n_loops)
    return lens_table(
        tr.logits.unsqueeze(0),
        tr.logits,
        target_ids=None if targets is None else torch.tensor(targets),
        positions=tr.positions,
        lens="output",
    )


def next_token_targets(sel: Selection) -> Ids | None:
    """Targets per position for a task input: the next input token, and the answer at the
    last position (where the task asks its question). None for typed ids."""
    if sel.answer is None:
        return None
    return tuple(row[1:] + (a,) for row, a in zip(sel.ids, sel.answer, strict=True))


def decoder(sel: Selection):
    """Token id -> readable name: the task's vocabulary, else the tokenizer's, else ``#<id>``."""
    task = task_for(sel.directory)
    if task is not None:
        return task.describe_token
    tok = tokenizer_for(sel.directory)
    if tok is not None:
        return lambda t: tok.id_to_token(int(t)) or f"#{int(t)}"
    return lambda t: f"#{int(t)}"


@st.cache_data(max_entries=16, show_spinner="Power iteration on the loop map's Jacobian …")
def jacobian_spectrum(
    directory: str, mtime: float, ids: Ids, n_loops: int, example: int
) -> pd.DataFrame:
    """Per loop: spectral radius and norm of the loop map's Jacobian at one example's state
    (``probes.convergence.spectral_radius`` of ``mythos_lens.readouts.loop_step``)."""
    model = _load_model(directory, mtime)
    adapter = adapter_for(model)
    if adapter.loop_step is None:
        raise MythosLensError(f"{adapter.name} models expose no loop map", "an OpenMythos model")
    tr = trace_for(directory, mtime, ids, n_loops)
    e = tr[adapter.roles["state_in"]][example : example + 1]
    rows = []
    for t in range(tr.n_loops):
        h_prev = e if t == 0 else tr[adapter.roles["state"]][t - 1, example : example + 1]
        r = spectral_radius(adapter.loop_step(model, e, t), h_prev, n_iter=30, seed=0)
        rows.append({"loop": t, "spectral_radius": r["spectral_radius"],
                     "spectral_norm": r["spectral_norm"]})  # fmt: skip
    return pd.DataFrame(rows)
