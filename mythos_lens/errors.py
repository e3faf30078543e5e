"""The one exception type mythos-lens raises for bad input, and the scalar checks every layer
shares (the probes may import this module; it imports nothing heavier than numbers)."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any


class MythosLensError(ValueError):
    """Bad input to mythos-lens: the message says what was wrong and what was expected."""

    def __init__(self, what: str, expected: str) -> None:
        self.what = what
        self.expected = expected
        super().__init__(f"{what}; expected {expected}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # rebuilt from both parts: a worker process's error must reach its parent intact
        return (type(self), (self.what, self.expected))


def _bounds(lo: float | None, hi: float | None, kind: str) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    if lo is not None:
        return f"{kind} >= {lo}"
    if hi is not None:
        return f"{kind} <= {hi}"
    return kind


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as a Python int if it is an integral scalar in ``[lo, hi]``.

    Accepted: ``int``, numpy integers, 0-d integer tensors/arrays (anything with ``__index__``);
    refused: ``bool``, floats (also ``3.0``), strings, containers. Raises MythosLensError.
    """
    if isinstance(value, bool) or str(getattr(value, "dtype", "")).endswith("bool"):
        raise MythosLensError(f"{name}={value!r} (a bool)", _bounds(lo, hi, "an integer"))
    try:
        v = operator.index(value)
    except TypeError:
        raise MythosLensError(
            f"{name}={value!r} ({type(value).__name__})", _bounds(lo, hi, "an integer")
        ) from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise MythosLensError(f"{name}={v}", _bounds(lo, hi, "an integer"))
    return v


def check_float(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
) -> float:
    """`value` as a finite Python float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    Ints and numpy/0-d tensor reals are accepted; bools, NaN and inf are refused.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            value = float(value.item()) if getattr(value, "ndim", None) == 0 else value
        except (AttributeError, TypeError, ValueError):
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MythosLensError(f"{name}={value!r} ({type(value).__name__})", "a real number")
    v = float(value)
    kind = _bounds(lo, hi, "a finite number")
    if lo_open:
        kind = f"a finite number > {lo}" if hi is None else f"a finite number in ({lo}, {hi}]"
    if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)):
        raise MythosLensError(f"{name}={v}", kind)
    if hi is not None and v > hi:
        raise MythosLensError(f"{name}={v}", kind)
    return v
