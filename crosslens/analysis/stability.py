"""Feature stability across seeds: do crosscoders trained on the same store agree?

Two crosscoders trained with different seeds on the same activations should find the
same features and date them the same way if the evolution story is a property of the
model rather than of one training run. For every pair of seeds, live features are
matched one-to-one (Hungarian) on the cosine of their decoders concatenated over
snapshots (in the training space, where every snapshot has the same activation scale);
a pair counts as the same feature at cosine >= a threshold. Analyses of crosscoders that read
other snapshots (steps), width or hook are refused: their features are not the same store's. Reported at each threshold
(0.7 and 0.9 by default): the share of the smaller live set matched, and among matched
pairs the share with the same emergence snapshot and the same class.

Live means not ``dead`` in the analyses: build them with a firing frequency
(``EvolutionAnalysis.from_crosscoder(..., frequency=...)``) so latents that never fire,
whose decoders are still their random initialisation, are left out of both sides and
of the denominator; a latent no token uses is not a feature either seed found.

:func:`stable_features` names the features of one run that have a match in every other
run: the only ones a causal claim should count (:mod:`crosslens.causal.claims`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch

from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.core.errors import CrosslensError

THRESHOLDS: tuple[float, ...] = (0.7, 0.9)
"""Decoder cosines at which seed stability is reported: 0.7 (the same feature, rotated a
little) and 0.9 (the same feature)."""


def _check_same_snapshots(a: EvolutionAnalysis, b: EvolutionAnalysis) -> None:
    """Refuse two analyses of crosscoders that read other snapshots, width or hook: their features
    are not the same store's, and a snapshot index would stand for other steps on either side."""
    if a.W_dec.shape[1:] != b.W_dec.shape[1:]:
        raise CrosslensError(
            f"decoders of shape {tuple(a.W_dec.shape)} and {tuple(b.W_dec.shape)} do not read the same "
            "snapshots and width; compare crosscoders trained on the same store."
        )
    if list(a.steps) != list(b.steps):
        raise CrosslensError(
            f"the crosscoders read snapshots at other steps ({a.steps} and {b.steps}): the same emergence "
            "snapshot would be other steps on either side; compare crosscoders trained on the same store."
        )
    hook_a, hook_b = (analysis.metadata.get("hook_name") for analysis in (a, b))
    if hook_a and hook_b and hook_a != hook_b:
        raise CrosslensError(
            f"the crosscoders read other hooks ({hook_a} and {hook_b}); compare crosscoders trained on the same store."
        )


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = [float(t) for t in thresholds]
    if not values or any(not -1.0 <= t <= 1.0 for t in values):
        raise ValueError(f"cosine thresholds {values} must be one or more numbers in [-1, 1], e.g. (0.7, 0.9).")
    return values


def match_features(a: EvolutionAnalysis, b: EvolutionAnalysis, min_cosine: float = 0.9) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(feature in a, feature in b, cosine)`` of live features with
    cosine >= ``min_cosine`` between decoders concatenated over snapshots."""
    return [m for m in _assignment(a, b) if m[2] >= min_cosine]


def _assignment(a: EvolutionAnalysis, b: EvolutionAnalysis) -> list[tuple[int, int, float]]:
    """The Hungarian assignment of live features, every pair with its cosine, by feature in a."""
    from scipy.optimize import linear_sum_assignment

    _check_same_snapshots(a, b)
    live_a = torch.nonzero(~a.lifetimes.dead).flatten()
    live_b = torch.nonzero(~b.lifetimes.dead).flatten()
    if len(live_a) == 0 or len(live_b) == 0:
        return []
    flat_a = a.W_dec[live_a].flatten(1).double()
    flat_b = b.W_dec[live_b].flatten(1).double()
    flat_a = flat_a / flat_a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    flat_b = flat_b / flat_b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos_AB = flat_a @ flat_b.T
    rows, cols = linear_sum_assignment(cos_AB.numpy(), maximize=True)
    return [(int(live_a[r]), int(live_b[c]), float(cos_AB[r, c])) for r, c in zip(rows, cols)]


def _n_live(analysis: EvolutionAnalysis) -> int:
    return int((~analysis.lifetimes.dead).sum())


def seed_stability(
    analyses: Sequence[EvolutionAnalysis],
    labels: Sequence[str] | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[dict[str, Any]]:
    """One row per pair of runs and threshold: matched share of live features and timeline agreement."""
    if len(analyses) < 2:
        raise ValueError("seed stability compares at least 2 crosscoders; train more seeds on the same store.")
    labels = list(labels) if labels is not None else [f"seed {i}" for i in range(len(analyses))]
    if len(labels) != len(analyses):
        raise ValueError(f"{len(labels)} labels for {len(analyses)} crosscoders; give one label each.")
    thresholds = _check_thresholds(thresholds)
    rows = []
    for (i, a), (j, b) in combinations(enumerate(analyses), 2):
        assignment = _assignment(a, b)
        live_a, live_b = _n_live(a), _n_live(b)
        for threshold in thresholds:
            matches = [m for m in assignment if m[2] >= threshold]
            same_emergence = [int(a.lifetimes.emergence[p]) == int(b.lifetimes.emergence[q]) for p, q, _ in matches]
            same_class = [a.classes[p] == b.classes[q] for p, q, _ in matches]
            rows.append(
                {
                    "runs": f"{labels[i]} vs {labels[j]}",
                    "min_cosine": threshold,
                    "live_features": f"{live_a} / {live_b}",
                    "matched": len(matches),
                    "matched_fraction": len(matches) / max(1, min(live_a, live_b)),
                    "same_emergence_fraction": sum(same_emergence) / len(matches) if matches else 0.0,
                    "same_class_fraction": sum(same_class) / len(matches) if matches else 0.0,
                }
            )
    return rows


def stability_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per threshold: mean and sd over pairs of the matched share (sd 0 for one pair)."""
    import statistics

    out = []
    for threshold in sorted({r["min_cosine"] for r in rows}):
        values = [r["matched_fraction"] for r in rows if r["min_cosine"] == threshold]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append({"min_cosine": threshold, "pairs": len(values), "mean": statistics.fmean(values), "sd": sd})
    return out


