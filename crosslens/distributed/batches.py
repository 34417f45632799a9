"""This rank's part of global ``[batch, S, d_in]`` batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from jaxtyping import Float

from crosslens.distributed.mesh import MeshLayout


def shard_batches(
    batches: Iterable[Float[torch.Tensor, "batch n_snapshots d_in"]], layout: MeshLayout
) -> Iterator[Float[torch.Tensor, "batch_local n_snapshots_local d_in"]]:
    """Rows ``layout.batch_rows(batch)`` and snapshots ``layout.snapshots`` of each batch.

    Every rank must read the same global batches (same store, seed and batch size). A
    source that can read only this rank's snapshots and rows should do so instead; the
    result is the same.
    """
    block = layout.snapshots
    for batch_BSD in batches:
        if batch_BSD.shape[1] != layout.n_snapshots:
            raise ValueError(
                f"global batches must hold all {layout.n_snapshots} snapshots, got shape {tuple(batch_BSD.shape)}."
            )
        rows = layout.batch_rows(batch_BSD.shape[0])
        yield batch_BSD[rows, block.start : block.stop]
