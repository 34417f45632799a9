"""Seeding: every random choice made from a given seed, whatever ran before.

torch's default generator starts from a per-process random seed, so anything initialised
from it (a crosscoder's weights, an SAE's) differs between two identical runs unless it is
seeded right before. Two ways, one mechanism:

- :func:`seed_everything` seeds Python's ``random``, numpy and torch for the rest of the
  process (the trainer, at the start of a fresh run).
- :func:`seeded` seeds them for one ``with`` block and puts the caller's generators back
  afterwards (building a crosscoder inside a caller that has its own random state).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (CPU and every GPU) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block with torch (CPU and ``device``), numpy and random seeded by ``seed``;
    the generators' previous states come back afterwards."""
    device = torch.device(device)
    on_accelerator = device.type not in ("cpu", "meta")
    fork = {"devices": [device.index or 0], "device_type": device.type} if on_accelerator else {"devices": []}
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(**fork):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
