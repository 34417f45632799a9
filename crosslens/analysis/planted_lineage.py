"""Lineage events scored against planted splits, merges and handoffs (:mod:`.planted_events`).

A planted event is **found** where lineage reports an event of its kind within one snapshot of
its step whose latents carry its directions on either side: for a split, both children among the
latents after it; for a merge, both features among the latents before it; for a handoff, the
predecessor among the latents before it and the successor among those after (the rows after a
split by composition are its children's, :attr:`~crosslens.analysis.lineage_events.LineageEvent.composed`).
Each reported event finds one planted event at most (a largest one-to-one assignment): one event over the latents of
two splits planted at one snapshot is one split found. A latent's row **carries** a planted
feature at a snapshot where that feature is present and is the present planted direction nearest
to it, at cosine :data:`CARRY_COSINE` or more: a direction the set holds no feature along at that
snapshot is carried by no latent.

A reported event that matches a planted event is called **planted** (though the assignment may
have given that planted event another of its reports). Every other reported event is a
**decoupling** where all its latents carry one and the same planted feature (the crosscoder
spread one feature over several latents: Minder et al.'s Latent Decoupling, an event of the
crosscoder, not of the data) and **false** otherwise.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from crosslens.analysis.composition import with_children_rows
from crosslens.analysis.relatives import unit_rows

CARRY_COSINE = 0.7
"""A latent's row carries a planted feature where that feature is the one its direction is nearest
and their cosine is at least this: crosscoders that mix features into their latents (JumpReLU's
duplicates on the small sets) still carry them."""

EVENT_LABELS: tuple[str, ...] = ("planted", "decoupling", "false")
"""What :func:`planted_lineage_scores` calls each reported event."""


def carried_feature(unit_FSD: torch.Tensor, planted: Any, latent: int, snapshot: int) -> int | None:
    """The planted feature present at ``snapshot`` that a latent's unit row carries there, if any."""
    cos_P = planted.directions[:, snapshot] @ unit_FSD[latent, snapshot]
    # a feature absent here still has a direction (where it will emerge, or drifted on after it
    # faded), but no token holds it: a row along it carries nothing of the data
    cos_P = cos_P.masked_fill(~planted.present[:, snapshot], float("-inf"))
    best = int(cos_P.argmax())
    return best if float(cos_P[best]) >= CARRY_COSINE else None


def carries(
    unit_FSD: torch.Tensor, planted: Any, latents: Collection[int], snapshots: Sequence[int], feature: int
) -> bool:
    """Whether one of ``latents``' rows carries ``feature`` at one of ``snapshots`` (the callers
    pass the planted step and the next, as a crosscoder's row can lag one snapshot, or the
    snapshots before it). Before a split (after a merge) both features have one direction, so
    either counts there; a set without planted events has no such twins."""
    truth = getattr(planted, "event_truth", None)
    paired = truth.paired if truth is not None else []
    twins = {feature} | {c for _, a, b in paired for c in (a, b) if feature in (a, b)}
    for s in snapshots:
        same = (
            twins
            if any(float(planted.directions[t, s] @ planted.directions[feature, s]) > 0.999 for t in twins - {feature})
            else {feature}
        )
        if any(carried_feature(unit_FSD, planted, j, s) in same for j in latents):
            return True
    return False


def event_sides(kind: str, at: int, n_snapshots: int) -> list[int]:
    """The snapshots where a planted event of ``kind`` at ``at`` is read on its apart side: a
    split's step and the next, a merge's two snapshots before its step (a crosscoder's rows can
    lag or lead by one), a handoff's successor at its step and the next."""
    if kind == "merge":
        return sorted({max(0, at - 2), at - 1})
    return sorted({min(n_snapshots - 1, at), min(n_snapshots - 1, at + 1)})


def carried_sides(
    unit_FSD: torch.Tensor, planted: Any, live: Sequence[int], kind: str, at: int, sides: Sequence[int], a: int, b: int
) -> bool:
    """Whether the crosscoder's live latents carry both sides of a planted event at ``at``, so that
    lineage could see it: for a split (a merge), each of its two features at the snapshots
    ``sides`` after (before) it, by two latents or more (one latent carrying both cannot diverge
    from itself); for a handoff, the predecessor just before and the successor at ``sides``."""
    with_b = [j for j in live if carries(unit_FSD, planted, [j], sides, b)]
    if kind in ("split", "merge"):
        with_a = [j for j in live if carries(unit_FSD, planted, [j], sides, a)]
        return bool(with_a) and bool(with_b) and len(set(with_a) | set(with_b)) >= 2
    return bool(with_b) and carries(unit_FSD, planted, live, [at - 1], a)


