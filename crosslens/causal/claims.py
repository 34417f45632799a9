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

A claim about features is also only as good as the features: one that another seed does not
find is a property of a training run. :func:`stable_claim_rows` re-ranks each seed's features
with every feature lacking a match in some other seed moved out of the ranking (the matching
is :func:`crosslens.analysis.stability.stable_features`), and :func:`stable_claims_over_seeds`
states the claims from those rows only:

- **ablation**, as above, over the top stable features;
- **keep-only area**: the keep-only restoration averaged over the k grid (the area under the
  keep-only curve on a log-k axis, divided by its width), mean +/- sd over seeds. The
  restoration at one k is not stable: the curve stays near 0 and then jumps to about all of
  the gap at the k where the kept set first rebuilds the residual stream, and on the pico demo
  that k differs by seed (benchmarks/README.md, "The demo"), so a threshold at one k holds or
  fails by where that jump falls; the area weighs every k and its spread over seeds is a
  fraction of that.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

if TYPE_CHECKING:
    from crosslens.causal.snapshot_models import SnapshotModels


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
    ablated = next(
        (r["metric"] for r in at if r["selection"] == "top" and not r["keep_only"] and r["k"] == ablate_k), None
    )
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
        out[verdict] = (
            "holds for every seed"
            if all(verdicts)
            else (
                "fails for every seed" if not any(verdicts) else f"holds for {sum(verdicts)} of {len(verdicts)} seeds"
            )
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


def keep_only_area(rows: Sequence[Mapping[str, Any]], snapshot: int) -> float | None:
    """Keep-only restoration at ``snapshot`` averaged over its k grid: the trapezoid area under
    the curve on a log-k axis divided by the axis's width (the one value when there is one k)."""
    kept = sorted(
        (r["k"], r["restored"])
        for r in rows
        if r["snapshot"] == snapshot and r["selection"] == "top" and r["keep_only"] and r.get("restored") is not None
    )
    if not kept:
        return None
    if len(kept) == 1:
        return float(kept[0][1])
    x = [math.log(k) for k, _ in kept]
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, (_, y0)), (x1, (_, y1)) in zip(zip(x, kept), zip(x[1:], kept[1:])))
    return area / (x[-1] - x[0])


def stable_ks(ks: Sequence[int], n_stable: Sequence[int]) -> list[int]:
    """The ks every seed can fill with stable features (the same grid for every seed)."""
    fewest = min(n_stable) if n_stable else 0
    return [k for k in ks if 0 < k <= fewest]


def stable_ranking_ie(ie_F: torch.Tensor, stable: Sequence[int]) -> tuple[torch.Tensor, int]:
    """``ie_F`` with every feature outside ``stable`` zeroed, so a ranking by |IE| reaches them
    only after every stable feature with an effect; and how many stable features have one."""
    keep_F = torch.zeros(ie_F.shape[0], dtype=torch.bool)
    keep_F[torch.as_tensor(list(stable), dtype=torch.long)] = True
    ranked_F = torch.where(keep_F, ie_F, torch.zeros_like(ie_F))
    return ranked_F, int((ranked_F != 0).sum())


def stable_claim_rows(
    models: SnapshotModels,
    crosscoders: Sequence[Any],
    ie_finals: Sequence[torch.Tensor],
    stable: Sequence[Sequence[int]],
    task: Any,
    *,
    snapshot: int,
    ks: Sequence[int],
    label: str = "",
) -> tuple[list[list[dict[str, Any]]], list[int]]:
    """Ablation and keep-only curves at ``snapshot`` for each seed's crosscoder, ranking only its
    ``stable`` features by their IE there (``ie_finals``); returns the rows per seed and the ks used.

    ``task`` is a TaskDataset, or the task as a causal stage on the same models prepared it
    (:attr:`~crosslens.causal.stage.CausalStageResult.task`, a
    :class:`~crosslens.causal.snapshot_models.PreparedTask`), which is neither tokenized nor
    collected again where it holds the activations. Otherwise the snapshot models run once to
    collect every snapshot's activations on the task. The codes are exact, as the causal
    stage's; the curves zero-ablate and draw no random controls."""
    from crosslens.causal.ablation import snapshot_ablation_rows
    from crosslens.causal.snapshot_models import PreparedTask, iter_snapshot_models, prepare_task
    from crosslens.causal.splicing import exact_codes
    from crosslens.core.hooks import crosscoder_hook

    if not len(crosscoders) == len(ie_finals) == len(stable):
        raise ValueError(
            f"{len(crosscoders)} crosscoders, {len(ie_finals)} IE vectors and {len(stable)} stable sets; give one of each per seed."
        )
    ranking = [stable_ranking_ie(ie, keep) for ie, keep in zip(ie_finals, stable)]
    used = stable_ks(ks, [n for _, n in ranking])
    if not used:
        return [[] for _ in crosscoders], used
    hook = crosscoder_hook(crosscoders[0], None)
    if isinstance(task, PreparedTask) and task.activations is None:
        task = task.tokenized
    if not isinstance(task, PreparedTask):
        task = prepare_task(models, crosscoders[0], task, hook=hook)
    assert task.activations is not None  # collected in exact mode
    name, tokenized, acts_clean = task.name, task.tokenized, task.activations.clean
    _, model = next(iter_snapshot_models(models, [snapshot], crosscoders[0]))
    rows = [
        snapshot_ablation_rows(
            model,
            crosscoder,
            tokenized,
            ie_F,
            snapshot=snapshot,
            label=label,
            task_name=name,
            ks=used,
            hook=hook,
            codes=exact_codes(crosscoder, acts_clean, snapshot),
            mode="zero",
            n_random=0,
        )
        for crosscoder, (ie_F, _) in zip(crosscoders, ranking)
    ]
    return rows, used


