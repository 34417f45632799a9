"""Planted weak early presence, splits, merges and handoffs: what decoder norms and lineage are tested on.

Each is planted on features a set already holds present at every snapshot (its
``initialization`` features that never fade), after everything else is drawn, so the rest of
the set is the one its config builds without them:

- **weak early**: a feature present from snapshot 0 at a small share of its later magnitude
  (:attr:`PlantedEvents.weak_amplitude`) until a later snapshot, then at full strength. Its
  birth is snapshot 0; a sparsity penalty that shrinks its early decoder rows to zero dates it
  at the step up (Complete Shrinkage).
- **split**: two features share one direction (the parent's) until a planted snapshot, where
  each turns away from it to a direction of its own (cosine
  :attr:`PlantedEvents.split_cosine` with the parent's); the parent's tokens are the two
  features' tokens, so its firing divides between the children.
- **merge**: a split read backwards in time. Two features on directions of their own (each at
  cosine :attr:`PlantedEvents.merge_cosine` with the merged direction just before the merge)
  share one direction from a planted snapshot on; each keeps firing on its own tokens, so the
  merged direction fires on both features' tokens.
- **handoff**: a feature fades at a planted snapshot as a new one emerges there, whose
  direction is near-parallel to the faded one's (cosine :attr:`PlantedEvents.handoff_cosine`)
  and which fires on tokens of its own.

:func:`plant_events` changes a built set in place and returns :class:`EventTruth`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from crosslens.analysis.planted_draws import drift

_EPS = 1e-12


@dataclass(frozen=True)
class PlantedEvents:
    """How many of each event a planted set holds, and their shape."""

    n_weak_early: int = 0
    """Features present from snapshot 0 at a weak share of their later magnitude."""
    weak_amplitude: tuple[float, float] = (0.1, 0.3)
    """The early share of the later magnitude, uniform in this range per feature."""
    weak_until: tuple[int, ...] = (2, 3, 4, 5)
    """Snapshot where a weak-early feature steps up to full strength, cycled over the features."""
    n_splits: int = 0
    """Pairs of features that share the parent's direction until their split."""
    split_cosine: float = 0.6
    """Cosine of each child's direction with the parent's at the split (the children then lie at
    about 0.36 to each other)."""
    n_merges: int = 0
    """Pairs of features that share one direction from their merge on."""
    merge_cosine: float = 0.6
    """Cosine of each feature's direction with the merged one just before the merge."""
    n_handoffs: int = 0
    """Features that fade as a near-parallel one emerges."""
    handoff_cosine: float = 0.85
    """Cosine of the successor's first direction with the predecessor's at the handoff."""
    event_snapshots: tuple[int, ...] = (2, 3, 4, 5)
    """Snapshots where splits, handoffs and merges happen, cycled over the events (in that order)."""

    def __post_init__(self) -> None:
        lo, hi = self.weak_amplitude
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"weak_amplitude={self.weak_amplitude}: give (low, high) with 0 < low <= high < 1.")
        if min(self.n_weak_early, self.n_splits, self.n_merges, self.n_handoffs) < 0:
            raise ValueError("event counts must be >= 0.")
        for name in ("split_cosine", "merge_cosine", "handoff_cosine"):
            if not -1.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} is a cosine strictly inside (-1, 1).")
        if not self.weak_until or not self.event_snapshots or min(*self.weak_until, *self.event_snapshots) < 1:
            raise ValueError("weak_until and event_snapshots list snapshots >= 1.")

    @property
    def n_features_used(self) -> int:
        """Features present throughout that the events take."""
        return self.n_weak_early + 2 * (self.n_splits + self.n_handoffs + self.n_merges)


@dataclass
class EventTruth:
    """Where the planted events are."""

    weak_early: dict[int, int] = field(default_factory=dict)
    """Weak-early feature -> the snapshot it steps up at (its birth is 0)."""
    splits: list[tuple[int, int, int]] = field(default_factory=list)
    """(snapshot, child, child)."""
    handoffs: list[tuple[int, int, int]] = field(default_factory=list)
    """(snapshot, predecessor, successor)."""
    merges: list[tuple[int, int, int]] = field(default_factory=list)
    """(snapshot, feature, feature): the first snapshot where the two share a direction."""

    @property
    def paired(self) -> list[tuple[int, int, int]]:
        """Splits and merges: the events whose two features share a direction on one side."""
        return self.splits + self.merges

    def to_dict(self) -> dict[str, Any]:
        return {
            "weak_early": {str(k): v for k, v in self.weak_early.items()},
            "splits": [list(e) for e in self.splits],
            "handoffs": [list(e) for e in self.handoffs],
            "merges": [list(e) for e in self.merges],
        }