@dataclass(frozen=True)
class PlantedLineageScores:
    """Planted events found by a lineage, and what its other events are (:func:`planted_lineage_scores`)."""

    planted_events: int
    """Splits, merges and handoffs planted."""
    events_found: int
    """Of them, found."""
    events_carried: int
    """Of them, carried on both sides by the crosscoder's live latents (:func:`carried_sides`):
    an event no latent's row carries is lost to the rules that compare rows (a split by
    composition, whose children are sums of rows, can still find it)."""
    events_found_carried: int
    """Found among the carried ones."""
    labels: list[str] = field(default_factory=list)
    """One of :data:`EVENT_LABELS` per reported event, in the lineage's order."""

    @property
    def events(self) -> int:
        return len(self.labels)

    @property
    def decoupling_events(self) -> int:
        return self.labels.count("decoupling")

    @property
    def false_events(self) -> int:
        return self.labels.count("false")

    def to_dict(self) -> dict[str, int]:
        return {
            "planted_events": self.planted_events,
            "events_found": self.events_found,
            "events_carried": self.events_carried,
            "events_found_carried": self.events_found_carried,
            "events": self.events,
            "decoupling_events": self.decoupling_events,
            "false_events": self.false_events,
        }


def planted_lineage_scores(planted: Any, analysis: Any, lineage: Any) -> PlantedLineageScores:
    """Score ``lineage`` (of ``analysis``, the :class:`~crosslens.analysis.EvolutionAnalysis` of a
    crosscoder trained on ``planted``) against ``planted.event_truth``; see the module docstring."""
    W_FSD, after_of = with_children_rows(analysis.W_dec, lineage.events)
    unit = unit_rows(W_FSD)
    S = unit.shape[1]
    truth = getattr(planted, "event_truth", None)
    wanted = (
        [("split", *e) for e in truth.splits]
        + [("handoff", *e) for e in truth.handoffs]
        + [("merge", *e) for e in truth.merges]
        if truth
        else []
    )
    live = analysis.present.any(1).nonzero().flatten().tolist()
    hit_WK = np.zeros((len(wanted), len(lineage.events)), dtype=bool)
    seen: list[bool] = []
    for w, (kind, at, a, b) in enumerate(wanted):
        sides = event_sides(kind, at, S)
        seen.append(carried_sides(unit, planted, live, kind, at, sides, a, b))
        for k, e in enumerate(lineage.events):
            if e.kind != kind or abs(e.snapshot - at) > 1:
                continue
            if kind == "handoff":
                ok = carries(unit, planted, after_of[k], sides, b) and carries(unit, planted, e.before, [at - 1], a)
            else:  # both features among the latents on its apart side: after a split, before a merge
                apart = e.before if kind == "merge" else after_of[k]
                ok = carries(unit, planted, apart, sides, a) and carries(unit, planted, apart, sides, b)
            hit_WK[w, k] = ok
    # a pair weighs 1, a carried event's less than 1/n more: the largest assignment, and of those
    # one that finds as many of the carried events as any does
    weight_WK = hit_WK * (1 + np.array(seen, dtype=float) / (len(wanted) + 1))[:, None]
    found_at = {int(w) for w, k in zip(*linear_sum_assignment(weight_WK, maximize=True)) if hit_WK[w, k]}
    found, carried = len(found_at), sum(seen)
    found_carried = sum(seen[w] for w in found_at)
    # an event matching a planted event is that event's report, called planted, even where the
    # assignment gave the planted event another report of it
    labels = []
    for k, e in enumerate(lineage.events):
        if hit_WK[:, k].any():
            labels.append("planted")
            continue
        rows = [(j, max(0, e.snapshot - 1)) for j in e.before] + [(j, e.snapshot) for j in after_of[k]]
        features = {carried_feature(unit, planted, j, s) for j, s in rows}
        labels.append("decoupling" if len(features) == 1 and None not in features else "false")
    return PlantedLineageScores(len(wanted), found, carried, found_carried, labels)


__all__ = [
    "CARRY_COSINE",
    "EVENT_LABELS",
    "PlantedLineageScores",
    "carried_feature",
    "carried_sides",
    "carries",
    "event_sides",
    "planted_lineage_scores",
]
