"""Process layout for ``torchrun``: a 2-D ``(data, snapshot)`` device mesh.

Rank ``r`` sits at ``(data_rank, snapshot_rank) = divmod(r, snapshot_size)``. Ranks that
share a ``data_rank`` see the same tokens and hold different snapshots (a *snapshot
group*); ranks that share a ``snapshot_rank`` hold the same snapshots and see different
tokens (a *data group*). Snapshots are split into contiguous blocks, the first
``S % snapshot_size`` blocks one larger, so any S works with any snapshot axis size.

NCCL is used on CUDA and gloo on CPU (:mod:`crosslens.core.process_group`). Every collective,
the axis groups' included, has the job's timeout, so a rank that dies makes its peers fail
with an error instead of waiting forever (``torchrun`` also stops the whole job when one
worker exits non-zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from crosslens.core.launch import world_size
from crosslens.core.process_group import collective_timeout, join_process_group
from crosslens.crosscoders.collectives import LocalCollectives, MeshCollectives


def snapshot_blocks(n_snapshots: int, snapshot_size: int) -> list[range]:
    """Contiguous blocks of snapshot indices, one per snapshot rank, sizes differing by at most 1."""
    if snapshot_size < 1:
        raise ValueError(f"the snapshot axis needs at least 1 rank, got {snapshot_size}.")
    if snapshot_size > n_snapshots:
        raise ValueError(
            f"{snapshot_size} snapshot ranks for {n_snapshots} snapshots would leave ranks "
            f"with no snapshot; use --snapshot-parallel <= {n_snapshots}."
        )
    base, extra = divmod(n_snapshots, snapshot_size)
    blocks, start = [], 0
    for r in range(snapshot_size):
        size = base + (1 if r < extra else 0)
        blocks.append(range(start, start + size))
        start += size
    return blocks


@dataclass(frozen=True)
class MeshLayout:
    """Where this process sits in the ``(data, snapshot)`` mesh."""

    data_size: int
    """Ranks along the data axis (each sees 1/data_size of every batch)."""
    snapshot_size: int
    """Ranks along the snapshot axis (each holds a block of snapshots)."""
    rank: int
    """This process's global rank."""
    n_snapshots: int
    """Snapshots in the whole crosscoder."""

    def __post_init__(self) -> None:
        if self.data_size < 1 or self.snapshot_size < 1:
            raise ValueError(f"mesh axes must be >= 1, got data={self.data_size}, snapshot={self.snapshot_size}.")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}.")
        snapshot_blocks(self.n_snapshots, self.snapshot_size)  # validates the split

    @property
    def world_size(self) -> int:
        return self.data_size * self.snapshot_size

    @property
    def data_rank(self) -> int:
        return self.rank // self.snapshot_size

    @property
    def snapshot_rank(self) -> int:
        return self.rank % self.snapshot_size

    @property
    def snapshots(self) -> range:
        """Indices of the snapshots this rank holds."""
        return snapshot_blocks(self.n_snapshots, self.snapshot_size)[self.snapshot_rank]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batch_rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch (equal contiguous slices over the data axis)."""
        if batch_size % self.data_size:
            raise ValueError(
                f"batch size {batch_size} does not split evenly over {self.data_size} data "
                f"ranks; use a --batch-size divisible by {self.data_size}."
            )
        per_rank = batch_size // self.data_size
        return slice(self.data_rank * per_rank, (self.data_rank + 1) * per_rank)


def init_mesh(
    n_snapshots: int,
    *,
    snapshot_parallel: int = 1,
    device: str | torch.device = "cpu",
    timeout_s: float | None = None,
) -> tuple[MeshLayout, MeshCollectives, torch.device]:
    """Join the ``torchrun`` job and build the ``(data, snapshot)`` mesh.

    ``snapshot_parallel`` ranks share the snapshots; the remaining factor of the world
    size is the data axis. Returns the layout, its collectives and this rank's device
    (``cuda:LOCAL_RANK`` on CUDA).
    """
    n_ranks = world_size()
    if n_ranks % snapshot_parallel:
        raise ValueError(
            f"--snapshot-parallel {snapshot_parallel} does not divide the {n_ranks} "
            "processes; pick a divisor of --nproc_per_node."
        )
    device = join_process_group(device, timeout_s)
    data_size = n_ranks // snapshot_parallel
    layout = MeshLayout(
        data_size=data_size,
        snapshot_size=snapshot_parallel,
        rank=dist.get_rank(),
        n_snapshots=n_snapshots,
    )
    data_group, snapshot_group = _axis_groups(layout, collective_timeout(timeout_s))
    collectives = MeshCollectives(
        data_group=data_group,
        snapshot_group=snapshot_group,
        data_size=data_size,
        snapshot_size=snapshot_parallel,
        n_snapshots_total=n_snapshots,
    )
    return layout, collectives, device


def _axis_groups(layout: MeshLayout, timeout) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """This rank's data group (the ranks of its snapshot block) and snapshot group (the ranks of
    its data slice), each with the job's timeout (a group made without one would wait torch's
    default)."""
    D, S = layout.data_size, layout.snapshot_size
    data, _ = dist.new_subgroups_by_enumeration([[d * S + s for d in range(D)] for s in range(S)], timeout=timeout)
    snapshot, _ = dist.new_subgroups_by_enumeration([[d * S + s for s in range(S)] for d in range(D)], timeout=timeout)
    return data, snapshot


def local_layout(n_snapshots: int) -> tuple[MeshLayout, LocalCollectives]:
    """The trivial 1 x 1 layout of a plain process."""
    return MeshLayout(1, 1, 0, n_snapshots), LocalCollectives(n_snapshots)


def shutdown(*, wait: bool = True) -> None:
    """Leave the job cleanly: exiting with a live mesh aborts the process at teardown. ``wait``
    (a job that succeeded): at a barrier with the other workers first. A worker that failed
    leaves at once: the others may wait in a collective it will never join, and torchrun stops
    them when it exits."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
