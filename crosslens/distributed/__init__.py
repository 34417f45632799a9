"""Crosscoder training across processes: a ``(data, snapshot)`` mesh under ``torchrun``.

- :func:`init_mesh` joins the job and lays out the mesh (NCCL on CUDA, gloo on CPU).
- :func:`shard_crosscoder` / :func:`full_crosscoder` split a crosscoder over the snapshot
  axis and put it back together; ``CrosscoderTrainer(..., mesh=...)`` does both for you.
- :func:`shard_batches` turns global ``[batch, S, d_in]`` batches into this rank's part.
- :func:`launched_by_torchrun` (from :mod:`crosslens.core.launch`) says whether there is a job to join.

See docs/DISTRIBUTED.md for the math, the communication per step and the launch lines.
"""

from crosslens.core.launch import launched_by_torchrun
from crosslens.distributed.batches import shard_batches
from crosslens.distributed.mesh import MeshLayout, init_mesh, shutdown

__all__ = [
    "MeshLayout",
    "init_mesh",
    "launched_by_torchrun",
    "shard_batches",
    "shutdown",
]
