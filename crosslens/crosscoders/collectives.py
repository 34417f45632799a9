"""The collectives a crosscoder's training step needs, for one process or a device mesh.

A crosscoder couples its snapshots in a handful of places: the shared pre-activation
sums every snapshot's encoding, the ReLU/TopK/BatchTopK scores read
``sum_s ||W_dec[i, s]||``, JumpReLU's shared code asks whether a feature is on at *any*
snapshot, its sparsity averages over tokens *and* snapshots, and BatchTopK ranks the
whole batch. Each architecture calls these methods at exactly those places, so one code
path serves a single process (:class:`LocalCollectives`, every method the identity) and
a ``data x snapshot`` mesh (:class:`MeshCollectives`).

Loss convention on a mesh: every rank returns its *share* of the loss, and the shares
over all ranks add up to the single-process loss. Terms that only read this rank's
snapshots and tokens are summed over local tokens and divided by the global batch size
(:meth:`token_mean`); terms every rank of a snapshot group computes identically are
further divided by the group's size (:meth:`token_mean_replicated`); terms every rank
computes identically are divided by the world size (:meth:`replicated_share`).
Differentiable all-reduces (:meth:`snapshot_sum`, :meth:`world_sum`) sum the gradient
in backward, so each rank's parameters receive exactly the gradient of the total loss
from its tokens; :func:`crosslens.distributed.reduce_gradients` then sums shards' grads
over the data axis and replicated parameters' grads over the whole mesh.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.autograd import Function


def _float32_sum(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """Every rank's ``tensor`` summed in float32, returned in its own dtype: a bfloat16 share (a
    partial pre-activation under autocast) summed in bfloat16 would round at every addition,
    where one process's matmul rounds once."""
    out = tensor.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.to(tensor.dtype)


class _AllReduceSum(Function):
    """all-reduce(SUM) whose backward is all-reduce(SUM) of the gradient: the gradient of
    ``sum_r L_r`` when every rank's loss share ``L_r`` reads the reduced tensor. Both sums run
    in float32 (:func:`_float32_sum`)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _float32_sum(tensor, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return _float32_sum(grad, ctx.group), None


class LocalCollectives:
    """One process holds every snapshot and the whole batch: every collective is the identity."""

    data_size = 1
    snapshot_size = 1
    world_size = 1
    is_distributed = False

    def __init__(self, n_snapshots_total: int | None = None) -> None:
        self.n_snapshots_total = n_snapshots_total

    # ------------------------------------------------------------ snapshot axis
    def snapshot_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the snapshot axis (differentiable)."""
        return tensor

    def snapshot_any(self, mask: torch.Tensor) -> torch.Tensor:
        """Logical OR over the snapshot axis (no gradient)."""
        return mask

    # ---------------------------------------------------------------- data axis
    def global_batch(self, n_local: int) -> int:
        """Tokens in the global batch when this rank holds ``n_local`` of them."""
        return n_local

    def data_any(self, mask: torch.Tensor) -> torch.Tensor:
        """Logical OR over the data axis (no gradient)."""
        return mask

    def data_min(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise minimum over the data axis (no gradient)."""
        return tensor

    def data_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over the data axis (no gradient)."""
        return tensor

    def data_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally shaped tensors of every data rank along dim 0 (no gradient)."""
        return tensor

    # -------------------------------------------------------------- whole mesh
    def world_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over every rank (differentiable)."""
        return tensor

    def world_sum_floats(self, values: list[float]) -> list[float]:
        """Each of some Python numbers summed over every rank, in one collective."""
        return list(values)

    # ------------------------------------------------------------- loss shares
    def mean_over_snapshots_and_tokens(self, values_SNF: torch.Tensor) -> torch.Tensor:
        """``[F]`` mean over every snapshot and every token of the batch (differentiable)."""
        return values_SNF.mean(dim=(0, 1))

    def token_mean(self, per_token_N: torch.Tensor) -> torch.Tensor:
        """This rank's share of a batch mean of per-token terms local to its snapshots."""
        return per_token_N.mean()

    def token_mean_replicated(self, per_token_N: torch.Tensor) -> torch.Tensor:
        """This rank's share of a batch mean that every rank of its snapshot group computes."""
        return per_token_N.mean()

    def replicated_share(self, value: torch.Tensor) -> torch.Tensor:
        """This rank's share of a term every rank computes identically."""
        return value


class MeshCollectives(LocalCollectives):
    """Collectives over a 2-D ``(data, snapshot)`` mesh of ``torch.distributed`` ranks.

    ``data_group`` links the ranks that hold the same snapshots and different tokens;
    ``snapshot_group`` links the ranks that hold the same tokens and different snapshots.
    """

    is_distributed = True

    def __init__(
        self,
        *,
        data_group: Any,
        snapshot_group: Any,
        data_size: int,
        snapshot_size: int,
        n_snapshots_total: int,
    ) -> None:
        super().__init__(n_snapshots_total)
        self.data_group = data_group
        self.snapshot_group = snapshot_group
        self.data_size = data_size
        self.snapshot_size = snapshot_size
        self.world_size = data_size * snapshot_size

    def snapshot_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.snapshot_size == 1:
            return tensor
        return _AllReduceSum.apply(tensor, self.snapshot_group)

    def snapshot_any(self, mask: torch.Tensor) -> torch.Tensor:
        return self._any(mask, self.snapshot_group, self.snapshot_size)

    def global_batch(self, n_local: int) -> int:
        # every data rank holds an equal slice of the batch (see shard_batch)
        return n_local * self.data_size

    def data_any(self, mask: torch.Tensor) -> torch.Tensor:
        return self._any(mask, self.data_group, self.data_size)

    def data_min(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.data_size == 1:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.MIN, group=self.data_group)
        return out

    def data_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.data_size == 1:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.data_group)
        return out

    def data_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.data_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.data_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.data_group)
        return torch.cat(parts)

    def world_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        return _AllReduceSum.apply(tensor, None)

    def world_sum_floats(self, values: list[float]) -> list[float]:
        out = torch.tensor(values, dtype=torch.float64, device=_group_device())
        dist.all_reduce(out)
        return out.tolist()

    def mean_over_snapshots_and_tokens(self, values_SNF: torch.Tensor) -> torch.Tensor:
        n_tokens = self.global_batch(values_SNF.shape[1])
        return self.world_sum(values_SNF.sum(dim=(0, 1))) / (n_tokens * self.n_snapshots_total)

    def token_mean(self, per_token_N: torch.Tensor) -> torch.Tensor:
        return per_token_N.sum() / self.global_batch(per_token_N.shape[0])

    def token_mean_replicated(self, per_token_N: torch.Tensor) -> torch.Tensor:
        return self.token_mean(per_token_N) / self.snapshot_size

    def replicated_share(self, value: torch.Tensor) -> torch.Tensor:
        return value / self.world_size

    @staticmethod
    def _any(mask: torch.Tensor, group: Any, size: int) -> torch.Tensor:
        if size == 1:
            return mask
        # a byte per flag (a quarter of int32's traffic), contiguous for the collective
        as_bytes = mask.to(torch.uint8, memory_format=torch.contiguous_format)
        dist.all_reduce(as_bytes, op=dist.ReduceOp.MAX, group=group)
        return as_bytes.bool()


def _group_device() -> torch.device:
    """The device collectives of the default group run on (CUDA for NCCL, else CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
