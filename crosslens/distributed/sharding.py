"""Split a crosscoder over the snapshot axis of a mesh, and put it back together.

A snapshot rank holds ``W_enc[S_r]``, ``W_dec[:, S_r]``, ``b_dec[S_r]`` (and the folded
factors ``[S_r]``) of its block ``S_r`` of snapshots, as an ordinary crosscoder module
whose ``cfg.n_snapshots`` is ``|S_r|``; ``b_enc`` and per-feature parameters (JumpReLU's
threshold) are replicated. Adam's moments follow their parameters. Gathering returns the
state of the single-process crosscoder, so checkpoints are written in the ordinary
SAELens layout and a run saved by any mesh resumes on any other. It is gathered on rank 0
alone, in host memory, one tensor at a time: the mesh exists because the whole crosscoder
does not fit one GPU, and rank 0 alone writes it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from crosslens.crosscoders.base import SNAPSHOT_AXES, CrosscoderMixin
from crosslens.crosscoders.collectives import LocalCollectives, MeshCollectives
from crosslens.distributed.mesh import MeshLayout, snapshot_blocks


def _local_config(cfg: Any, n_local: int) -> Any:
    local = dataclasses.replace(cfg, n_snapshots=n_local)
    local.metadata = copy.deepcopy(cfg.metadata)
    return local


def slice_state_dict(state: Mapping[str, torch.Tensor], block: range) -> dict[str, torch.Tensor]:
    """The entries of a full crosscoder state dict that a rank holding ``block`` keeps."""
    out = {}
    for name, tensor in state.items():
        axis = SNAPSHOT_AXES.get(name)
        out[name] = tensor if axis is None else tensor.narrow(axis, block.start, len(block)).clone()
    return out


def read_state_block(path: str | Path, block: range) -> dict[str, torch.Tensor]:
    """The entries of a saved whole crosscoder (a safetensors file) that a rank holding ``block``
    keeps, read without the rest of the file: :func:`slice_state_dict` of the file's state."""
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            axis = SNAPSHOT_AXES.get(name)
            if axis is None:
                out[name] = f.get_tensor(name)
                continue
            view = f.get_slice(name)
            index = [slice(None)] * len(view.get_shape())
            index[axis] = slice(block.start, block.stop)
            out[name] = view[tuple(index)]
    return out


def shard_crosscoder(full: nn.Module, layout: MeshLayout, collectives: LocalCollectives) -> nn.Module:
    """This rank's block of ``full`` (a crosscoder over every snapshot), wired to ``collectives``."""
    if not isinstance(full, CrosscoderMixin):
        raise TypeError(f"shard_crosscoder takes a crosscoder, got {type(full).__name__}.")
    if full.cfg.n_snapshots != layout.n_snapshots:
        raise ValueError(
            f"the crosscoder has {full.cfg.n_snapshots} snapshots but the mesh was laid out for {layout.n_snapshots}."
        )
    block = layout.snapshots
    if layout.snapshot_size == 1:
        local = full
    else:
        # building the shard draws random init that is overwritten at once; keep the
        # caller's RNG stream where it was so sharding changes no later random draw
        with torch.random.fork_rng(devices=[]):
            local = type(full)(_local_config(full.cfg, len(block)))
        local.load_state_dict(slice_state_dict(full.state_dict(), block))
        local = local.to(full.W_dec.device)
    local.collectives = collectives
    return local


