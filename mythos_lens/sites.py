"""Sites: named places whose value is read (or written) during a forward pass.

A *stepped* site fires once per step of a looped model and is stored with a leading step axis
``[loop, batch, pos, ...]`` (``step`` names the kind of step: ``"loop"`` for OpenMythos, ``"L"``
and ``"H"`` for HRM-Text's nested cycles); a *stream* site fires once per forward
``[batch, pos, ...]``; a *layer* site fires once per layer of a non-looped stack (prelude, coda)
``[layer, batch, pos, ...]``. Which sites a model has, and where each lives, is its adapter's
data (``mythos_lens.adapters``); a model lacks a site rather than reporting zeros for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from mythos_lens.errors import MythosLensError

LAYER = "layer"


@dataclass(frozen=True)
class Site:
    """One site: its name, the module it is read from, its stored shape, what it means.

    ``step``: the step kind it fires in (``None`` for a stream site, ``"layer"`` for a layer
    site). ``optional`` sites are opt-in (not part of ``"all"``: attention patterns cost T²
    memory). ``pos_axis`` is the axis of one value that runs over sequence positions.
    ``attention`` marks attention patterns (their positions are the queries).
    """

    name: str
    module: str
    shape: str
    doc: str
    step: str | None = "loop"
    editable: bool = True
    optional: bool = False
    pos_axis: int = 1
    attention: bool = False  # an attention pattern [..., batch, head, q, k]: positions = queries

    @property
    def stepped(self) -> bool:
        """Fires once per step of the loop (not per forward, not per layer)."""
        return self.step is not None and self.step != LAYER


class SiteTable(Mapping[str, Site]):
    """An ordered table of one model family's sites; order = execution order within a step
    (interventions must follow it)."""

    def __init__(self, sites: Iterable[Site]) -> None:
        self._sites = {s.name: s for s in sites}

    def __getitem__(self, name: str) -> Site:
        return self._sites[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    def names(self, *, stepped: bool | None = None, step: str | None = None) -> list[str]:
        """Site names, optionally only the stepped (or unstepped) ones, or those of one kind."""
        out = []
        for n, s in self._sites.items():
            if stepped is not None and s.stepped != stepped:
                continue
            if step is not None and s.step != step:
                continue
            out.append(n)
        return out

    @property
    def stream(self) -> list[str]:
        return [n for n, s in self._sites.items() if s.step is None]

    @property
    def layers(self) -> list[str]:
        return [n for n, s in self._sites.items() if s.step == LAYER]

    @property
    def optional(self) -> frozenset[str]:
        return frozenset(n for n, s in self._sites.items() if s.optional)

    @property
    def editable(self) -> list[str]:
        return [n for n, s in self._sites.items() if s.editable]

    def resolve(self, sites: str | Sequence[str] | None, always: Sequence[str] = ()) -> tuple:
        """Validate a site selection; ``None`` or ``"all"`` selects every site but the opt-in
        ones (name those). Sites in `always` (e.g. ``logits``) are always kept."""
        if sites is None or sites == "all":
            chosen = tuple(n for n, s in self._sites.items() if not s.optional)
        elif isinstance(sites, str):
            chosen = (sites,)
        else:
            try:
                chosen = tuple(sites)
            except TypeError:
                raise MythosLensError(
                    f"sites={sites!r} ({type(sites).__name__})",
                    "None, 'all', a site name or a list of site names",
                ) from None
        for s in chosen:
            if not isinstance(s, str) or s not in self._sites:
                raise MythosLensError(f"unknown site {s!r}", f"one of {list(self._sites)}")
        return chosen + tuple(a for a in always if a not in chosen)
