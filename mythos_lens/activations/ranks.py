"""The processes of one collect run, through ``torch.distributed`` (gloo on CPU, NCCL on GPU).

A run launched by ``torchrun`` or ``accelerate launch`` finds ``RANK`` / ``WORLD_SIZE`` /
``MASTER_ADDR`` in its environment (:func:`process_group`); a library caller may initialise the
process group itself. Without one, a run is a single process and every collective is a no-op.
Collectives here: barrier, sum (``all_reduce``), JSON broadcast from rank 0 and JSON all-gather
(bytes in uint8 tensors: nothing is unpickled).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mythos_lens.errors import MythosLensError


@dataclass(frozen=True)
class Ranks:
    """This process's `rank` among `world` processes; `device` is where collectives run
    (CPU for gloo, this process's GPU for NCCL)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls) -> Ranks:
        """The initialised process group's ranks, or a single process."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.distributed:
            dist.barrier()

    def _collective(self, x: torch.Tensor, op: Any) -> torch.Tensor:
        """`op` on `x` in place, on the collectives' device (and `x` returned)."""
        if self.distributed:
            y = x.to(self.device)
            op(y)
            x.copy_(y.to(x.device))
        return x

    def sum_(self, x: torch.Tensor) -> torch.Tensor:
        """`x` summed over every rank, in place (and returned)."""
        return self._collective(x, lambda y: dist.all_reduce(y, op=dist.ReduceOp.SUM))

    def max_(self, x: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of `x` over every rank, in place (and returned)."""
        return self._collective(x, lambda y: dist.all_reduce(y, op=dist.ReduceOp.MAX))

    def broadcast_(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's `x` on every rank, in place (and returned)."""
        return self._collective(x, lambda y: dist.broadcast(y, src=0))

    def broadcast_json(self, obj: Any) -> Any:
        """Rank 0's `obj` (JSON-ready) on every rank."""
        if not self.distributed:
            return obj
        data = json.dumps(obj).encode() if self.rank == 0 else b""
        size = self.max_(torch.tensor([len(data)], dtype=torch.int64))
        buf = torch.zeros(int(size), dtype=torch.uint8)
        if self.rank == 0:
            buf[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return json.loads(bytes(self.broadcast_(buf).tolist()).decode())

    def gather_json(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (JSON-ready), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        data = json.dumps(obj).encode()
        sizes = torch.zeros(self.world, dtype=torch.int64)
        sizes[self.rank] = len(data)
        self.sum_(sizes)
        buf = torch.zeros(self.world, int(sizes.max()), dtype=torch.uint8)
        buf[self.rank, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.sum_(buf)  # each row is non-zero on its own rank only: the sum is a gather
        return [json.loads(bytes(buf[r, : int(sizes[r])].tolist()).decode())
                for r in range(self.world)]  # fmt: skip


@contextlib.contextmanager
def process_group(device: str | torch.device = "cpu") -> Iterator[Ranks]:
    """The process group a launcher (``torchrun``, ``accelerate launch``) describes in the
    environment, joined for the body (gloo on CPU, NCCL when `device` is CUDA) and left after
    it; a single process without a launcher, or the caller's group when one is initialised."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    joined = False
    if world > 1 and not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group("nccl" if cuda else "gloo")
        except (RuntimeError, ValueError) as exc:
            raise MythosLensError(f"could not join the process group ({exc})",
                                  "a launch by torchrun or accelerate launch") from None  # fmt: skip
        joined = True
    try:
        yield Ranks.current()
    finally:
        if joined:
            dist.destroy_process_group()


def process_device(device: str | torch.device, ranks: Ranks) -> torch.device:
    """Where this process runs its model: ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", ranks.rank)))
    return d
