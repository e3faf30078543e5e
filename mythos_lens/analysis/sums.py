"""Token-weighted sums of per-batch means: how streamed tables are accumulated."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def _wmean() -> list[float]:
    return [0.0, 0.0]


@dataclass
class Sums:
    """Weighted sums ``key -> [Σ w·v, Σ w]`` of per-batch means (NaN values skipped)."""

    acc: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(_wmean))

    def add(self, key: tuple, value: float, weight: float) -> None:
        """Add one value with its weight (e.g. a batch mean weighted by the batch size)."""
        if value is None or not np.isfinite(value):
            return
        s = self.acc[key]
        s[0] += float(value) * weight
        s[1] += weight

    def add_table(self, df: pd.DataFrame, keys: list[str], value: str, weight: float) -> None:
        """Add the per-group mean of ``value`` (NaN ignored), weighted by ``weight`` × rows."""
        g = df.groupby(keys, sort=True)[value]
        means, counts = g.mean(), g.count()
        for k, v in means.items():
            n = counts[k]
            if n:
                self.add(k if isinstance(k, tuple) else (k,), float(v), weight * n)

    def records(self) -> list[list]:
        """``[*key, Σ w·v, Σ w]`` per key, sorted, JSON-ready (numpy scalars become Python's)."""
        plain = lambda x: x.item() if isinstance(x, np.generic) else x  # noqa: E731
        return [[*map(plain, k), s[0], s[1]] for k, s in sorted(self.acc.items())]

    @classmethod
    def from_records(cls, records: list[list]) -> Sums:
        """The sums :meth:`records` gave."""
        out = cls()
        for r in records:
            out.acc[tuple(r[:-2])] = [float(r[-2]), float(r[-1])]
        return out

    def frame(self, names: list[str]) -> pd.DataFrame:
        """``names..., value, n``: the weighted mean and total weight of every key."""
        rows = [(*k, s[0] / s[1], s[1]) for k, s in sorted(self.acc.items()) if s[1] > 0]
        return pd.DataFrame(rows, columns=[*names, "value", "n"])
