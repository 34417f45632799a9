"""The random draws behind a planted set: schedules, firing probabilities, directions.

:meth:`crosslens.analysis.synthetic.PlantedEvolution.build` calls these in a fixed order
from one generator, so a config builds the same set every time; the optional draws come
after the base ones, so a config that leaves an option off draws the same set as one
that never had it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crosslens.analysis.evolution import NO_STEP

PlantedConfig = Any
"""A :class:`crosslens.analysis.synthetic.PlantedConfig`, named here without importing that
module, which imports this one."""

_EPS = 1e-12


def firing_probabilities(config: PlantedConfig, u_F: torch.Tensor) -> torch.Tensor:
    """Per-feature firing probabilities from uniform draws ``u_F`` in [0, 1)."""
    lo, hi = config.firing_prob_min, config.firing_prob_max
    if config.firing_log_uniform:
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u_F)
    return lo + (hi - lo) * u_F


def plant_schedules(config: PlantedConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Emergence and fade snapshot of every feature, spread evenly over the snapshots."""
    n_snap = config.n_snapshots
    n_persistent = config.n_features - config.n_initialization - config.n_initialization_fading - config.n_transient
    emergence: list[int] = []
    fade: list[int] = []
    emergence += [0] * config.n_initialization
    fade += [NO_STEP] * config.n_initialization
    for k in range(config.n_initialization_fading):
        emergence.append(0)
        fade.append(1 + k % (n_snap - 1))
    # Transient windows [e, f) with 1 <= e < f <= n_snap - 1, cycled so every snapshot is used.
    windows = [(e, f) for e in range(1, n_snap - 1) for f in range(e + 1, n_snap)]
    if config.transient_lengths is not None:
        windows = [(e, f) for e, f in windows if f - e in config.transient_lengths]
    order = torch.randperm(len(windows), generator=gen).tolist()
    for k in range(config.n_transient):
        e, f = windows[order[k % len(windows)]]
        emergence.append(e)
        fade.append(f)
    first = config.persistent_emergence_min
    for k in range(n_persistent):
        emergence.append(first + k % (n_snap - first))
        fade.append(NO_STEP)
    perm = torch.randperm(config.n_features, generator=gen)
    return torch.tensor(emergence)[perm], torch.tensor(fade)[perm]


def spread_directions(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` unit vectors in ``d`` dims: orthonormal when ``n <= d``, otherwise spread apart
    with SAELens's synthetic-data orthogonaliser (superposition)."""
    if n <= d:
        q_DN, _ = torch.linalg.qr(torch.randn(d, n, generator=gen))
        return q_DN.T.contiguous()
    from sae_lens.synthetic import orthogonalize_embeddings

    return orthogonalize_embeddings(torch.randn(n, d, generator=gen), num_steps=100)


def drift(start_FD: torch.Tensor, n_snapshots: int, cosine: float, gen: torch.Generator) -> torch.Tensor:
    """Random walk on the sphere with a fixed cosine between consecutive steps."""
    sine = math.sqrt(max(0.0, 1.0 - cosine**2))
    current_FD = start_FD / start_FD.norm(dim=-1, keepdim=True)
    out = [current_FD]
    for _ in range(n_snapshots - 1):
        step_FD = torch.randn(current_FD.shape, generator=gen)
        step_FD = step_FD - (step_FD * current_FD).sum(-1, keepdim=True) * current_FD
        step_FD = step_FD / step_FD.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        current_FD = cosine * current_FD + sine * step_FD
        out.append(current_FD)
    return torch.stack(out, dim=1)


def class_firing(
    config: PlantedConfig, emergence_F: torch.Tensor, fade_F: torch.Tensor, firing_F: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """``firing_F`` with the transient and the persistent features' probabilities redrawn
    uniformly in ``config.transient_firing`` and ``config.persistent_firing`` where those are
    set: how often a feature fires need not be independent of when it lives (the rarest
    features of a model can be the short-lived or late-born ones)."""
    out_F = firing_F.clone()
    emergent_F = emergence_F > 0
    for span, chosen_F in (
        (config.transient_firing, emergent_F & (fade_F != NO_STEP)),
        (config.persistent_firing, emergent_F & (fade_F == NO_STEP)),
    ):
        if span is not None:
            lo, hi = span
            draw_F = lo + (hi - lo) * torch.rand(len(firing_F), generator=gen)
            out_F = torch.where(chosen_F, draw_F, out_F)
    return out_F
