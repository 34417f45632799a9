"""Seeded construction: every random choice made from a given seed, whatever ran before.

torch's default generator starts from a per-process random seed, so anything initialised
from it (a crosscoder's weights, an SAE's) differs between two identical runs unless it is
seeded right before. ``seeded`` does that without disturbing the caller's generators.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block with torch (CPU and ``device``), numpy and random seeded by ``seed``;
    the generators' previous states come back afterwards."""
    device = torch.device(device)
    on_accelerator = device.type not in ("cpu", "meta")
    fork = {"devices": [device.index or 0], "device_type": device.type} if on_accelerator else {"devices": []}
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(**fork):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
