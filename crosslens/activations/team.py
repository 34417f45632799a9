"""The processes harvesting one activation store together: a ``torchrun`` job, or one process."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.launch import launched_by_torchrun
from crosslens.core.process_group import join_process_group

EXCHANGE_TIMEOUT = timedelta(days=7)
"""How long a harvesting rank waits for the others at a round's exchange: a round ends when its
slowest unit is written, which the job's collective timeout could not bound."""

T = TypeVar("T")

Unit = tuple[int, list[int]]
"""A rank's piece of a harvest: a snapshot, loaded once, and the shards of it to write."""


class HarvestTeam:
    """The processes harvesting one store together (a ``torchrun`` job), or one process.

    Work comes in units ``(snapshot, shards)``, each loading its snapshot once. With fewer
    ranks than snapshots, rank r takes snapshots r, r + W, ...; with more, the ranks that
    share a snapshot split its shards. Units run in rounds: after each, every rank's new
    files and snapshot records are gathered (:meth:`gather`) and merged identically everywhere
    (:meth:`HarvestManifest.merge <crosslens.activations.manifest.HarvestManifest.merge>`), and
    rank 0 alone writes the manifest, so the store has one writer and one manifest, and a killed
    job resumes from the last merged round. The team only moves records between ranks; what
    they mean is the manifest's.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, group: Any = None) -> None:
        self.rank, self.world_size = rank, world_size
        self.group = group
        """The gloo group the team's exchanges go through (None: the job's default group)."""

    @classmethod
    def from_torchrun(cls, device: str | torch.device = "cpu") -> "HarvestTeam":
        """The running ``torchrun`` job (joined here if needed, this worker's GPU current where
        ``device`` is CUDA), else a team of one."""
        import torch.distributed as dist

        if not launched_by_torchrun():
            return cls()
        join_process_group(device)
        # A round's exchange waits for the slowest rank's harvest of its unit, and the last round
        # for a whole snapshot where some ranks have none left: hours at a real suite's size,
        # far past the collectives' timeout, which stays for the training that may follow.
        group = dist.new_group(backend="gloo", timeout=EXCHANGE_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return "" if self.world_size == 1 else f" (rank 0's share of {self.world_size} ranks)"

    def units(self, n_snapshots: int, n_shards: int) -> list[Unit]:
        """This rank's ``(snapshot, shards)`` units, in the order it runs them."""
        W, r = self.world_size, self.rank
        if W <= n_snapshots:
            return [(s, list(range(n_shards))) for s in range(r, n_snapshots, W)]
        s, sharing = r % n_snapshots, len(range(r % n_snapshots, W, n_snapshots))
        mine = list(range(r // n_snapshots, n_shards, sharing))
        return [(s, mine)] if mine else []

    def n_rounds(self, n_snapshots: int, n_shards: int) -> int:
        return max(len(HarvestTeam(r, self.world_size).units(n_snapshots, n_shards)) for r in range(self.world_size))

    def share(self, value: T | None) -> T:
        """Rank 0's ``value``, on every rank."""
        if self.world_size == 1:
            assert value is not None
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, value, group=self.group)
        return everyone

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)
