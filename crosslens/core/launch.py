"""Whether this process was started by ``torchrun``, and which worker it is.

``torchrun`` starts one process per worker and tells each who it is through environment
variables: ``WORLD_SIZE`` (how many), ``RANK`` (which, across machines) and ``LOCAL_RANK``
(which, on this machine; it picks the GPU). A process started any other way is a job of
one, rank 0. Every stage that behaves differently under ``torchrun`` (joining the process
group, printing once, writing once, choosing a GPU) asks here, and reads only the
environment, so asking is free and joins nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def launched_by_torchrun() -> bool:
    """True inside a ``torchrun`` worker (WORLD_SIZE and RANK set by the launcher)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank() -> int:
    """This worker's global rank (0 outside ``torchrun``)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many workers the job has (1 outside ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """How many of the job's workers run on this machine (1 outside ``torchrun``)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is the worker that prints and writes for the whole job (rank 0)."""
    return rank() == 0


def local_rank_device(device: str | torch.device) -> str:
    """Under torchrun, CUDA means this worker's own GPU (``cuda:LOCAL_RANK``); else ``device``."""
    device = str(device)
    if device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device
