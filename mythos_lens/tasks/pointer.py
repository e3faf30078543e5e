"""Pointer chasing over a random function given in context.

An example shows a random function ``f`` on ``E`` entities as ``E`` key/value pairs in random order,
then a hop-count token and a start key::

    k3 v1  k0 v5  k7 v1  …  k1 v1   h2  k3      ->  answer v(f(f(3)))

Values are drawn with replacement (``f`` is a random function, not a permutation: DESIGN.md §7 found
permutations do not train), keys and values live in separate vocabularies (value token = value
offset + entity). Every example carries the entity reached after each hop, not only the answer.

Token layout (``PointerLayout``), with ``E`` entities and ``H`` hop tokens::

    0                 <pad>   (never produced by the generator; for tools that batch ragged inputs)
    1 … E             k0 … k{E-1}   keys
    E+1 … 2E          v0 … v{E-1}   values (the answer is always a value token)
    2E+1 … 2E+H       h1 … hH       hop-count tokens
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mythos_lens.errors import MythosLensError, check_int
from mythos_lens.tasks.base import TaskBatch, check_split, sequence_split

PAD = 0


@dataclass(frozen=True)
class PointerLayout:
    """Which token ids are keys, values, hop counts and specials (see the module docstring)."""

    n_entities: int
    n_hop_tokens: int

    @property
    def key_offset(self) -> int:
        return 1

    @property
    def value_offset(self) -> int:
        return 1 + self.n_entities

    @property
    def hop_offset(self) -> int:
        """Token id of ``h1`` (hop count 1)."""
        return 1 + 2 * self.n_entities

    @property
    def vocab_size(self) -> int:
        """Number of ids the task uses (the model's vocabulary may be larger)."""
        return 1 + 2 * self.n_entities + self.n_hop_tokens

    def key_id(self, entity: int | np.ndarray) -> int | np.ndarray:
        return entity + self.key_offset

    def value_id(self, entity: int | np.ndarray) -> int | np.ndarray:
        return entity + self.value_offset

    def hop_id(self, hops: int | np.ndarray) -> int | np.ndarray:
        return hops - 1 + self.hop_offset

    def value_ids(self) -> list[int]:
        """The ids of every value token (the possible answers)."""
        return list(range(self.value_offset, self.value_offset + self.n_entities))

    def describe_token(self, token_id: int) -> str:
        """Readable name of one id: ``"<pad>"``, ``"k3"``, ``"v5"``, ``"h2"`` or ``"<unused:40>"``."""
        t = int(token_id)
        if t == PAD:
            return "<pad>"
        if self.key_offset <= t < self.value_offset:
            return f"k{t - self.key_offset}"
        if self.value_offset <= t < self.hop_offset:
            return f"v{t - self.value_offset}"
        if self.hop_offset <= t < self.vocab_size:
            return f"h{t - self.hop_offset + 1}"
        return f"<unused:{t}>"

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> list[str]:
        """Readable names of a 1-D sequence of ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.describe_token(i) for i in np.asarray(ids).reshape(-1).tolist()]

    def to_dict(self) -> dict[str, object]:
        """The layout as JSON: ranges per token kind and every id's name."""
        return {
            "n_entities": self.n_entities,
            "n_hop_tokens": self.n_hop_tokens,
            "vocab_size": self.vocab_size,
            "pad": PAD,
            "keys": [self.key_offset, self.value_offset - 1],
            "values": [self.value_offset, self.hop_offset - 1],
            "hops": [self.hop_offset, self.vocab_size - 1],
            "names": [self.describe_token(i) for i in range(self.vocab_size)],
        }


class PointerTask:
    """Pointer chasing in context: ``pairs…, h<j>, k<start>`` -> ``v<f^j(start)>``.

    Args:
        n_entities: number of entities ``E`` (keys and values), >= 2.
        train_hops: largest hop count used in training (``K``).
        max_hops: largest hop count ever generated (default ``2K``, for depth extrapolation).
        heldout_permille: share of all possible input sequences (in 1/1000) that belong to the
            held-out split; the split is decided by a hash of the full token sequence.
    """

    name = "pointer"

    def __init__(
        self,
        n_entities: int = 8,
        train_hops: int = 3,
        max_hops: int | None = None,
        heldout_permille: int = 200,
    ) -> None:
        self.n_entities = check_int("n_entities", n_entities, 2, 256)
        self.train_hops = check_int("train_hops", train_hops, 1, 64)
        max_hops = 2 * self.train_hops if max_hops is None else max_hops
        self.max_hops = check_int("max_hops", max_hops, self.train_hops, 128)
        self.heldout_permille = check_int("heldout_permille", heldout_permille, 1, 999)
        self.layout = PointerLayout(self.n_entities, self.max_hops)

    # -- description ---------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Length ``T`` of every input sequence: ``2E`` pair tokens + hop token + start key."""
        return 2 * self.n_entities + 2

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    def value_id(self, entity: int | np.ndarray) -> int | np.ndarray:
        """Token id of the value of `entity` (the answer token when `entity` is the end)."""
        return self.layout.value_id(entity)

    def describe_token(self, token_id: int) -> str:
        """Readable name of one token id (e.g. ``"k3"``)."""
        return self.layout.describe_token(token_id)

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> list[str]:
        """Readable names of a 1-D sequence of ids (e.g. ``["k3", "v1", …, "h2", "k3"]``)."""
        return self.layout.decode(ids)

    def spec(self) -> dict[str, object]:
        """Everything needed to rebuild this task (JSON-ready)."""
        return {
            "name": self.name,
            "n_entities": self.n_entities,
            "train_hops": self.train_hops,
            "max_hops": self.max_hops,
            "heldout_permille": self.heldout_permille,
            "seq_len": self.seq_len,
            "layout": self.layout.to_dict(),
        }

    # -- generation ----------------------------------------------------------------------------
    def _hop_choices(self, hops: int | Sequence[int] | None) -> np.ndarray:
        if hops is None:
            hops = list(range(1, self.train_hops + 1))
        elif isinstance(hops, (int, np.integer)) and not isinstance(hops, bool):
            hops = [hops]
        try:
            choices = list(hops)
        except TypeError:
            raise MythosLensError(f"hops={hops!r}", "an int or a list of ints") from None
        if not choices:
            raise MythosLensError("hops=[]", "at least one hop count")
        for h in choices:
            check_int("hops", h, 1, self.max_hops)
        return np.asarray(choices, dtype=np.int64)

    def _draw(self, rng: np.random.Generator, m: int, hop_choices: np.ndarray) -> dict:
        e = self.n_entities
        lay = self.layout
        function = rng.integers(0, e, size=(m, e))
        order = np.argsort(rng.random((m, e)), axis=1)  # key order in the context
        hops = hop_choices[rng.integers(0, len(hop_choices), size=m)]
        start = rng.integers(0, e, size=m)
        ids = np.empty((m, self.seq_len), dtype=np.int64)
        ids[:, 0 : 2 * e : 2] = lay.key_id(order)
        ids[:, 1 : 2 * e : 2] = lay.value_id(np.take_along_axis(function, order, axis=1))
        ids[:, -2] = lay.hop_id(hops)
        ids[:, -1] = lay.key_id(start)
        hop_entities = np.full((m, self.max_hops), -1, dtype=np.int64)
        cur = start.copy()
        rows = np.arange(m)
        for j in range(int(hops.max())):
            cur = function[rows, cur]
            live = hops > j
            hop_entities[live, j] = cur[live]
        answer_entity = hop_entities[rows, hops - 1]
        return {
            "input_ids": ids,
            "answer": lay.value_id(answer_entity),
            "answer_entity": answer_entity,
            "hop_entities": hop_entities,
            "hops": hops,
            "start": start,
            "function": function,
        }

    def generate(
        self,
        n: int,
        split: str = "train",
        seed: int | np.random.Generator = 0,
        hops: int | Sequence[int] | None = None,
    ) -> TaskBatch:
        """Draw `n` examples of `split` with hop counts uniform over `hops` (default 1 … K).

        `seed` is an int (same seed -> same data) or a numpy Generator (advanced in place, for a
        stream of batches). Candidates whose hashed input sequence belongs to the other split are
        rejected, so train and held-out inputs never coincide. Returns a ``TaskBatch`` with
        ``input_ids [n, 2E+2]`` and ``hop_entities [n, max_hops]``.
        """
        n = check_int("n", n, 1)
        split = check_split(split)
        if isinstance(seed, np.random.Generator):
            rng = seed
        else:
            check_int("seed", seed, 0)
            rng = np.random.default_rng([int(seed), 0 if split == "train" else 1])
        hop_choices = self._hop_choices(hops)
        want_heldout = split == "heldout"
        share = self.heldout_permille / 1000 if want_heldout else 1 - self.heldout_permille / 1000
        parts: list[dict] = []
        have = 0
        while have < n:
            m = int((n - have) / share * 1.15) + 16
            draw = self._draw(rng, m, hop_choices)
            keep = sequence_split(draw["input_ids"], self.heldout_permille) == want_heldout
            parts.append({k: v[keep] for k, v in draw.items()})
            have += int(keep.sum())
        out = {k: torch.from_numpy(np.concatenate([p[k] for p in parts])[:n]) for k in parts[0]}
        return TaskBatch(**out)

    def in_heldout(self, input_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[B]`` bool: which of the ``[B, T]`` input sequences belong to the held-out split."""
        ids = input_ids.cpu().numpy() if isinstance(input_ids, torch.Tensor) else input_ids
        return torch.from_numpy(sequence_split(np.asarray(ids), self.heldout_permille))

    # -- ground truth for attention ------------------------------------------------------------
    def pair_truth(self, batch: TaskBatch, n_loops: int) -> dict[str, torch.Tensor]:
        """Where each key/value pair sits and which pair each loop step should read.

        Returns ``pair_positions`` ``[B, E, 2]`` (sequence positions of the key and value token
        of each context pair, in context order) and ``expected_pair`` ``[n_loops, B]``: the pair
        whose key is the entity reached after t hops (the start at t = 0) — reading it gives hop
        t+1 — or −1 when t >= the example's hop count (nothing is left to look up).
        """
        ids = batch.input_ids
        B, E = ids.shape[0], self.n_entities
        key_pos = torch.arange(0, 2 * E, 2)
        positions = torch.stack([key_pos, key_pos + 1], -1).expand(B, E, 2)
        key_entity = ids[:, 0 : 2 * E : 2] - self.layout.key_offset  # [B, E] in context order
        chain = torch.cat([batch.start.view(B, 1), batch.hop_entities], 1)  # after t hops
        expected = torch.full((n_loops, B), -1, dtype=torch.long)
        for t in range(min(n_loops, chain.shape[1] - 1)):
            live = batch.hops > t
            slot = (key_entity == chain[:, t : t + 1]).to(torch.long).argmax(1)
            expected[t] = torch.where(live, slot, torch.full_like(slot, -1))
        return {"pair_positions": positions.clone(), "expected_pair": expected}

    def corrupt(self, batch: TaskBatch, seed: int = 0) -> TaskBatch:
        """The same examples with another start key, chosen (seeded) so that the answer changes
        where any start gives a different answer: the corrupted run of activation patching.
        Everything but the start, the answer and the hop entities is unchanged. The choice
        depends only on `seed` and the example's own tokens, not on the rest of the batch."""
        f, hops = batch.function.numpy(), batch.hops.numpy()
        start = batch.start.numpy().copy()
        B, E = f.shape
        rows = np.arange(B)
        ends = np.tile(np.arange(E), (B, 1))  # f^hops of every possible start, per example
        for j in range(int(hops.max())):
            ends = np.where((hops > j)[:, None], np.take_along_axis(f, ends, 1), ends)
        answer = ends[rows, start]
        new = start.copy()
        rows_np = batch.input_ids.numpy().astype("<i8")
        for b in range(B):
            digest = hashlib.blake2b(rows_np[b].tobytes(), digest_size=8).digest()
            rng = np.random.default_rng([int(seed), int.from_bytes(digest, "little")])
            others = [s for s in range(E) if s != start[b]]
            differ = [s for s in others if ends[b, s] != answer[b]]
            new[b] = rng.choice(differ or others)
        ids = batch.input_ids.clone()
        ids[:, -1] = torch.from_numpy(self.layout.key_id(new))
        chain = np.full((B, self.max_hops), -1, dtype=np.int64)
        cur = new.copy()
        for j in range(int(hops.max())):
            cur = f[rows, cur]
            chain[hops > j, j] = cur[hops > j]
        entity = chain[rows, hops - 1]
        return TaskBatch(input_ids=ids, answer=torch.from_numpy(self.layout.value_id(entity)),
                         answer_entity=torch.from_numpy(entity),
                         hop_entities=torch.from_numpy(chain), hops=batch.hops.clone(),
                         start=torch.from_numpy(new), function=batch.function.clone())  # fmt: skip

    # -- baselines -----------------------------------------------------------------------------
    def chance(self, batch: TaskBatch) -> dict[int, dict[str, float]]:
        """Chance accuracy per hop count present in `batch`.

        ``uniform`` is ``1/E``. ``ignore_start`` is the accuracy of the best guess that knows the
        function but not the start key: the most frequent entity of ``f^j``'s image, averaged over
        the batch. It grows with ``j`` because iterates of a random function concentrate.
        """
        out: dict[int, dict[str, float]] = {}
        f = batch.function.numpy()
        hops = batch.hops.numpy()
        e = self.n_entities
        for j in sorted(set(hops.tolist())):
            fj = f[hops == j]
            cur = np.tile(np.arange(e), (fj.shape[0], 1))
            for _ in range(j):
                cur = np.take_along_axis(fj, cur, axis=1)
            counts = np.stack([(cur == v).sum(axis=1) for v in range(e)], axis=1)
            out[j] = {"uniform": 1.0 / e, "ignore_start": float((counts.max(axis=1) / e).mean())}
        return out