def _turned(start_D: torch.Tensor, cosine: float, away_D: torch.Tensor) -> torch.Tensor:
    """A unit vector at ``cosine`` to ``start_D``, turned towards ``away_D``."""
    start_D = start_D / start_D.norm().clamp_min(_EPS)
    away_D = away_D - (away_D @ start_D) * start_D
    away_D = away_D / away_D.norm().clamp_min(_EPS)
    return cosine * start_D + math.sqrt(1 - cosine**2) * away_D


def _parting(d_in: int, gen: torch.Generator) -> torch.Tensor:
    """Two directions ``[2, d_in]`` for a split's children (a merge's features) to turn towards, the
    second orthogonal to the first, so that the two part ways."""
    away_2D = torch.randn(2, d_in, generator=gen)
    away_2D[1] -= (away_2D[1] @ away_2D[0]) / away_2D[0].square().sum() * away_2D[0]
    return away_2D


def plant_events(planted: Any, events: PlantedEvents, gen: torch.Generator) -> EventTruth:
    """Plant ``events`` on ``planted`` (a built :class:`~crosslens.analysis.synthetic.PlantedEvolution`
    before its normalisation), in place, on features present at every snapshot and in no
    correlated pair."""
    S = planted.config.n_snapshots
    paired = {i for pair in planted.pairs for i in pair}
    always = [i for i in range(planted.config.n_features) if bool(planted.present[i].all()) and i not in paired]
    if len(always) < events.n_features_used:
        raise ValueError(
            f"the planted events need {events.n_features_used} features present at every snapshot outside correlated "
            f"pairs, the set has {len(always)}; raise n_initialization or plant fewer events."
        )
    pick = [always[k] for k in torch.randperm(len(always), generator=gen).tolist()[: events.n_features_used]]
    truth = EventTruth()
    lo, hi = events.weak_amplitude
    weak = pick[: events.n_weak_early]
    shares = lo + (hi - lo) * torch.rand(len(weak), generator=gen)
    for k, i in enumerate(weak):
        until = min(S - 1, events.weak_until[k % len(events.weak_until)])
        planted.magnitudes[i, :until] *= float(shares[k])
        truth.weak_early[i] = until
    rest = pick[events.n_weak_early :]
    d_in = planted.directions.shape[-1]

    def pair_at(n: int) -> tuple[int, int, int]:
        """The two features and the snapshot of the ``n``-th event, counted over the splits, then
        the handoffs, then the merges."""
        return rest[2 * n], rest[2 * n + 1], min(S - 1, events.event_snapshots[n % len(events.event_snapshots)])

    for k in range(events.n_splits):
        a, b, at = pair_at(k)
        parent_D = planted.directions[a, at].clone()
        away_2D = _parting(d_in, gen)
        planted.directions[b, :at] = planted.directions[a, :at]
        for child, away_D in ((a, away_2D[0]), (b, away_2D[1])):
            start_D = _turned(parent_D, events.split_cosine, away_D)
            planted.directions[child, at:] = drift(start_D[None], S - at, planted.config.adjacent_cosine, gen)[0]
        truth.splits.append((at, a, b))
    for k in range(events.n_handoffs):
        a, b, at = pair_at(events.n_splits + k)
        start_D = _turned(planted.directions[a, at - 1], events.handoff_cosine, torch.randn(d_in, generator=gen))
        planted.directions[b, at:] = drift(start_D[None], S - at, planted.config.adjacent_cosine, gen)[0]
        planted.magnitudes[a, at:] = 0.0
        planted.magnitudes[b, :at] = 0.0
        planted.fade[a], planted.emergence[b] = at, at
        truth.handoffs.append((at, a, b))
    for k in range(events.n_merges):
        a, b, at = pair_at(events.n_splits + events.n_handoffs + k)
        merged_D = planted.directions[a, at].clone()
        away_2D = _parting(d_in, gen)
        for feature, away_D in ((a, away_2D[0]), (b, away_2D[1])):
            last_D = _turned(merged_D, events.merge_cosine, away_D)
            # a walk from the merge back to snapshot 0, read forwards
            planted.directions[feature, :at] = drift(last_D[None], at, planted.config.adjacent_cosine, gen)[0].flip(0)
        planted.directions[b, at:] = planted.directions[a, at:]
        truth.merges.append((at, a, b))
    return truth


__all__ = ["EventTruth", "PlantedEvents", "plant_events"]
