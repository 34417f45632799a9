"""The causal stage end to end: IE table, RelIE, ablation curves, figures, on disk.

:func:`run_causal_stage` is what ``crosslens attribute`` and the demo call: one task,
one crosscoder, the suite it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from crosslens.causal.ablation import AblationMode, ablation_curves
from crosslens.causal.attribution import (
    AttributionConfig,
    IETable,
    attribute,
    collect_task_activations,
    tokenize_task,
)
from crosslens.causal.plots import ablation_curves_figure, relie_heatmap, relie_vs_reldec
from crosslens.causal.claims import causal_claims
from crosslens.causal.relie import (
    RelIEThresholds,
    bootstrap_ie_ci,
    class_counts,
    classify_relie,
    reldec,
    relie,
    relie_floor_mask,
)
from crosslens.causal.splice import default_hook
from crosslens.tasks.base import TaskDataset


def load_crosscoder(crosscoder: Any, device: str = "cpu") -> Any:
    """A crosscoder object, or one loaded from a folder saved in SAELens's layout."""
    if not isinstance(crosscoder, (str, Path)):
        return crosscoder
    import crosslens.crosscoders  # noqa: F401  (registers the architectures with SAELens)
    from sae_lens import SAE

    path = Path(crosscoder)
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(f"{path} holds no cfg.json; pass the folder a crosscoder was saved to")
    return SAE.load_from_disk(str(path), device=device)


def _spread(n: int, at_most: int) -> list[int]:
    """Up to ``at_most`` column indices spread evenly over ``n`` (always the first and last)."""
    if n <= at_most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (at_most - 1)) for i in range(at_most)})