def stable_features(analyses: Sequence[EvolutionAnalysis], min_cosine: float) -> list[list[int]]:
    """For each run, its live features matched at ``min_cosine`` in every other run (sorted)."""
    if len(analyses) < 2:
        raise ValueError("stable features need at least 2 crosscoders; train more seeds on the same store.")
    matched: list[set[int] | None] = [None] * len(analyses)
    for (i, a), (j, b) in combinations(enumerate(analyses), 2):
        pairs = match_features(a, b, min_cosine)
        for index, side in ((i, {p for p, _, _ in pairs}), (j, {q for _, q, _ in pairs})):
            matched[index] = side if matched[index] is None else matched[index] & side  # type: ignore[operator]
    return [sorted(m or ()) for m in matched]


def format_stability(rows: Sequence[dict[str, Any]]) -> str:
    """One console line per threshold (mean +/- sd over pairs), then one per pair and threshold."""
    lines = [
        f"  decoder cos >= {s['min_cosine']:g}: {s['mean']:.1%} +/- {s['sd']:.1%} of live features matched "
        f"(mean +/- sd over {s['pairs']} pairs of seeds)"
        if s["pairs"] > 1
        else f"  decoder cos >= {s['min_cosine']:g}: {s['mean']:.1%} of live features matched (one pair of seeds: no spread)"
        for s in stability_summary(rows)
    ]
    lines += [
        f"    {r['runs']} at cos >= {r['min_cosine']:g}: {r['matched']} of {r['live_features']} live features "
        f"matched ({r['matched_fraction']:.1%}), {r['same_emergence_fraction']:.0%} of those with the same emergence step"
        for r in rows
    ]
    return "\n".join(lines)


def add_stability_section(report: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """Append the seed-stability table to a :class:`~crosslens.analysis.report.Report`."""
    thresholds = " and ".join(f"{s['min_cosine']:g}" for s in stability_summary(rows))
    report.add_heading("Seed stability")
    report.add_text(
        "Crosscoders trained with different seeds on the same activations, compared pairwise: live features "
        f"(those that fire on sampled tokens) matched one-to-one at decoder cosine >= {thresholds} (decoders "
        "concatenated over snapshots), and among matched features the share dated to the same emergence snapshot "
        "and given the same class. Features that no other seed finds, or that another seed dates differently, are "
        "properties of one training run rather than of the model. "
        + " ".join(
            f"At cos >= {s['min_cosine']:g}: {s['mean']:.1%} +/- {s['sd']:.1%} matched over {s['pairs']} pairs."
            for s in stability_summary(rows)
        )
    )
    report.add_table(
        list(rows),
        title="Feature stability across seeds",
        percent=["matched_fraction", "same_emergence_fraction", "same_class_fraction"],
    )
    return report
