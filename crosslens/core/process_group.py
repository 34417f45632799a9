"""Joining a ``torchrun`` job's process group, the one way every stage does it.

A worker's GPU is made current first: NCCL and the object collectives (``all_gather_object``,
``broadcast_object_list``) work on the current device, which would otherwise be GPU 0 on every
worker. Tensor collectives on CUDA go through NCCL, those on CPU tensors and Python objects
through gloo beside it. Every collective waits at most ``CROSSLENS_DIST_TIMEOUT`` seconds for
a peer, so a worker that hangs makes the others fail instead of waiting forever (``torchrun``
also stops the job when a worker exits non-zero).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING

from crosslens.core.launch import local_rank_device

if TYPE_CHECKING:
    import torch

DEFAULT_TIMEOUT_S = 600.0
"""Seconds a collective may wait for a peer before the job fails (CROSSLENS_DIST_TIMEOUT)."""


def collective_timeout(seconds: float | None = None) -> timedelta:
    """``seconds``, else ``CROSSLENS_DIST_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    if seconds is None:
        seconds = float(os.environ.get("CROSSLENS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    return timedelta(seconds=seconds)


def default_backend(device: str | torch.device) -> str:
    """NCCL for CUDA tensors, with gloo beside it for CPU tensors and Python objects."""
    import torch

    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


def join_process_group(device: str | torch.device, timeout_s: float | None = None) -> torch.device:
    """Join the job's process group unless this worker has (the first stage to join sets its
    timeout), with this worker's own GPU current where ``device`` is CUDA; returns that device."""
    import torch
    import torch.distributed as dist

    device = torch.device(local_rank_device(device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=default_backend(device), timeout=collective_timeout(timeout_s))
    return device