def run_causal_stage(
    models: Any,
    crosscoder: Any,
    task: TaskDataset,
    out_dir: str | Path,
    *,
    hook: str | None = None,
    snapshots: Sequence[int] | None = None,
    config: AttributionConfig = AttributionConfig(),
    top_k: int = 10,
    ks: Sequence[int] = (1, 2, 5, 10, 20, 50, 100, 200),
    ablation: AblationMode = "zero",
    n_random: int = 3,
    thresholds: RelIEThresholds = RelIEThresholds(),
    tokenizer: Any = None,
    progress: bool = True,
    effect_floor: float | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Attribute ``task`` at every snapshot, then RelIE and ablation curves; write everything.

    RelIE classes only features whose effect is above noise: 95% bootstrap confidence
    intervals over examples (``n_boot`` resamples) are computed for every selected IE, and a
    feature is classed only if its total effect ``sum_c |IE(c)|`` is at least
    ``effect_floor`` (default: 2% of the mean clean-vs-patched metric gap over snapshots)
    and some snapshot's interval excludes 0; other features are ``below_floor``.

    Files in ``out_dir``: ``ie_table.json`` (:class:`IETable`), ``relie.json`` (the selected
    features' RelIE, RelDec and classes), ``ablation_curves.json`` (tidy rows), and
    ``causal_report.html`` (the figures, plotly.js embedded: it opens offline).
    Features are selected as the union of each snapshot's top ``top_k`` by |IE|.
    Ablation curves use ``ablation`` ("zero" or "mean") for both the ablate-top-k and
    keep-only-top-k curves, with the error term kept; ``ks`` above ``d_sae`` are dropped.
    Returns the paths, a short summary, the :class:`IETable` and the report (a
    ``crosslens.analysis.report.Report``, to extend a larger report with).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    crosscoder = load_crosscoder(crosscoder)
    hook = default_hook(crosscoder, hook)
    _, tokenized = tokenize_task(task, models, tokenizer)
    clean_acts, corrupted_acts = collect_task_activations(models, hook, tokenized, progress=progress)
    table = attribute(
        models,
        crosscoder,
        task,
        hook=hook,
        snapshots=snapshots,
        config=config,
        tokenizer=tokenizer,
        activations=(clean_acts, corrupted_acts) if config.mode == "exact" else None,
        progress=progress,
    )
    paths: dict[str, Path] = {"ie_table": table.save(out / "ie_table.json")}

    selected = table.top_features(top_k)
    relie_sel = relie(table.ie[selected]) if len(table.snapshots) > 1 else torch.ones(len(selected), 1)
    norms = crosscoder.decoder_norms()[:, table.snapshots]
    reldec_sel = reldec(norms[selected]) if len(table.snapshots) > 1 else torch.ones(len(selected), 1)
    if effect_floor is None:
        effect_floor = 0.02 * float((table.metric_clean - table.metric_patch).abs().mean())
    ci_low = ci_high = None
    if table.ie_per_example is not None and table.ie_per_example.shape[0] > 1:
        ci_low, ci_high = bootstrap_ie_ci(table.ie_per_example[:, selected], n_boot=n_boot)
    classed = relie_floor_mask(table.ie[selected], effect_floor, ci_low, ci_high)
    labels = classify_relie(relie_sel, thresholds, classed=classed)
    counts = class_counts(labels)
    paths["relie"] = out / "relie.json"
    paths["relie"].write_text(
        json.dumps(
            {
                "task": table.task,
                "features": selected.tolist(),
                "snapshots": table.snapshots,
                "snapshot_labels": table.snapshot_labels,
                "relie": relie_sel.tolist(),
                "reldec": reldec_sel.tolist(),
                "classes": labels.tolist(),
                "thresholds": asdict(thresholds),
                "class_counts": {name: values.tolist() for name, values in counts.items()},
                "ie": table.ie[selected].tolist(),
                "ie_ci95_low": None if ci_low is None else ci_low.tolist(),
                "ie_ci95_high": None if ci_high is None else ci_high.tolist(),
                "effect_floor": effect_floor,
                "classed": classed[:, 0].tolist() if len(selected) else [],
            }
        )
    )

    rows = ablation_curves(
        models,
        crosscoder,
        tokenized,
        table,
        ks=[k for k in ks if k <= crosscoder.cfg.d_sae],
        hook=hook,
        mode=ablation,
        n_random=n_random,
        exact=config.mode == "exact",
        activations=clean_acts,
        progress=progress,
    )
    for row in rows:
        row["task"] = table.task
    paths["ablation_curves"] = out / "ablation_curves.json"
    paths["ablation_curves"].write_text(json.dumps(rows))

    report = causal_report(table, selected, relie_sel, reldec_sel, rows, thresholds)
    _add_ci_section(report, table, selected, ci_low, ci_high, classed, effect_floor)
    paths["report"] = report.write(out / "causal_report.html")

    summary = {
        "task": table.task,
        "n_examples": len(tokenized),
        "snapshots": table.snapshot_labels,
        "metric_clean": table.metric_clean.tolist(),
        "metric_patch": table.metric_patch.tolist(),
        "n_selected_features": len(selected),
        "specific_per_snapshot": counts["specific"].tolist(),
        "below_floor_features": int((~classed[:, 0]).sum()) if len(selected) else 0,
        "effect_floor": effect_floor,
        "ablation": ablation,
        "keep_only_restored_final": _restored_at(rows, table.snapshots[-1]),
        "claims_final": causal_claims(rows, table.snapshots[-1]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    paths["summary"] = out / "summary.json"
    return {"paths": paths, "summary": summary, "table": table, "report": report}


def _add_ci_section(report, table, selected, ci_low, ci_high, classed, effect_floor) -> None:
    """IE with its bootstrap interval at each feature's strongest snapshot, and which
    features RelIE classes."""
    report.add_heading("IE confidence intervals")
    n_below = int((~classed[:, 0]).sum()) if len(selected) else 0
    report.add_text(
        f"95% bootstrap intervals over the task's examples. RelIE classes only features whose total effect "
        f"sum_c |IE(c)| is at least {effect_floor:.3g} (2% of the mean clean-vs-patched gap unless set) and whose "
        f"interval excludes 0 at some snapshot: {n_below} of {len(selected)} selected features fall below that "
        "floor and are shown as below_floor, not as specific, shared or other."
    )
    if not len(selected) or ci_low is None:
        return
    ie_sel = table.ie[selected]
    peak = ie_sel.abs().argmax(dim=1)
    order = sorted(range(len(selected)), key=lambda r: -float(ie_sel.abs().sum(1)[r]))
    report.add_table(
        [
            {
                "feature": int(selected[r]),
                "strongest snapshot": table.snapshot_labels[int(peak[r])],
                "IE": float(ie_sel[r, peak[r]]),
                "95% CI low": float(ci_low[r, peak[r]]),
                "95% CI high": float(ci_high[r, peak[r]]),
                "total |IE|": float(ie_sel[r].abs().sum()),
                "classed": bool(classed[r, 0]),
            }
            for r in order[:30]
        ],
        title="Selected features by total |IE| (top 30)",
    )


def _restored_at(rows: Sequence[dict[str, Any]], snapshot: int) -> dict[str, float | None]:
    """Keep-only top-k restoration at one snapshot, keyed by k (as strings, for JSON)."""
    return {
        str(r["k"]): r.get("restored")
        for r in rows
        if r["snapshot"] == snapshot and r["keep_only"] and r["selection"] == "top"
    }


def causal_report(
    table: IETable,
    selected: torch.Tensor,
    relie_sel: torch.Tensor,
    reldec_sel: torch.Tensor,
    rows: Sequence[dict[str, Any]],
    thresholds: RelIEThresholds = RelIEThresholds(),
):
    """An HTML report (``crosslens.analysis.report.Report``) of one task's causal results."""
    from crosslens.analysis.report import Report

    subtitle = f"{len(table.snapshots)} snapshots, hook {table.config.get('hook', '?')}"
    report = Report(f"Causal analysis: {table.task}", subtitle=subtitle)
    report.add_heading("Task metric per snapshot")
    report.add_table(
        [
            {"snapshot": label, "metric (clean; < 0: correct preferred)": clean,
             "model prefers": "correct" if clean < 0 else "wrong", "metric (patched)": patched, "error-node IE": error}  # fmt: skip
            for label, clean, patched, error in zip(
                table.snapshot_labels, table.metric_clean.tolist(), table.metric_patch.tolist(), table.error_ie.tolist()
            )
        ]
    )
    report.add_text(
        "metric = logit[wrong] - logit[correct] at the last position: negative means the model is right "
        "(prefers the correct continuation), and more negative means more confident. An IE is the change in "
        "this metric when a feature is patched: a negative IE means the feature helps the correct answer."
    )
    report.add_heading("RelIE")
    report.add_figure(
        relie_heatmap(relie_sel, feature_ids=selected.tolist(), snapshot_labels=table.snapshot_labels),
        caption=f"{len(selected)} features: the union of each snapshot's top features by |IE|.",
    )
    for column in _spread(len(table.snapshots), 4):
        label = table.snapshot_labels[column]
        report.add_figure(
            relie_vs_reldec(
                relie_sel[:, column], reldec_sel[:, column], feature_ids=selected.tolist(), snapshot_label=label,
                thresholds=thresholds,
            )  # fmt: skip
        )
    report.add_heading("Ablation curves")
    mode = next((r["ablation"] for r in rows), "zero")
    how = "set to 0" if mode == "zero" else "set to their mean code over the task's tokens"
    report.add_figure(
        ablation_curves_figure(rows, title=f"ablation curves ({mode}-ablation, error term kept)"),
        caption=(
            f"{mode}-ablation: ablated features are {how}, at every task position, with the crosscoder's error "
            "term kept. 'ablate top-k' removes the k features with the largest |IE|; 'keep top-k' ablates "
            "every other feature. Dashed: random features active on the task (mean)."
        ),
    )
    final = table.snapshots[-1]
    floor = next((r for r in rows if r["snapshot"] == final and r["keep_only"] and r["selection"] == "all"), None)
    kept = [r for r in rows if r["snapshot"] == final and r["keep_only"] and r["selection"] == "top"]
    if floor is not None and kept:
        clean = next(r["metric"] for r in rows if r["snapshot"] == final and r["selection"] == "none")
        report.add_text(
            f"Keep-only restoration at {table.snapshot_labels[-1]} ({mode}-ablation): clean metric {clean:+.3f}, "
            f"every feature ablated {floor['metric']:+.3f} (metric < 0: correct preferred); "
            "restored = (kept - all ablated) / (clean - all ablated)."
        )
        report.add_table(
            [
                {"k": r["k"], "metric (keep top-k; < 0: correct preferred)": r["metric"], "restored": r.get("restored")}
                for r in sorted(kept, key=lambda r: r["k"])
            ]
        )
    return report


def load_ie_table(path: str | Path) -> IETable:
    """Read an ``ie_table.json`` written by :func:`run_causal_stage` or :meth:`IETable.save`."""
    return IETable.load(path)