def stable_claims_over_seeds(
    rows_per_seed: Sequence[Sequence[Mapping[str, Any]]],
    snapshot: int,
    ks: Sequence[int],
    n_stable: Sequence[int],
    labels: Sequence[str],
    *,
    min_cosine: float,
    ablate_k: int = 10,
    min_shift: float = 0.5,
) -> dict[str, Any]:
    """The claims over seeds from :func:`stable_claim_rows`' rows: the ablation claim at
    ``ablate_k`` (or the largest k below it), and the keep-only area, each with mean +/- sd."""
    out: dict[str, Any] = {"min_cosine": min_cosine, "ks": list(ks), "n_stable": dict(zip(labels, n_stable))}
    if not ks:
        return {**out, "ablation_shift": None, "ablation_claim": None, "keep_only_area": None, "per_seed": {}}
    k = max(x for x in ks if x <= ablate_k) if min(ks) <= ablate_k else min(ks)
    claims = [causal_claims(rows, snapshot, ablate_k=k, keep_k=max(ks), min_shift=min_shift) for rows in rows_per_seed]
    for claim, rows in zip(claims, rows_per_seed):
        claim["keep_only_area"] = keep_only_area(rows, snapshot)
    summary = claims_over_seeds(claims, labels)
    areas = [c["keep_only_area"] for c in claims if c["keep_only_area"] is not None]
    area = None
    if areas:
        mean, sd = _mean_sd(areas)
        area = {"mean": mean, "sd": sd, "n": len(areas), "min": min(areas), "max": max(areas)}
    return {
        **out,
        "ablate_k": k,
        "min_shift": min_shift,
        "ablation_shift": summary["ablation_shift"],
        "ablation_claim": summary["ablation_claim"],
        "keep_only_area": area,
        "per_seed": summary["per_seed"],
    }


def format_stable_claims(summary: Mapping[str, Any], snapshot_label: str = "") -> str:
    """The seed-stable claims for the console: which features count, then each claim's mean +/- sd."""
    where = f" at {snapshot_label}" if snapshot_label else ""
    counts = "/".join(str(n) for n in summary["n_stable"].values())
    lines = [
        f"causal claims{where} over {len(summary['n_stable'])} crosscoder seeds, counting only features with a match "
        f"(decoder cos >= {summary['min_cosine']:g}) in every other seed ({counts} such features by seed):"
    ]
    if not summary["ks"]:
        return lines[0] + "\n  none: too few seed-stable features to rank"
    shift, area = summary["ablation_shift"], summary["keep_only_area"]
    if shift is not None:
        lines.append(
            f"  ablating the top-{summary['ablate_k']} stable features moves the metric by {shift['mean']:.0%} +/- "
            f"{shift['sd']:.0%} of its clean-vs-chance gap (claim >= {summary['min_shift']:.0%}: {summary['ablation_claim']})"
        )
    if area is not None:
        ks = summary["ks"]
        lines.append(
            f"  keeping only the top-k stable features (k = {ks[0]}..{ks[-1]}) restores {area['mean']:.0%} +/- "
            f"{area['sd']:.0%} of the clean-vs-all-ablated gap on average over k (area under the keep-only curve, "
            f"log k; seeds range {area['min']:.0%} to {area['max']:.0%})"
        )
    return "\n".join(lines)
