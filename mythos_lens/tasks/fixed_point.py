"""Fixed-point chains in context: depth is implicit, so a longer chain needs only more loops.

``C`` disjoint chains of ``L`` entities each, ``a_0 → a_1 → … → a_{L−1} → a_{L−1}`` (the last node
is a fixed point). The context lists every pair ``k_x v_f(x)`` in random order, then a start key
``k_s`` with ``s = a_{L−1−d}``; the answer, read at the last position, is the value token of the
chain's end. There is no hop-count token: the depth ``d`` (1 … L−1) shows only in where the start
sits, and since the fixed point absorbs, every loop count ≥ d is correct. Per-hop ground truth:
``hop_entities[:, j]`` is the entity after hop j+1 (it stays at the end once reached).

Shorter contexts (``chain_len`` < L, for a curriculum) use entity ids ``0 … C·Lb−1`` so every id
in them appears (a context drawing its entities sparsely from all ids did not train: DESIGN.md,
issue 12 notes); the token layout stays that of length L. ``context="function"`` draws a random
function instead of chains (values with replacement, start uniform; the answer is
``f^hops(start)``): training batches that ask for exactly n hops.

Token ids: 0 pad (never generated), ``1 … E`` keys ``k0…``, ``E+1 … 2E`` values ``v0…`` (E = C·L).
Chance for chain contexts: a guess that knows f but not the start gets 1/C at every depth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from mythos_lens.errors import MythosLensError, check_int
from mythos_lens.tasks.base import TaskBatch, check_split, sequence_split


class FixedPointTask:
    """See the module docstring. ``train_hops`` = the largest trained depth K; ``max_hops`` =
    ``chain_len − 1`` (the deepest start a context holds)."""

    name = "fixed-point"

    def __init__(
        self,
        n_chains: int = 4,
        chain_len: int = 7,
        train_hops: int = 3,
        heldout_permille: int = 200,
    ) -> None:
        self.n_chains = check_int("n_chains", n_chains, 2, 64)
        self.chain_len = check_int("chain_len", chain_len, 2, 64)
        self.max_hops = self.chain_len - 1
        self.train_hops = check_int("train_hops", train_hops, 1, self.max_hops)
        self.heldout_permille = check_int("heldout_permille", heldout_permille, 1, 999)
        self.n_entities = self.n_chains * self.chain_len
        self.seq_len = 2 * self.n_entities + 1
        self.vocab_size = 1 + 2 * self.n_entities
        self.n_hop_columns = 2 * self.chain_len

    # -- tokens --------------------------------------------------------------------------------
    def key_id(self, e: int | np.ndarray) -> int | np.ndarray:
        return e + 1

    def value_id(self, e: int | np.ndarray) -> int | np.ndarray:
        return e + 1 + self.n_entities

    def describe_token(self, token_id: int) -> str:
        """``"<pad>"``, ``"k3"``, ``"v5"`` or ``"<unused:40>"``."""
        t, E = int(token_id), self.n_entities
        if t == 0:
            return "<pad>"
        if 1 <= t <= E:
            return f"k{t - 1}"
        if E < t <= 2 * E:
            return f"v{t - 1 - E}"
        return f"<unused:{t}>"

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> list[str]:
        """Readable names of a 1-D sequence of ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.describe_token(i) for i in np.asarray(ids).reshape(-1).tolist()]

    def spec(self) -> dict[str, object]:
        """Everything needed to rebuild this task (JSON-ready)."""
        return {"name": self.name, "n_chains": self.n_chains, "chain_len": self.chain_len,
                "train_hops": self.train_hops, "heldout_permille": self.heldout_permille,
                "max_hops": self.max_hops, "seq_len": self.seq_len}  # fmt: skip

    # -- generation ----------------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator, m: int, hops: np.ndarray, Lb: int, chains: bool):
        C, E = self.n_chains, self.n_entities
        N = C * Lb
        perm = np.argsort(rng.random((m, N)), axis=1)  # entity ids 0 … N−1 laid out as chains
        f = np.full((m, E), -1, dtype=np.int64)  # −1: not in this context
        rows = np.arange(m)
        if chains:
            lay = perm.reshape(m, C, Lb)
            nxt = np.concatenate([lay[:, :, 1:], lay[:, :, -1:]], axis=2)
            f[rows[:, None, None], lay] = nxt
        else:
            f[rows[:, None], perm] = np.take_along_axis(perm, rng.integers(0, N, (m, N)), axis=1)
        order = np.take_along_axis(perm, np.argsort(rng.random((m, N)), axis=1), axis=1)
        d = hops[rng.integers(0, len(hops), size=m)]
        if chains:
            c = rng.integers(0, C, size=m)
            start = perm.reshape(m, C, Lb)[rows, c, Lb - 1 - d]
        else:
            start = perm[rows, rng.integers(0, N, size=m)]
        ids = np.empty((m, 2 * N + 1), dtype=np.int64)
        ids[:, 0 : 2 * N : 2] = self.key_id(order)
        ids[:, 1 : 2 * N : 2] = self.value_id(np.take_along_axis(f, order, axis=1))
        ids[:, -1] = self.key_id(start)
        hop = np.empty((m, self.n_hop_columns), dtype=np.int64)
        cur = start.copy()
        for j in range(self.n_hop_columns):
            cur = f[rows, cur]
            hop[:, j] = cur
        answer = hop[rows, d - 1]  # chains: the fixed point (d ≤ Lb−1 hops reach it)
        return {"input_ids": ids, "answer": self.value_id(answer), "answer_entity": answer,
                "hop_entities": hop, "hops": d, "start": start, "function": f}  # fmt: skip

    def _depths(self, hops: int | Sequence[int] | None, Lb: int, chains: bool) -> np.ndarray:
        if hops is None:
            hops = list(range(1, min(self.train_hops, Lb - 1) + 1))
        elif isinstance(hops, (int, np.integer)) and not isinstance(hops, bool):
            hops = [hops]
        try:
            values = [int(h) for h in hops]
        except (TypeError, ValueError):
            raise MythosLensError(f"hops={hops!r}", "an int or a list of ints") from None
        if not values:
            raise MythosLensError("hops=[]", "at least one depth")
        top = Lb - 1 if chains else self.n_hop_columns
        for h in values:
            check_int("depth", h, 1, top)
        return np.asarray(values, dtype=np.int64)

    def generate(
        self,
        n: int,
        split: str = "train",
        seed: int | np.random.Generator = 0,
        hops: int | Sequence[int] | None = None,
        chain_len: int | None = None,
        context: str = "chains",
    ) -> TaskBatch:
        """Draw `n` examples of `split` with depths uniform over `hops` (default 1 … K, capped
        at ``chain_len − 1``); `chain_len` (default L) for shorter contexts; ``context`` is
        ``chains`` or ``function``. Train and held-out sequences never coincide (a hash of the
        token sequence decides the split). Returns a TaskBatch with ``hops`` = depth."""
        n = check_int("n", n, 1)
        split = check_split(split)
        if context not in ("chains", "function"):
            raise MythosLensError(f"context={context!r}", "'chains' or 'function'")
        Lb = self.chain_len if chain_len is None else check_int("chain_len", chain_len, 2,
                                                                self.chain_len)  # fmt: skip
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            rng = np.random.default_rng([check_int("seed", seed, 0), 0 if split == "train" else 1])
        depths = self._depths(hops, Lb, context == "chains")
        want = split == "heldout"
        share = self.heldout_permille / 1000 if want else 1 - self.heldout_permille / 1000
        parts, have = [], 0
        while have < n:
            m = int((n - have) / share * 1.15) + 16
            draw = self._draw(rng, m, depths, Lb, context == "chains")
            keep = sequence_split(draw["input_ids"], self.heldout_permille) == want
            parts.append({k: v[keep] for k, v in draw.items()})
            have += int(keep.sum())
        return TaskBatch(**{k: torch.from_numpy(np.concatenate([p[k] for p in parts])[:n])
                            for k in parts[0]})  # fmt: skip

    def in_heldout(self, input_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[B]`` bool: which input sequences belong to the held-out split."""
        ids = input_ids.cpu().numpy() if isinstance(input_ids, torch.Tensor) else input_ids
        return torch.from_numpy(sequence_split(np.asarray(ids), self.heldout_permille))

    # -- ground truth --------------------------------------------------------------------------
    def chance(self, batch: TaskBatch) -> dict[int, dict[str, float]]:
        """Per depth: ``uniform`` = 1/E; ``ignore_start`` = 1/C, the best guess that reads the
        whole context (so knows every fixed point) but not the start."""
        return {int(d): {"uniform": 1.0 / self.n_entities, "ignore_start": 1.0 / self.n_chains}
                for d in batch.hops.unique().tolist()}  # fmt: skip

    def pair_truth(self, batch: TaskBatch, n_loops: int) -> dict[str, torch.Tensor]:
        """``pair_positions`` ``[B, pairs, 2]`` (key and value position of each context pair)
        and ``expected_pair`` ``[n_loops, B]``: the pair whose key is the entity reached after t
        hops — reading it gives hop t+1 — or −1 once the fixed point is reached (t ≥ depth)."""
        ids = batch.input_ids
        B, T = ids.shape
        P = (T - 1) // 2
        key_pos = torch.arange(0, 2 * P, 2)
        positions = torch.stack([key_pos, key_pos + 1], -1).expand(B, P, 2).clone()
        key_entity = ids[:, 0 : 2 * P : 2] - 1
        chain = torch.cat([batch.start.view(B, 1), batch.hop_entities], 1)
        expected = torch.full((n_loops, B), -1, dtype=torch.long)
        for t in range(min(n_loops, chain.shape[1] - 1)):
            slot = (key_entity == chain[:, t : t + 1]).to(torch.long).argmax(1)
            expected[t] = torch.where(batch.hops > t, slot, torch.full_like(slot, -1))
        return {"pair_positions": positions, "expected_pair": expected}

    def corrupt(self, batch: TaskBatch, seed: int = 0) -> TaskBatch:
        """The same contexts with a start at the same depth on another chain (so the answer,
        another fixed point, differs): the corrupted run of activation patching. The choice
        depends only on `seed` and the example's own tokens."""
        f = batch.function.numpy()
        start, depth = batch.start.numpy().copy(), batch.hops.numpy()
        B = f.shape[0]
        new = start.copy()
        for b in range(B):
            digest = hashlib.blake2b(batch.input_ids[b].numpy().astype("<i8").tobytes(),
                                     digest_size=8).digest()  # fmt: skip
            rng = np.random.default_rng([int(seed), int.from_bytes(digest, "little")])
            ends = {x: _end(f[b], x) for x in range(f.shape[1]) if f[b, x] >= 0}
            same_depth = [x for x in ends if _depth(f[b], x) == depth[b]]
            others = [x for x in same_depth if ends[x] != ends[start[b]]] or [
                x for x in ends if x != start[b]
            ]  # fmt: skip
            new[b] = rng.choice(others)
        ids = batch.input_ids.clone()
        ids[:, -1] = torch.from_numpy(self.key_id(new))
        rows = np.arange(B)
        hop = np.empty_like(batch.hop_entities.numpy())
        cur = new.copy()
        for j in range(hop.shape[1]):
            cur = f[rows, cur]
            hop[:, j] = cur
        answer = hop[rows, depth - 1]
        return TaskBatch(input_ids=ids, answer=torch.from_numpy(self.value_id(answer)),
                         answer_entity=torch.from_numpy(answer),
                         hop_entities=torch.from_numpy(hop), hops=batch.hops.clone(),
                         start=torch.from_numpy(new), function=batch.function.clone())  # fmt: skip


def _end(f: np.ndarray, x: int) -> int:
    for _ in range(f.shape[0] + 1):
        if f[x] == x:
            return x
        x = int(f[x])
    return x


def _depth(f: np.ndarray, x: int) -> int:
    k = 0
    while f[x] != x and k <= f.shape[0]:
        x, k = int(f[x]), k + 1
    return k
