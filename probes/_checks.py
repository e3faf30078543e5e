"""Input checks shared by the probes: every bad input raises MythosLensError (what, expected)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mythos_lens.errors import MythosLensError


def as_tensor(x: Any, name: str, *, floating: bool = True) -> torch.Tensor:
    """`x` as a CPU torch tensor (float64 if `floating`), or MythosLensError."""
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x)
        except ValueError:
            raise MythosLensError(
                f"{name} is a ragged {type(x).__name__}", "a rectangular array"
            ) from None
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise MythosLensError(f"{name} is an object array", "a numeric array")
        x = np.ascontiguousarray(x)
        x = torch.from_numpy(x if x.flags.writeable else x.copy())  # read-only: torch warns
    if not isinstance(x, torch.Tensor):
        raise MythosLensError(f"{name} is a {type(x).__name__}", "a torch.Tensor or numpy array")
    x = x.detach().cpu()
    if floating:
        if not (x.is_floating_point() or x.dtype in _INT_DTYPES or x.dtype == torch.bool):
            raise MythosLensError(f"{name} has dtype {x.dtype}", "a real floating tensor")
        x = x.to(torch.float64)
    return x


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def as_int_tensor(x: Any, name: str) -> torch.Tensor:
    """`x` as a CPU int64 tensor, or MythosLensError for floats / other types."""
    x = as_tensor(x, name, floating=False)
    if x.dtype not in _INT_DTYPES:
        raise MythosLensError(f"{name} has dtype {x.dtype}", "an integer tensor")
    return x.to(torch.int64)


def check_ndim(x: torch.Tensor, ndim: int, name: str, shape: str) -> None:
    """Raise unless `x` has exactly `ndim` dimensions (`shape` names them for the message)."""
    if x.dim() != ndim:
        raise MythosLensError(
            f"{name} has shape {tuple(x.shape)} ({x.dim()} dims)", f"{ndim} dims {shape}"
        )


def check_same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    """Raise unless `a` and `b` have the same shape."""
    if a.shape != b.shape:
        raise MythosLensError(
            f"{na} has shape {tuple(a.shape)} but {nb} has shape {tuple(b.shape)}", "equal shapes"
        )


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise if `x` holds NaN or inf."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise MythosLensError(f"{name} holds {bad} NaN/inf value(s)", "finite values")
