"""Detection scores and drift: the formulas, apart from any request.

A detection score is the balanced accuracy of the judge's answers on held-out passages (delphi's
detection score): the mean of the share of activating passages it called activating and the share
of non-activating ones it called non-activating, so 0.5 is chance whatever the mix and 1 is every
passage right.

Drift (after SAE-Track's reading of how a feature's meaning moves through training, arXiv
2412.17626): each life phase's explanation is also scored on the other phases' held-out contexts.
A feature drifted where an explanation that holds at its own phase (a score of at least
``min_score`` there) holds much less at another (at least ``min_drop`` lower): what it read then is
not what it reads there. Only scores of one judge are set against each other: the same model,
asked with the same prompt on passages chosen the same way, which ``scores.prompt`` names with the
prompt format (:func:`~crosslens.explain.contexts.score_prompt`); a score imported from delphi, on
its own held-out passages, one by another model, or one of a run with another ``--seed`` or
``--n-examples`` is on a scale of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Detection:
    """A detection score's counts."""

    true_positives: int
    n_activating: int
    true_negatives: int
    n_non_activating: int

    @property
    def balanced_accuracy(self) -> float:
        return balanced_accuracy(self.true_positives, self.n_activating, self.true_negatives, self.n_non_activating)


def balanced_accuracy(true_positives: int, n_activating: int, true_negatives: int, n_non_activating: int) -> float:
    """(TP / P + TN / N) / 2; a class with no example counts as 0, as delphi counts it."""
    recall = true_positives / n_activating if n_activating else 0.0
    specificity = true_negatives / n_non_activating if n_non_activating else 0.0
    return (recall + specificity) / 2


def detection(labels: Sequence[bool], predictions: Sequence[bool | None]) -> Detection:
    """The counts of ``predictions`` against the true ``labels`` (True: activating); a None
    prediction (delphi's failed ones) counts for neither class."""
    pairs = [(label, bool(p)) for label, p in zip(labels, predictions) if p is not None]
    return Detection(
        true_positives=sum(label and p for label, p in pairs),
        n_activating=sum(label for label, _ in pairs),
        true_negatives=sum((not label) and (not p) for label, p in pairs),
        n_non_activating=sum(not label for label, _ in pairs),
    )


@dataclass(frozen=True)
class DriftRule:
    """When a feature's meaning drifted between life phases: the settings of
    :class:`~crosslens.explain.config.ExplainConfig` (``drift_min_score``, ``drift_min_drop``)."""

    min_score: float
    min_drop: float


@dataclass(frozen=True)
class Drift:
    drift: float
    explained: int
    scored_on: int
    flagged: bool


def feature_drift(
    scores: Iterable[tuple[str, tuple[str, str], int, int, float]], life: set[int], rule: DriftRule
) -> Drift | None:
    """A feature's drift from its scores ``(source, judge, explained, scored_on, balanced
    accuracy)``, ``judge`` the (model, prompt) that scored: the largest drop, from its own reading
    to another life reading, of a life reading's explanation that holds on its own, each drop
    between two scores of one judge; None without such a pair."""
    by_key = {(source, judge, explained, on): value for source, judge, explained, on, value in scores}
    best: Drift | None = None
    for (source, judge, explained, scored_on), value in sorted(by_key.items()):
        own = by_key.get((source, judge, explained, explained))
        if explained == scored_on or explained not in life or scored_on not in life or own is None:
            continue
        if own < rule.min_score:
            continue
        drop = own - value
        if best is None or drop > best.drift:
            best = Drift(round(drop, 6), explained, scored_on, drop >= rule.min_drop - 1e-9)
    return best
