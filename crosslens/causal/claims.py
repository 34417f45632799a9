"""The demo's causal claims, read off ablation curves, and their spread over crosscoder seeds.

Two claims about a task at one snapshot (the pico demo states them at the final one):

- **ablation**: ablating the top-``ablate_k`` features by |IE| moves the task metric by at
  least ``min_shift`` of its clean-vs-chance gap. The metric is ``logit[wrong] -
  logit[correct]``, so chance is 0 and the shift is ``(ablated - clean) / (0 - clean)``.
- **keep-only**: keeping only the top-``keep_k`` features (every other one ablated)
  restores at least ``min_restored`` of the clean-vs-all-ablated gap.

A claim made from one crosscoder is a claim about one training run. :func:`claims_over_seeds`
takes the claims of crosscoders trained with different seeds and reports mean +/- sd and
whether the claim holds for every seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def causal_claims(
    rows: Sequence[Mapping[str, Any]],
    snapshot: int,
    *,
    ablate_k: int = 10,
    keep_k: int = 100,
    min_shift: float = 0.5,
    min_restored: float = 0.9,
) -> dict[str, Any]:
    """The two claims at ``snapshot`` from :func:`~crosslens.causal.ablation.ablation_curves` rows."""
    at = [r for r in rows if r["snapshot"] == snapshot]
    clean = next((r["metric"] for r in at if r["selection"] == "none"), None)
    if clean is None:
        raise ValueError(f"no unablated ('none') row at snapshot {snapshot}; pass rows from ablation_curves.")
    ablated = next((r["metric"] for r in at if r["selection"] == "top" and not r["keep_only"] and r["k"] == ablate_k), None)
    kept = next((r for r in at if r["selection"] == "top" and r["keep_only"] and r["k"] == keep_k), None)
    shift = None if ablated is None or abs(clean) < 1e-12 else (ablated - clean) / (0.0 - clean)
    restored = None if kept is None else kept.get("restored")
    return {
        "snapshot": snapshot,
        "metric_clean": clean,
        "ablate_k": ablate_k,
        "ablation_shift": shift,
        "ablation_claim": None if shift is None else shift >= min_shift,
        "keep_k": keep_k,
        "keep_only_restored": restored,
        "keep_only_claim": None if restored is None else restored >= min_restored,
        "min_shift": min_shift,
        "min_restored": min_restored,
    }


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def claims_over_seeds(claims: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Mean +/- sd of each claim's number over seeds, and whether it holds for all of them."""
    if not claims:
        raise ValueError("no claims given; pass one causal_claims() result per crosscoder seed.")
    labels = list(labels) if labels is not None else [f"seed {i}" for i in range(len(claims))]
    out: dict[str, Any] = {"n_seeds": len(claims), "per_seed": dict(zip(labels, [dict(c) for c in claims]))}
    for value, verdict in (("ablation_shift", "ablation_claim"), ("keep_only_restored", "keep_only_claim")):
        values = [c[value] for c in claims if c[value] is not None]
        if not values:
            out[value] = None
            out[verdict] = None
            continue
        mean, sd = _mean_sd(values)
        out[value] = {"mean": mean, "sd": sd, "n": len(values)}
        verdicts = [c[verdict] for c in claims if c[verdict] is not None]
        out[verdict] = "holds for every seed" if all(verdicts) else (
            "fails for every seed" if not any(verdicts) else f"holds for {sum(verdicts)} of {len(verdicts)} seeds"
        )
    return out


def format_claims(summary: Mapping[str, Any], snapshot_label: str = "") -> str:
    """Two lines for the console: each claim's mean +/- sd over seeds and its verdict."""
    first = next(iter(summary["per_seed"].values()))
    where = f" at {snapshot_label}" if snapshot_label else ""
    lines = []
    shift = summary["ablation_shift"]
    if shift is not None:
        lines.append(
            f"  ablating the top-{first['ablate_k']} features{where} moves the metric by "
            f"{shift['mean']:.0%} +/- {shift['sd']:.0%} of its clean-vs-chance gap over {shift['n']} seeds "
            f"(claim >= {first['min_shift']:.0%}: {summary['ablation_claim']})"
        )
    restored = summary["keep_only_restored"]
    if restored is not None:
        lines.append(
            f"  keeping only the top-{first['keep_k']} features{where} restores "
            f"{restored['mean']:.0%} +/- {restored['sd']:.0%} over {restored['n']} seeds "
            f"(claim >= {first['min_restored']:.0%}: {summary['keep_only_claim']})"
        )
    return "\n".join(lines)
