"""Does the model do the task at all? Per snapshot, before its attributions are read.

Attribution splits the task metric over features; when the model is at chance on the
pairs there is no behaviour to split, and keep-only restorations, noise floors and RelIE
classes computed on it are ratios of noise. Each snapshot's behaviour is measured on the
very numbers the causal stage attributes (the clean metric of every pair):

- accuracy: the share of pairs whose metric is negative (the correct continuation
  preferred), an exact tie counting as half, with its 95% Wilson score interval;
- the metric's mean and standard deviation over the pairs.

A snapshot is *at chance* when that interval contains 50%. A model that prefers the
wrong continuation reliably (below chance, e.g. agreeing with the nearest noun) is
doing something, and is not at chance. At a snapshot at chance no feature is classed
as specific, shared or other (:data:`NO_BEHAVIOUR` instead), and its ablation curves
are not findings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

CHANCE = 0.5
Z_95 = 1.959963984540054
"""The standard normal's 97.5% quantile: a two-sided 95% interval."""
NO_BEHAVIOUR = "no_behaviour"
"""The RelIE label of every classed feature at a snapshot where the model is at chance."""


class NoBehaviourError(ValueError):
    """No snapshot's accuracy on the task is distinguishable from chance."""


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (``successes`` may hold halves)."""
    if n < 1:
        raise ValueError(f"need at least one trial, got n={n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class SnapshotBehaviour:
    """How one snapshot does on the task's pairs."""

    label: str
    n_pairs: int
    accuracy: float
    """Share of pairs with the correct continuation preferred (metric < 0; a tie counts half)."""
    ci_low: float
    ci_high: float
    """The accuracy's 95% Wilson interval."""
    metric_mean: float
    metric_sd: float

    @property
    def at_chance(self) -> bool:
        return self.ci_low <= CHANCE <= self.ci_high

    def describe(self, *, with_mean: bool = True) -> str:
        """``accuracy 45% [25%, 66%] of 20 pairs, metric +0.012 sd 0.040``; without the mean
        (``..., metric sd 0.040``) where the line already prints the snapshot's metric."""
        mean = f" {self.metric_mean:+.3f}" if with_mean else ""
        return (
            f"accuracy {self.accuracy:.0%} [{self.ci_low:.0%}, {self.ci_high:.0%}] of {self.n_pairs} pairs, "
            f"metric{mean} sd {self.metric_sd:.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at_chance": self.at_chance}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SnapshotBehaviour:
        """One read back from :meth:`to_dict` (a stage summary's ``behaviour``)."""
        return cls(**{key: value for key, value in values.items() if key != "at_chance"})


def snapshot_behaviour(metric_N: Float[torch.Tensor, " n_pairs"], label: str) -> SnapshotBehaviour:
    """One snapshot's behaviour from its clean metric per pair (negative: correct preferred)."""
    metric_N = metric_N.detach().double().cpu()
    n = int(metric_N.numel())
    successes = float((metric_N < 0).sum()) + 0.5 * float((metric_N == 0).sum())
    low, high = wilson_interval(successes, n)
    sd = float(metric_N.std()) if n > 1 else 0.0
    return SnapshotBehaviour(label, n, successes / n, low, high, float(metric_N.mean()), sd)


def behaviour_per_snapshot(
    metric_NS: Float[torch.Tensor, "n_pairs n_snapshots"], labels: Sequence[str]
) -> list[SnapshotBehaviour]:
    """:func:`snapshot_behaviour` of every column of ``metric_NS``."""
    return [snapshot_behaviour(metric_NS[:, column], label) for column, label in enumerate(labels)]


def at_chance_mask(behaviours: Sequence[SnapshotBehaviour]) -> np.ndarray:
    """Boolean ``[n_snapshots]``: True where the model is at chance."""
    return np.array([b.at_chance for b in behaviours], dtype=bool)


def behaving_columns(behaviours: Sequence[SnapshotBehaviour] | None, n_snapshots: int) -> list[int]:
    """Indices of the snapshots where the model does the task (every one when behaviour was not measured)."""
    return [c for c in range(n_snapshots) if not (behaviours and behaviours[c].at_chance)]


def mark_no_behaviour(labels: np.ndarray, behaviours: Sequence[SnapshotBehaviour]) -> np.ndarray:
    """RelIE labels ``[n_features, n_snapshots]`` with every specific/shared/other entry at a
    snapshot at chance replaced by :data:`NO_BEHAVIOUR` (below-floor entries stay: their
    feature's effect is noise at every snapshot)."""
    marked = labels.copy()
    chance = at_chance_mask(behaviours)
    if marked.size:
        columns = marked[:, chance]
        columns[columns != "below_floor"] = NO_BEHAVIOUR
        marked[:, chance] = columns
    return marked


def no_behaviour_message(task: str, behaviours: Sequence[SnapshotBehaviour]) -> str:
    """Why the attribution is refused: the model is at chance at every snapshot, and the fixes."""
    accuracies = [b.accuracy for b in behaviours]
    means = [b.metric_mean for b in behaviours]
    n = behaviours[0].n_pairs if behaviours else 0
    return (
        f"task {task!r}: the model is at chance on its {n} pairs at every snapshot (accuracy "
        f"{min(accuracies):.0%}-{max(accuracies):.0%}, each 95% interval contains 50%; mean metric "
        f"{min(means):+.3f} to {max(means):+.3f}), so there is no behaviour to attribute; use more pairs or pairs "
        "the model's text teaches, later snapshots, or pass --allow-chance (allow_chance=True) to run anyway with every snapshot "
        "marked 'no behaviour'"
    )


def chance_note(behaviours: Sequence[SnapshotBehaviour]) -> str | None:
    """One line naming the snapshots at chance (None when there are none)."""
    labels = [b.label for b in behaviours if b.at_chance]
    if not labels:
        return None
    if len(labels) == len(behaviours):
        head = "NO BEHAVIOUR: the model is at chance at every snapshot"
    else:
        head = f"no behaviour at {', '.join(labels)}: the model is at chance there"
    return (
        f"{head} (accuracy's 95% interval contains 50%); features there are not classed and keep-only "
        "restorations there are not findings"
    )
