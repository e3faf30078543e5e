"""What every task returns: a batch of token ids with the ground truth of every intermediate step."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from mythos_lens.errors import MythosLensError

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class TaskBatch:
    """A batch of task examples; every tensor is on the CPU and has a leading batch axis ``B``.

    Fields:
        input_ids     ``[B, T]`` int64 token ids; the answer is predicted at the last position.
        answer        ``[B]`` int64 token id of the correct next token.
        answer_entity ``[B]`` int64 entity index of the answer (what ``answer`` encodes).
        hop_entities  ``[B, max_hops]`` int64: the entity reached after hop ``j + 1`` at column
                      ``j``; ``-1`` beyond the example's hop count. ``hop_entities[b, hops[b]-1]``
                      equals ``answer_entity[b]``.
        hops          ``[B]`` int64 number of hops the example asks for (1 … max_hops).
        start         ``[B]`` int64 start entity (hop 0).
        function      ``[B, n_entities]`` int64: the random function given in context,
                      ``function[b, k]`` is the value entity of key ``k``.
    """

    input_ids: torch.Tensor
    answer: torch.Tensor
    answer_entity: torch.Tensor
    hop_entities: torch.Tensor
    hops: torch.Tensor
    start: torch.Tensor
    function: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every field by name (for saving)."""
        return {
            "input_ids": self.input_ids,
            "answer": self.answer,
            "answer_entity": self.answer_entity,
            "hop_entities": self.hop_entities,
            "hops": self.hops,
            "start": self.start,
            "function": self.function,
        }

    def to(self, device: str | torch.device) -> TaskBatch:
        """The same batch with every tensor moved to `device`."""
        return TaskBatch(**{k: v.to(device) for k, v in self.tensors().items()})

    def select(self, mask: torch.Tensor) -> TaskBatch:
        """The examples where the boolean ``[B]`` `mask` is true."""
        return TaskBatch(**{k: v[mask] for k, v in self.tensors().items()})


def sequence_split(ids: np.ndarray, heldout_permille: int) -> np.ndarray:
    """Assign each input sequence to a split by a hash of its full token sequence.

    ``ids`` is ``[B, T]`` integers; returns a ``[B]`` bool array, True where the sequence belongs to
    the held-out split. The assignment depends only on the tokens, so a sequence can never be in
    both splits, whichever seed or generator produced it.
    """
    rows = np.ascontiguousarray(ids, dtype="<i4")
    out = np.empty(rows.shape[0], dtype=bool)
    for i, row in enumerate(rows):
        digest = hashlib.blake2b(row.tobytes(), digest_size=8, person=b"mythos-split").digest()
        out[i] = int.from_bytes(digest, "little") % 1000 < heldout_permille
    return out


def check_split(split: str) -> str:
    """Return `split` if it names a split, else raise MythosLensError."""
    if split not in SPLITS:
        raise MythosLensError(f"split {split!r}", f"one of {list(SPLITS)}")
    return split
