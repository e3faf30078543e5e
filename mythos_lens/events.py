"""Site events and visitors: what a hook-driven forward tells each visitor, and what an
intervention declares about the loop steps it must reach."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mythos_lens.errors import MythosLensError


@dataclass
class SiteEvent:
    """What a visitor is told about one site value.

    ``loop`` is the step index within the site's step kind (``None`` for stream sites),
    ``label`` that step's label (``t`` for a loop; ``(h, l)`` for nested cycles), ``layer`` the
    layer index of a layer site (``None`` otherwise), ``forward`` the index of the forward pass
    within the session (generation runs several); ``model`` is the model being run, ``inputs``
    the module's inputs.
    """

    site: str
    loop: int | None
    layer: int | None
    model: Any
    inputs: tuple = ()
    label: Any = None
    forward: int = 0


class Visitor(Protocol):
    """Anything called at each site event; returns a replacement value or ``None``.

    A visitor aimed at particular loop steps (an intervention) may also expose
    ``target_loops: frozenset[int] | None``; :func:`run` then refuses a run in which any of those
    loops does not happen, so a typo or an early ACT exit cannot pass for a null result.
    """

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None: ...


def target_loops(visitors: Sequence[Visitor]) -> list[tuple[Visitor, int]]:
    """(visitor, loop) for every loop step a visitor declares it must reach (``target_loops``)."""
    out = []
    for v in visitors:
        loops = getattr(v, "target_loops", None)
        out += [(v, t) for t in sorted(loops or ())]
    return out


def check_loops_reached(
    visitors: Sequence[Visitor], loops_run: int, requested: int, stopped_early: bool
) -> None:
    """Raise when an intervention targets a loop step that did not run (``loops_run`` ran of
    ``requested``): that would otherwise look like a null result."""
    missing = [(v, t) for v, t in target_loops(visitors) if t >= loops_run]
    if not missing:
        return
    v, t = missing[0]
    ran = f"loops 0-{loops_run - 1}" if loops_run > 1 else "loop 0"
    if t >= requested:
        raise MythosLensError(
            f"{v!r} targets loop {t} but the run has n_loops={requested} ({ran})",
            f"loops in [0, {requested - 1}], or n_loops > {t}",
        )
    how = " (ACT stopped early)" if stopped_early else ""
    raise MythosLensError(
        f"{v!r} targets loop {t} but only {loops_run} of {requested} loops ran{how}",
        "a loop that runs: pass run_all_loops=True to run every requested loop",
    )
