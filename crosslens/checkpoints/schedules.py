"""Checkpoint schedules: Pythia's published steps, and picking n snapshots out of many."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from transformer_lens.loading_from_pretrained import PYTHIA_CHECKPOINTS, PYTHIA_V0_CHECKPOINTS

PYTHIA_STEPS: tuple[int, ...] = tuple(PYTHIA_CHECKPOINTS)
"""The 154 steps with a ``step{N}`` branch on every (v1) ``EleutherAI/pythia-*`` repo
(TransformerLens's table)."""

PYTHIA_V0_STEPS: tuple[int, ...] = tuple(PYTHIA_V0_CHECKPOINTS)
"""The ``-v0`` Pythia repos have only the every-1000 steps (TransformerLens's table)."""

Spacing = Literal["log", "linear"]


def spaced_steps(available_steps: Sequence[int], n: int, spacing: Spacing = "log") -> list[int]:
    """Pick `n` of `available_steps`, always keeping the first and the last.

    ``"log"`` aims at targets evenly spaced in log(1 + step), so the picks are dense early
    and sparse late (where features form fast, then settle); ``"linear"`` spaces them
    evenly in step. Each pick is the available step nearest its target, and the picks
    are distinct. Asking for at least as many steps as there are returns them all;
    ``n=1`` returns the last step alone.

    >>> spaced_steps([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000], 4)
    [0, 8, 128, 1000]
    >>> spaced_steps(PYTHIA_STEPS, 8)
    [0, 4, 32, 128, 1000, 5000, 27000, 143000]
    """
    steps = sorted(set(int(s) for s in available_steps))
    if len(steps) != len(available_steps):
        raise ValueError(f"available_steps has repeated steps; pass each step once: {list(available_steps)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if spacing not in ("log", "linear"):
        raise ValueError(f"spacing must be 'log' or 'linear', got {spacing!r}")
    if n >= len(steps):
        return steps
    if n == 1:
        return [steps[-1]]
    if steps[0] < 0:
        raise ValueError(f"steps must be non-negative, got {steps[0]}")

    warp = math.log1p if spacing == "log" else float
    coords = [warp(s) for s in steps]
    # Walk left to right, aiming each pick at an even share of what is left of the range
    # (measured from the previous pick), so a pick forced right by a crowded early stretch
    # re-spaces the rest instead of bunching them at the end.
    picks = [0]
    for k in range(1, n - 1):
        remaining = n - k
        previous = picks[-1]
        target = coords[previous] + (coords[-1] - coords[previous]) / remaining
        candidates = range(previous + 1, len(steps) - remaining + 1)
        picks.append(min(candidates, key=lambda i: abs(coords[i] - target)))
    picks.append(len(steps) - 1)
    return [steps[i] for i in picks]


def nearest_steps(step: int, available_steps: Sequence[int], k: int = 4) -> list[int]:
    """Up to `k` available steps around `step`: half the closest below it, half above,
    the other side making up any shortfall. Sorted by step."""
    steps = sorted(set(available_steps))
    below = [s for s in steps if s < step][::-1]
    above = [s for s in steps if s >= step]
    n_below = min(len(below), max(k // 2, k - len(above)))
    n_above = min(len(above), k - n_below)
    return sorted(below[:n_below] + above[:n_above])
