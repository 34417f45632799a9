"""Feature stability across seeds: do crosscoders trained on the same store agree?

Two crosscoders trained with different seeds on the same activations should find the
same features and date them the same way if the evolution story is a property of the
model rather than of one training run. For every pair of seeds, live features are
matched one-to-one (Hungarian) on the cosine of their decoders concatenated over
snapshots; a pair counts as the same feature at cosine >= ``min_cosine``. Reported: the
share of each run's live features matched, and among matched pairs the share with the
same emergence snapshot and the same class.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch

from crosslens.analysis.evolution_analysis import EvolutionAnalysis


def match_features(
    a: EvolutionAnalysis, b: EvolutionAnalysis, min_cosine: float = 0.9
) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(feature in a, feature in b, cosine)`` of live features with
    cosine >= ``min_cosine`` between decoders concatenated over snapshots."""
    from scipy.optimize import linear_sum_assignment

    if a.W_dec.shape[1:] != b.W_dec.shape[1:]:
        raise ValueError(
            f"decoders of shape {tuple(a.W_dec.shape)} and {tuple(b.W_dec.shape)} do not read the same "
            "snapshots and width; compare crosscoders trained on the same store."
        )
    live_a = torch.nonzero(~a.lifetimes.dead).flatten()
    live_b = torch.nonzero(~b.lifetimes.dead).flatten()
    if len(live_a) == 0 or len(live_b) == 0:
        return []
    flat_a = a.W_dec[live_a].flatten(1)
    flat_b = b.W_dec[live_b].flatten(1)
    flat_a = flat_a / flat_a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    flat_b = flat_b / flat_b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos_AB = flat_a @ flat_b.T
    rows, cols = linear_sum_assignment(cos_AB.numpy(), maximize=True)
    return [
        (int(live_a[r]), int(live_b[c]), float(cos_AB[r, c]))
        for r, c in zip(rows, cols)
        if float(cos_AB[r, c]) >= min_cosine
    ]


def seed_stability(
    analyses: Sequence[EvolutionAnalysis],
    labels: Sequence[str] | None = None,
    min_cosine: float = 0.9,
) -> list[dict[str, Any]]:
    """One row per pair of runs: matched share of live features and timeline agreement."""
    if len(analyses) < 2:
        raise ValueError("seed stability compares at least 2 crosscoders; train more seeds on the same store.")
    labels = list(labels) if labels is not None else [f"seed {i}" for i in range(len(analyses))]
    if len(labels) != len(analyses):
        raise ValueError(f"{len(labels)} labels for {len(analyses)} crosscoders; give one label each.")
    rows = []
    for (i, a), (j, b) in combinations(enumerate(analyses), 2):
        matches = match_features(a, b, min_cosine)
        live_a = int((~a.lifetimes.dead).sum())
        live_b = int((~b.lifetimes.dead).sum())
        same_emergence = [int(a.lifetimes.emergence[p]) == int(b.lifetimes.emergence[q]) for p, q, _ in matches]
        same_class = [a.classes[p] == b.classes[q] for p, q, _ in matches]
        rows.append(
            {
                "runs": f"{labels[i]} vs {labels[j]}",
                "live_features": f"{live_a} / {live_b}",
                "matched": len(matches),
                "matched_fraction": len(matches) / max(1, min(live_a, live_b)),
                "same_emergence_fraction": sum(same_emergence) / len(matches) if matches else 0.0,
                "same_class_fraction": sum(same_class) / len(matches) if matches else 0.0,
            }
        )
    return rows


def add_stability_section(report: Any, rows: Sequence[dict[str, Any]], min_cosine: float = 0.9) -> Any:
    """Append the seed-stability table to a :class:`~crosslens.analysis.report.Report`."""
    report.add_heading("Seed stability")
    report.add_text(
        "Crosscoders trained with different seeds on the same activations, compared pairwise: live features "
        f"matched one-to-one at decoder cosine >= {min_cosine:g} (decoders concatenated over snapshots), and "
        "among matched features the share dated to the same emergence snapshot and given the same class. "
        "Features that no other seed finds, or that another seed dates differently, are properties of one "
        "training run rather than of the model."
    )
    report.add_table(list(rows), title="Feature stability across seeds")
    return report
