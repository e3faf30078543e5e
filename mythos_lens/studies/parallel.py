"""One way to run a study's per-model jobs: in `n` spawned processes (each sets its own torch
threads), or in this process when ``n <= 1``; results in job order."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def pool_map(fn: Callable[[Any], Any], jobs: list[Any], n: int, desc: str | None = None) -> list:
    """``[fn(j) for j in jobs]``, `n` processes at a time; a tqdm bar labelled `desc` if given."""
    from tqdm.auto import tqdm

    def shown(it: Any) -> Any:
        return it if desc is None else tqdm(it, total=len(jobs), desc=desc, unit="model")

    if n <= 1 or len(jobs) <= 1:
        return [fn(j) for j in shown(jobs)]
    with mp.get_context("spawn").Pool(processes=min(n, len(jobs))) as pool:
        return list(shown(pool.imap(fn, jobs)))