def _gather_snapshot_axis(
    tensor: torch.Tensor, axis: int, layout: MeshLayout, collectives: MeshCollectives
) -> torch.Tensor | None:
    """Every snapshot rank's block of ``tensor`` concatenated along ``axis``, in host memory on
    rank 0, None elsewhere (uneven blocks padded on the way). Only the snapshot group of data
    rank 0 sends: the other data ranks hold the same blocks."""
    if layout.data_rank != 0:
        return None
    blocks = snapshot_blocks(layout.n_snapshots, layout.snapshot_size)
    widest = max(len(b) for b in blocks)
    part = tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    pad = widest - part.shape[axis]
    if pad:
        shape = list(part.shape)
        shape[axis] = pad
        part = torch.cat([part, part.new_zeros(shape)], dim=axis)
    parts = [torch.empty_like(part) for _ in blocks] if layout.is_main else None
    dist.gather(part, parts, dst=0, group=collectives.snapshot_group)
    if parts is None:
        return None
    return torch.cat([p.narrow(axis, 0, len(b)) for p, b in zip(parts, blocks)], dim=axis)


def _on_main(tensor: torch.Tensor, layout: MeshLayout) -> torch.Tensor | None:
    """A tensor every rank holds whole, in host memory on rank 0 (None elsewhere)."""
    return tensor.detach().to("cpu", copy=True) if layout.is_main else None


@torch.no_grad()
def gather_state_dict(
    local: nn.Module, layout: MeshLayout, collectives: LocalCollectives
) -> dict[str, torch.Tensor] | None:
    """The full crosscoder's state dict in host memory on rank 0, None elsewhere (a collective:
    call it on all ranks)."""
    state = local.state_dict()
    gathered = {}
    for name, tensor in state.items():
        if layout.snapshot_size == 1 or name not in SNAPSHOT_AXES:
            gathered[name] = _on_main(tensor, layout)
        else:
            assert isinstance(collectives, MeshCollectives)
            gathered[name] = _gather_snapshot_axis(tensor, SNAPSHOT_AXES[name], layout, collectives)
    return gathered if layout.is_main else None


def full_crosscoder(local: nn.Module, layout: MeshLayout, collectives: LocalCollectives) -> nn.Module | None:
    """A plain (single-process) copy of the whole crosscoder, in host memory on rank 0, None
    elsewhere (a collective). Its config names the device the run trains on, as a one-process
    run's does."""
    state = gather_state_dict(local, layout, collectives)
    if state is None:
        return None
    config = dataclasses.replace(_local_config(local.cfg, layout.n_snapshots), device="cpu")
    with torch.random.fork_rng(devices=[]):
        full = type(local)(config)
    full.load_state_dict(state, assign=True)  # the gathered tensors are fresh copies: no second copy
    full.cfg.device = local.cfg.device
    return full


