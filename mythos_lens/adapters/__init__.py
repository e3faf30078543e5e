"""Adapters: each looped architecture described as data (see :mod:`.base`).

:func:`adapter_for` finds the adapter of a model; capture, interventions and analyses use it
and never branch on a model's type. To support a new looped model, write its adapter (a site
table, how a step starts, how to run n steps, its readouts) and add it to :data:`ADAPTERS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from mythos_lens.adapters.base import Adapter
from mythos_lens.errors import MythosLensError

# module:attribute of every adapter, loaded on first use (HRM-Text's needs transformers).
ADAPTERS = (
    "mythos_lens.adapters.openmythos:ADAPTER",
    "mythos_lens.adapters.hrm_text:ADAPTER",
    "mythos_lens.adapters.albert:ADAPTER",
)


def _load(spec: str) -> Adapter:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def adapter_for(model: Any) -> Adapter:
    """The adapter whose ``matches(model)`` holds; MythosLensError for an unknown model."""
    names = []
    for spec in ADAPTERS:
        try:
            adapter = _load(spec)
        except ImportError:  # an optional library is missing: that family is unavailable
            continue
        names.append(adapter.name)
        if adapter.matches(model):
            return adapter
    raise MythosLensError(
        f"model is a {type(model).__module__}.{type(model).__qualname__}",
        f"a looped model with an adapter ({', '.join(names)})",
    )


def adapter_named(name: str) -> Adapter:
    """The adapter called `name` (e.g. ``openmythos``, ``hrm_text``)."""
    for spec in ADAPTERS:
        adapter = _load(spec)
        if adapter.name == name:
            return adapter
    raise MythosLensError(f"no adapter named {name!r}", "openmythos, hrm_text or albert")
