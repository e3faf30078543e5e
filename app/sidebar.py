"""The sidebar: checkpoint (shipped or uploaded), input (task instance or typed ids), loops."""

from __future__ import annotations

import streamlit as st

from app import state
from mythos_lens.errors import MythosLensError

UPLOAD_PREFIX = "upload:"
MAX_LOOPS_WIDGET = 64


def checkpoint_options() -> dict[str, str]:
    """Display name -> directory: shipped checkpoints, then this session's uploads."""
    options = dict(state.shipped_checkpoints())
    options.update(st.session_state.get("uploads", {}))
    return options


def _upload_box() -> None:
    """Two uploaders; when both files are there, validate them and add the checkpoint."""
    with st.sidebar.expander("Upload a checkpoint"):
        weights = st.file_uploader("model.safetensors", type=["safetensors"], key="up_weights")
        config = st.file_uploader("config.json", type=["json"], key="up_config")
        if weights is None or config is None:
            st.caption("Both files of a `mythos-lens/1` checkpoint, as `save_checkpoint` writes.")
            return
        try:
            directory = state.save_upload(weights.getvalue(), config.getvalue())
        except MythosLensError as exc:
            st.error(f"Upload rejected: {exc}")
            return
        name = f"{UPLOAD_PREFIX}{weights.name.removesuffix('.safetensors')}-{directory[-6:]}"
        uploads = st.session_state.setdefault("uploads", {})
        if name not in uploads:
            uploads[name] = directory
            st.session_state["checkpoint"] = name  # switch to it once, when it arrives
        st.success(f"Loaded {name}")


def _trained_loops(directory: str) -> tuple[int, str]:
    """(default loop count, what training used as text): the evaluation loop count of training
    (else its loop count, else max_loop_iters) and e.g. ``"4"`` or ``"2–6"``."""
    train = state.checkpoint_metadata(directory).get("train_config", {}) or {}
    loops, low, evald = train.get("loops"), train.get("loops_min"), train.get("eval_loops")
    if not (isinstance(loops, int) and loops >= 1):
        model = state.model_for(directory)
        n = int(state.adapter_of(directory).default_steps(model))
        return n, f"configured {n}"
    default = evald if isinstance(evald, int) and evald >= 1 else loops
    text = f"{low}–{loops}" if isinstance(low, int) and low < loops else str(loops)
    return default, text


def sidebar() -> state.Selection | None:
    """Draw the sidebar; return the selection, or None after showing an error."""
    sb = st.sidebar
    sb.title("mythos-lens")
    _upload_box()
    options = checkpoint_options()
    if not options:
        sb.error(f"No checkpoint in {state.checkpoint_root()}; upload one above.")
        return None
    names = list(options)
    if st.session_state.get("checkpoint") not in names:
        st.session_state["checkpoint"] = (
            state.DEFAULT_CHECKPOINT if state.DEFAULT_CHECKPOINT in names else names[0]
        )
    name = sb.selectbox("Checkpoint", names, key="checkpoint")
    directory = options[name]
    try:
        task = state.task_for(directory)
        default_loops, trained = _trained_loops(directory)
    except MythosLensError as exc:
        sb.error(str(exc))
        return None

    sources = (["Task instance"] if task is not None else []) + ["Token ids"]
    if state.tokenizer_for(directory) is not None:
        sources.append("Text")
    source = sb.radio("Input", sources, key="input_source", horizontal=True)
    n_loops = sb.number_input(
        f"Loops (trained with {trained})",
        value=default_loops,
        max_value=MAX_LOOPS_WIDGET,
        step=1,
        key="n_loops",
        help="Any count ≥ 1; beyond training upstream reuses the last LoRA row.",
    )
    try:
        if source == "Task instance":
            hops = sb.number_input(
                f"Hops (trained on 1–{task.train_hops})",
                min_value=1,
                max_value=task.max_hops,
                value=min(2, task.train_hops),
                key="hops",
            )
            seed = sb.number_input("Seed", min_value=0, value=0, step=1, key="seed")
            n = sb.number_input("Examples", min_value=1, max_value=256, value=32, key="n_examples")
            split = sb.selectbox("Split", ["heldout", "train"], key="split")
            args = (int(n), int(hops), int(seed), str(split))
            data = state.task_input(*state.checkpoint_key(directory), *args)
            sel = state.Selection(
                name=name,
                directory=directory,
                ids=data["ids"],
                n_loops=int(n_loops),
                source="task",
                answer=data["answer"],
                hop_entities=data["hop_entities"],
                hops=data["hops"],
                task_args=args,
            )
        elif source == "Text":
            text = sb.text_area("Text (one input per line, equal token counts)",
                                key="text_in", height=100)  # fmt: skip
            sel = state.Selection(
                name=name,
                directory=directory,
                ids=state.text_ids(directory, text),
                n_loops=int(n_loops),
                source="text",
            )
        else:
            default = ""
            if task is not None:
                default = " ".join(
                    map(str, task.generate(1, "heldout", seed=0).input_ids[0].tolist())
                )
            text = sb.text_area(
                "Token ids (one sequence per line)", value=default, key="ids_text", height=100
            )
            sel = state.Selection(
                name=name,
                directory=directory,
                ids=state.parse_ids(text),
                n_loops=int(n_loops),
                source="ids",
            )
        # Run once here so an impossible input is reported before any page draws.
        state.trace_for(*sel.key, sel.ids, sel.n_loops)
    except MythosLensError as exc:
        st.error(f"Cannot run this input: {exc}")
        return None
    n_ex = len(sel.ids)
    if n_ex > 1:
        sb.number_input("Example shown", min_value=0, max_value=n_ex - 1, value=0, key="example")
    return sel


def example_index(sel: state.Selection) -> int:
    """The example (batch row) the token-level views show."""
    i = int(st.session_state.get("example", 0))
    return min(max(i, 0), len(sel.ids) - 1)