# ----------------------------------------------------------------- optimizer state
def parameter_names(optimizer: torch.optim.Optimizer, module: nn.Module) -> list[str]:
    """Names of the optimizer's parameters in its state-dict index order."""
    name_of = {id(p): name for name, p in module.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


@torch.no_grad()
def gather_optimizer_state(
    optimizer: torch.optim.Optimizer,
    module: nn.Module,
    layout: MeshLayout,
    collectives: LocalCollectives,
) -> dict[str, Any] | None:
    """The optimizer state dict the single-process crosscoder would have, in host memory on rank 0,
    None elsewhere (a collective)."""
    state = optimizer.state_dict()
    if layout.snapshot_size == 1:
        return state if layout.is_main else None
    assert isinstance(collectives, MeshCollectives)
    names = parameter_names(optimizer, module)
    gathered = {}
    for index, per_param in state["state"].items():
        axis = SNAPSHOT_AXES.get(names[index])
        gathered[index] = {
            key: (
                _gather_snapshot_axis(value, axis, layout, collectives)
                if axis is not None and torch.is_tensor(value) and value.ndim > 0
                else value
            )
            for key, value in per_param.items()
        }
    if not layout.is_main:
        return None
    return {"state": gathered, "param_groups": state["param_groups"]}


def slice_optimizer_state(state: Mapping[str, Any], names: list[str], block: range) -> dict[str, Any]:
    """This rank's part of a full optimizer state dict (Adam moments follow their parameters;
    keys beside ``state`` and ``param_groups``, an optimizer's own, are kept)."""
    sliced = {}
    for index, per_param in state["state"].items():
        axis = SNAPSHOT_AXES.get(names[int(index)])
        sliced[index] = {
            key: (
                value.narrow(axis, block.start, len(block)).clone()
                if axis is not None and torch.is_tensor(value) and value.ndim > 0
                else value
            )
            for key, value in per_param.items()
        }
    return {**state, "state": sliced, "param_groups": copy.deepcopy(state["param_groups"])}


# ------------------------------------------------------------------- gradients
def reduce_gradients(module: nn.Module, collectives: LocalCollectives) -> None:
    """Turn each rank's gradient of its loss share into the gradient of the total loss.

    Snapshot shards are summed over the data axis (their other contributions already
    arrived through the differentiable all-reduces); replicated parameters are summed
    over the whole mesh. Gradients are packed into one flat buffer per group so each
    group costs one all-reduce.
    """
    if not isinstance(collectives, MeshCollectives) or collectives.world_size == 1:
        return
    sharded, replicated = [], []
    for name, p in module.named_parameters():
        if p.grad is None:
            continue
        (sharded if name in SNAPSHOT_AXES else replicated).append(p.grad)
    if collectives.data_size > 1:
        _all_reduce_flat(sharded, collectives.data_group)
    _all_reduce_flat(replicated, None)


def _all_reduce_flat(grads: list[torch.Tensor], group: Any) -> None:
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def grad_norm(module: nn.Module, collectives: LocalCollectives) -> torch.Tensor:
    """The whole crosscoder's gradient 2-norm (over every rank's snapshot block on a mesh),
    as ``torch.nn.utils.clip_grad_norm_`` computes it on the single-process crosscoder: one
    read of the gradients, no host sync."""
    grads = [(name, p.grad) for name, p in module.named_parameters() if p.grad is not None]
    if not isinstance(collectives, MeshCollectives):
        norms = torch._foreach_norm([g for _, g in grads], 2.0)
        return torch.linalg.vector_norm(torch.stack([n.to(grads[0][1].device) for n in norms]), 2.0)
    device = grads[0][1].device
    sharded_sq = torch.zeros((), dtype=torch.float32, device=device)
    replicated_sq = torch.zeros((), dtype=torch.float32, device=device)
    for name, g in grads:
        sq = torch.linalg.vector_norm(g.float()).pow(2)
        if name in SNAPSHOT_AXES:
            sharded_sq = sharded_sq + sq
        else:
            replicated_sq = replicated_sq + sq
    if collectives.snapshot_size > 1:
        # the shares are added here in rank order, not by an all-reduce: past two ranks each
        # data rank's snapshot group would add them in an order of its own, and replicas of a
        # block that clip by norms a rounding apart drift apart unseen
        shares = [torch.empty_like(sharded_sq) for _ in range(collectives.snapshot_size)]
        dist.all_gather(shares, sharded_sq, group=collectives.snapshot_group)
        sharded_sq = shares[0]
        for share in shares[1:]:
            sharded_sq = sharded_sq + share
    return (sharded_sq + replicated_sq).sqrt()


def clip_coefficient(total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """What clipping multiplies the gradients by: ``min(1, max_norm / (total + 1e-6))``, as
    ``torch.nn.utils.clip_grad_norm_``."""
    return (max_norm / (total + 1e-6)).clamp(max=1.0)


def clip_grad_norm(module: nn.Module, max_norm: float, collectives: LocalCollectives) -> torch.Tensor:
    """Clip the whole crosscoder's gradient to ``max_norm`` (its global 2-norm), like
    ``torch.nn.utils.clip_grad_norm_`` on the single-process crosscoder."""
    if not isinstance(collectives, MeshCollectives):
        return torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    total = grad_norm(module, collectives)
    coef = clip_coefficient(total, max_norm)
    for p in module.parameters():
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))
    return total
