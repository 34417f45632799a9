"""The causal stage end to end: IE table, RelIE, ablation curves, figures, on disk.

:func:`run_causal_stage` is what ``crosslens attribute`` and the demo call: one task,
one crosscoder, the suite it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from crosslens.causal import defaults
from crosslens.causal.ablation import AblationMode, snapshot_ablation_rows, top_curves_note
from crosslens.causal.attribution import (
    AttributionConfig,
    attribute_snapshot,
    exact_snapshot_inputs,
    logit_diff,
    table_from_snapshots,
)
from crosslens.causal.behaviour import (
    NoBehaviourError,
    SnapshotBehaviour,
    behaving_columns,
    behaviour_per_snapshot,
    chance_note,
    no_behaviour_message,
)
from crosslens.causal.claims import causal_claims
from crosslens.causal.continuations import SUMMED_LOGPROB_DIFF, metric_name
from crosslens.causal.ie_table import IETable, table_identity
from crosslens.causal.plots import ablation_curves_figure, relie_heatmap, relie_vs_reldec
from crosslens.causal.relative_ie import (
    RelIEThresholds,
    class_counts,
    reldec,
    relie,
)
from crosslens.causal.snapshot_models import (
    PreparedTask,
    SnapshotModels,
    check_task,
    iter_snapshot_models,
    prepare_task,
    with_activations,
)
from crosslens.core.errors import CrosslensError
from crosslens.core.hooks import crosscoder_hook
from crosslens.core.paths import ABLATION_CURVES_NAME, CAUSAL_SUMMARY_NAME, IE_TABLE_NAME, RELIE_NAME
from crosslens.htmlreport import Report
from crosslens.tasks.base import TaskDataset, TokenizedTask

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder


def load_crosscoder(crosscoder: Crosscoder | str | Path, device: str = "cpu") -> Crosscoder:
    """A crosscoder object, or one loaded from a folder saved in SAELens's layout."""
    if not isinstance(crosscoder, (str, Path)):
        return crosscoder
    from crosslens.crosscoders.saved import load_crosscoder_folder

    return load_crosscoder_folder(crosscoder, device=device)


def _spread(n: int, at_most: int) -> list[int]:
    """Up to ``at_most`` column indices spread evenly over ``n`` (always the first and last)."""
    if n <= at_most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (at_most - 1)) for i in range(at_most)})


@dataclass(frozen=True)
class CausalStagePaths:
    """The files :func:`run_causal_stage` writes."""

    ie_table: Path
    """``ie_table.json``: the :class:`IETable`."""
    relie: Path
    """``relie.json``: the selected features' RelIE, RelDec, classes and intervals."""
    ablation_curves: Path
    """``ablation_curves.json``: tidy rows, one per (snapshot, curve, k)."""
    report: Path
    """``causal_report.html``: the figures (plotly.js embedded: it opens offline)."""
    summary: Path
    """``summary.json``: :class:`CausalSummary` as JSON."""


@dataclass(frozen=True)
class CausalSummary:
    """The headline numbers of one task's causal stage (``summary.json``)."""

    task: str
    n_examples: int
    snapshots: list[str]
    """Snapshot labels (revisions), in the table's order."""
    metric_clean: list[float]
    metric_patch: list[float]
    n_selected_features: int
    specific_per_snapshot: list[int]
    below_floor_features: int
    effect_floor: float
    ablation: str
    keep_only_restored_final: dict[str, float | None]
    """Keep-only top-k restoration at the last snapshot, keyed by k (strings, as in JSON)."""
    claims_final: dict[str, Any]
    """:func:`crosslens.causal.claims.causal_claims` at the last snapshot."""
    metric: str = "logit_diff"
    """``"logit_diff"`` (every continuation one token) or ``"summed_logprob_diff"``."""
    n_multi_token: int = 0
    """Examples with a continuation of several tokens."""
    features_with_effect: list[int] = field(default_factory=list)
    """Per snapshot: the features with a nonzero IE, the most a top-k ablation curve ranks."""
    behaviour: list[dict[str, Any]] = field(default_factory=list)
    """Per snapshot: accuracy on the pairs with its 95% interval, the metric's mean and sd, and
    whether the model is at chance there (:class:`crosslens.causal.behaviour.SnapshotBehaviour`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CausalStageResult:
    """What :func:`run_causal_stage` computed and wrote."""

    table: IETable
    summary: CausalSummary
    paths: CausalStagePaths
    report: Report
    """The HTML report, to extend a larger report with."""
    ablation_rows: list[dict[str, Any]]
    task: PreparedTask
    """The task as the stage tokenized it, with every snapshot's activations on it in exact mode:
    what follows on the same task and models (:func:`~crosslens.causal.claims.stable_claim_rows`)
    takes it instead of tokenizing and collecting again."""


@dataclass(frozen=True)
class _RelIEResult:
    selected: torch.Tensor
    relie: torch.Tensor
    reldec: torch.Tensor
    labels: Any
    counts: dict[str, torch.Tensor]
    ci_low: torch.Tensor | None
    ci_high: torch.Tensor | None
    classed: torch.Tensor
    effect_floor: float


def run_causal_stage(
    models: SnapshotModels,
    crosscoder: Crosscoder | str | Path,
    task: TaskDataset,
    out_dir: str | Path,
    *,
    hook: str | None = None,
    snapshots: Sequence[int] | None = None,
    config: AttributionConfig = AttributionConfig(),
    top_k: int = defaults.TOP_K,
    ks: Sequence[int] = defaults.ABLATION_KS,
    ablation: AblationMode = "zero",
    n_random: int = 3,
    thresholds: RelIEThresholds = RelIEThresholds(),
    tokenizer: Any = None,
    progress: bool = True,
    effect_floor: float | None = None,
    n_boot: int = defaults.N_BOOT,
    allow_chance: bool = True,
) -> CausalStageResult:
    """Attribute ``task`` at every snapshot, then RelIE and ablation curves; write everything.

    RelIE classes only features whose effect is above noise: 95% bootstrap confidence
    intervals over examples (``n_boot`` resamples) are computed for every selected IE, and a
    feature is classed only if its total effect ``sum_c |IE(c)|`` is at least
    ``effect_floor`` (default: 2% of the mean clean-vs-patched metric gap over snapshots)
    and some snapshot's interval excludes 0; other features are ``below_floor``.

    Files in ``out_dir``: see :class:`CausalStagePaths`.
    Features are selected as the union of each snapshot's top ``top_k`` by |IE|.
    Ablation curves use ``ablation`` ("zero" or "mean") for both the ablate-top-k and
    keep-only-top-k curves, with the error term kept; ``ks`` above ``d_sae`` are dropped.
    Zero is the default because, on the pico demo, mean-ablating the other features restores
    no better than zeroing them and spreads sparse features' mean codes onto positions where
    they never fire.

    Each snapshot's behaviour (accuracy on the pairs with its 95% interval, the metric's mean
    and sd: :mod:`crosslens.causal.behaviour`) is measured on the attributed metric; at a
    snapshot at chance no feature is classed (``no_behaviour``). With ``allow_chance=False``
    a task at chance at every snapshot raises :class:`NoBehaviourError` before anything is
    written.

    Each snapshot model loads once for the activations (exact mode needs every
    snapshot's activations before any code exists) and once more for attribution and
    ablation together; per-snapshot mode loads each once.
    """
    if top_k < 1:  # checked where it is used, after every snapshot's attribution
        raise ValueError(f"top_k={top_k}: select 1 feature or more per snapshot")
    if ablation not in ("zero", "mean"):  # checked where it is used, after snapshot 0's attribution
        raise CrosslensError(f"ablation={ablation!r}: ablate with 'zero' or 'mean'")
    check_task(task)
    crosscoder = load_crosscoder(crosscoder)
    hook = crosscoder_hook(crosscoder, hook)
    # the models, the snapshots and the task are checked before the folder is made
    prepared = prepare_task(models, crosscoder, task, hook=hook, snapshots=snapshots, tokenizer=tokenizer, exact=False)
    out = Path(out_dir)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made fails before the work
    if config.mode == "exact":
        prepared = with_activations(prepared, models, hook, progress=progress)
    table, rows, metric_NS = _attribute_and_ablate(
        models,
        crosscoder,
        prepared,
        hook=hook,
        config=config,
        ks=[k for k in ks if k <= crosscoder.cfg.d_sae],
        ablation=ablation,
        n_random=n_random,
        progress=progress,
    )
    behaviours = behaviour_per_snapshot(metric_NS, table.snapshot_labels)
    if not allow_chance and all(b.at_chance for b in behaviours):
        if made and not any(out.iterdir()):  # nothing was written: leave no empty folder behind
            out.rmdir()
        raise NoBehaviourError(no_behaviour_message(prepared.name, behaviours))
    result = _relie_of(table, crosscoder, top_k, thresholds, effect_floor, n_boot, behaviours)
    return _write_stage(out, table, result, rows, prepared, ablation, behaviours, thresholds)


def _write_stage(
    out: Path,
    table: IETable,
    result: _RelIEResult,
    rows: list[dict],
    prepared: PreparedTask,
    ablation: AblationMode,
    behaviours: list,
    thresholds: RelIEThresholds,
) -> CausalStageResult:
    """The stage's report and files in ``out`` (:class:`CausalStagePaths`), and its result."""
    report = causal_report(
        table, result.selected, result.relie, result.reldec, rows, thresholds, behaviours, labels=result.labels
    )
    _add_ci_section(report, table, result.selected, result.ci_low, result.ci_high, result.classed, result.effect_floor)
    summary = _summary(table, result, rows, prepared.tokenized, ablation, behaviours)
    paths = CausalStagePaths(
        ie_table=table.save(out / IE_TABLE_NAME),
        relie=_write_json(out / RELIE_NAME, _relie_json(table, result, thresholds)),
        ablation_curves=_write_json(out / ABLATION_CURVES_NAME, rows),
        report=report.write(out / "causal_report.html"),
        summary=_write_json(out / CAUSAL_SUMMARY_NAME, summary.to_dict(), indent=2),
    )
    return CausalStageResult(
        table=table,
        summary=summary,
        paths=paths,
        report=report,
        ablation_rows=rows,
        task=prepared,
    )


def _attribute_and_ablate(
    models: SnapshotModels,
    crosscoder: Crosscoder,
    prepared: PreparedTask,
    *,
    hook: str,
    config: AttributionConfig,
    ks: Sequence[int],
    ablation: AblationMode,
    n_random: int,
    progress: bool,
) -> tuple[IETable, list[dict[str, Any]], torch.Tensor]:
    """Attribution then ablation curves at each snapshot, with the snapshot's model loaded
    once for both (the curves rank features by that snapshot's own IE); also each pair's clean
    metric per snapshot (``[n_examples, n_snapshots]``)."""
    tokenized, activations = prepared.tokenized, prepared.activations
    labels = [prepared.labels[i] for i in prepared.chosen]
    results, rows = [], []
    for column, (index, model) in enumerate(iter_snapshot_models(models, prepared.chosen, crosscoder)):
        inputs = exact_snapshot_inputs(crosscoder, activations, index) if activations is not None else {}
        attribution = attribute_snapshot(
            model, crosscoder, tokenized, snapshot=index, hook=hook, config=config, progress=progress, **inputs
        )
        results.append(attribution)
        rows += snapshot_ablation_rows(
            model,
            crosscoder,
            tokenized,
            attribution.ie,
            snapshot=index,
            label=labels[column],
            task_name=prepared.name,
            ks=ks,
            hook=hook,
            codes=inputs.get("codes_clean"),
            mode=ablation,
            n_random=n_random,
        )
    table = table_from_snapshots(
        prepared.name,
        results,
        labels,
        config,
        hook,
        len(tokenized),
        metric_name(tokenized, logit_diff),
        identity=table_identity(crosscoder, tokenized),
    )
    return table, rows, torch.stack([r.metric_clean for r in results], dim=1)


def _relie_of(
    table: IETable,
    crosscoder: Crosscoder,
    top_k: int,
    thresholds: RelIEThresholds,
    effect_floor: float | None,
    n_boot: int,
    behaviours: Sequence[SnapshotBehaviour],
) -> _RelIEResult:
    """RelIE and RelDec of the selected features, their bootstrap intervals and classes (none
    at a snapshot where the model is at chance)."""
    selected = table.top_features(top_k)
    several = len(table.snapshots) > 1
    relie_sel = relie(table.ie[selected]) if several else torch.ones(len(selected), 1)
    norms = crosscoder.decoder_norms()[:, table.snapshots]
    reldec_sel = reldec(norms[selected]) if several else torch.ones(len(selected), 1)
    if effect_floor is None:
        effect_floor = defaults.EFFECT_FLOOR_SHARE * float((table.metric_clean - table.metric_patch).abs().mean())
    labels, classed, ci_low, ci_high = table.feature_classes(
        selected, relie_sel, thresholds, effect_floor, n_boot, behaviours
    )
    return _RelIEResult(
        selected, relie_sel, reldec_sel, labels, class_counts(labels), ci_low, ci_high, classed, effect_floor
    )


def _relie_json(table: IETable, result: _RelIEResult, thresholds: RelIEThresholds) -> dict[str, Any]:
    selected = result.selected
    return {
        "task": table.task,
        "features": selected.tolist(),
        "snapshots": table.snapshots,
        "snapshot_labels": table.snapshot_labels,
        "relie": result.relie.tolist(),
        "reldec": result.reldec.tolist(),
        "classes": result.labels.tolist(),
        "thresholds": asdict(thresholds),
        "class_counts": {name: values.tolist() for name, values in result.counts.items()},
        "ie": table.ie[selected].tolist(),
        "ie_ci95_low": None if result.ci_low is None else result.ci_low.tolist(),
        "ie_ci95_high": None if result.ci_high is None else result.ci_high.tolist(),
        "effect_floor": result.effect_floor,
        "classed": result.classed[:, 0].tolist() if len(selected) else [],
    }


def _summary(
    table: IETable,
    result: _RelIEResult,
    rows: Sequence[dict[str, Any]],
    tokenized: TokenizedTask,
    ablation: str,
    behaviours: Sequence[SnapshotBehaviour],
) -> CausalSummary:
    selected = result.selected
    return CausalSummary(
        task=table.task,
        n_examples=len(tokenized),
        snapshots=list(table.snapshot_labels),
        metric_clean=table.metric_clean.tolist(),
        metric_patch=table.metric_patch.tolist(),
        n_selected_features=len(selected),
        specific_per_snapshot=result.counts["specific"].tolist(),
        below_floor_features=int((~result.classed[:, 0]).sum()) if len(selected) else 0,
        effect_floor=result.effect_floor,
        ablation=ablation,
        keep_only_restored_final=_restored_at(rows, table.snapshots[-1]),
        claims_final=causal_claims(rows, table.snapshots[-1]),
        metric=str(table.config.get("metric", "logit_diff")),
        n_multi_token=int((tokenized.continuation_lengths > 1).any(dim=1).sum()),  # type: ignore[operator]
        features_with_effect=(table.ie != 0).sum(dim=0).tolist(),
        behaviour=[b.to_dict() for b in behaviours],
    )


def _write_json(path: Path, content: Any, indent: int | None = None) -> Path:
    path.write_text(json.dumps(content, indent=indent))
    return path


def _add_ci_section(report, table, selected, ci_low, ci_high, classed, effect_floor) -> None:
    """IE with its bootstrap interval at each feature's strongest snapshot, and which
    features RelIE classes."""
    report.add_heading("IE confidence intervals")
    n_below = int((~classed[:, 0]).sum()) if len(selected) else 0
    report.add_text(
        f"95% bootstrap intervals over the task's examples. RelIE classes only features whose total effect "
        f"sum_c |IE(c)| is at least {effect_floor:.3g} ({defaults.EFFECT_FLOOR_SHARE:.0%} of the mean clean-vs-patched gap unless set) and whose "
        f"interval excludes 0 at some snapshot: {n_below} of {len(selected)} selected features fall below that "
        "floor and are shown as below the noise floor, not as specific, shared or other."
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
    behaviours: Sequence[SnapshotBehaviour] | None = None,
    labels: Any = None,
):
    """An HTML report (``crosslens.htmlreport.Report``) of one task's causal results; with
    ``behaviours`` (:mod:`crosslens.causal.behaviour`), the accuracy per snapshot and which
    snapshots are at chance, whose restorations are then not shown as findings; ``labels``,
    the RelIE classes ``[features, snapshots]`` the stage decided, colour the scatters."""
    subtitle = f"{len(table.snapshots)} snapshots, hook {table.config.get('hook', '?')}"
    report = Report(f"Causal analysis: {table.task}", subtitle=subtitle)
    report.add_heading("Task metric per snapshot")
    note = chance_note(behaviours or [])
    if note is not None:
        report.add_text(note[0].upper() + note[1:] + ".")
    report.add_table(_metric_rows(table, behaviours), percent=["accuracy"] if behaviours else ())
    report.add_text(
        f"metric = {metric_formula(table.config.get('metric'))}: negative means the model is right "
        "(prefers the correct continuation), and more negative means more confident. An IE is the change in "
        "this metric when a feature is patched: a positive IE means the feature helps the correct answer (taking it "
        "away moves the metric towards the wrong one). "
        "metric (patched): the metric with the hook's activation at the prompt's positions after BOS set to the "
        "patch point, the far end of each integration path: the corrupted prompt's activation, or, where the task "
        "has no corrupted prompt, every feature and the error term zeroed, which leaves the crosscoder's decoder "
        "bias for that snapshot. error-node IE: the part of that change carried by the crosscoder's error term."
        + (
            " Features are patched at the prompt's positions; the continuations are scored under teacher "
            "forcing, their positions unedited."
            if table.config.get("metric") == SUMMED_LOGPROB_DIFF
            else ""
        )
    )
    _add_relie_section(report, table, selected, relie_sel, reldec_sel, thresholds, behaviours, labels)
    report.add_heading("Ablation curves")
    mode = next((r["ablation"] for r in rows), "zero")
    how = "set to 0" if mode == "zero" else "set to their mean code over those positions"
    report.add_figure(
        ablation_curves_figure(
            rows,
            title=f"ablation curves ({mode}-ablation, error term kept)",
            at_chance=[b.label for b in behaviours or [] if b.at_chance],
        ),
        caption=(
            f"{mode}-ablation: ablated features are {how}, at the prompt's positions after BOS, with the "
            "crosscoder's error term kept. One panel per snapshot. 'ablate top-k' removes the k features with the largest |IE|; "
            "'keep only top-k' ablates every other feature. Dashed: random features active on the task (mean). "
            + top_curves_note(rows)
        ),
    )
    final = table.snapshots[-1]
    if behaviours and behaviours[-1].at_chance:
        report.add_text(
            f"Keep-only restoration at {table.snapshot_labels[-1]}: not shown, the model is at chance there "
            f"({behaviours[-1].describe()}); a restoration of no behaviour is not a finding."
        )
        return report
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
            ],
            percent=["restored"],
        )
    return report


def _add_relie_section(
    report: Report,
    table: IETable,
    selected: torch.Tensor,
    relie_sel: torch.Tensor,
    reldec_sel: torch.Tensor,
    thresholds: RelIEThresholds,
    behaviours: Sequence[SnapshotBehaviour] | None,
    labels: Any,
) -> None:
    """The RelIE heatmap, and RelIE against RelDec at up to four snapshots where the model does
    the task (with none such, at any four, every point greyed as "no behaviour here")."""
    report.add_heading("RelIE")
    report.add_figure(
        relie_heatmap(relie_sel, feature_ids=selected.tolist(), snapshot_labels=table.snapshot_labels),
        caption=f"{len(selected)} features: the union of each snapshot's top features by |IE|.",
    )
    behaving = behaving_columns(behaviours, len(table.snapshots))
    behaving = behaving or list(range(len(table.snapshots)))
    columns = [behaving[i] for i in _spread(len(behaving), 4)]
    report.add_figure(
        relie_vs_reldec(
            relie_sel[:, columns],
            reldec_sel[:, columns],
            feature_ids=selected.tolist(),
            snapshot_labels=[table.snapshot_labels[c] for c in columns],
            thresholds=thresholds,
            labels=None if labels is None else labels[:, columns],
        ),
        caption=(
            "RelIE against RelDec (a snapshot's share of the feature's summed |IE| and of its summed decoder norm). "
            f"Dashed: the class thresholds, RelIE above {thresholds.specific:g} specific to the snapshot, between "
            f"{thresholds.other:g} and {thresholds.specific:g} shared, below {thresholds.other:g} other (its effect is "
            "mostly at other snapshots); dotted: RelIE = RelDec, above it a feature matters here more than its "
            "decoder norm says."
        ),
    )


def _metric_rows(table: IETable, behaviours: Sequence[SnapshotBehaviour] | None) -> list[dict[str, Any]]:
    """The report's per-snapshot metric table, with the accuracy and its interval when measured."""
    rows = []
    for column, (label, clean, patched, error) in enumerate(
        zip(table.snapshot_labels, table.metric_clean.tolist(), table.metric_patch.tolist(), table.error_ie.tolist())
    ):
        row: dict[str, Any] = {"snapshot": label, "metric (clean; < 0: correct preferred)": clean}
        row["model prefers"] = "correct" if clean < 0 else "wrong"
        if behaviours:
            b = behaviours[column]
            row["model prefers"] = "neither: no behaviour (at chance)" if b.at_chance else row["model prefers"]
            row.update(
                {"accuracy": b.accuracy, "95% interval": f"{b.ci_low:.0%}-{b.ci_high:.0%}", "metric sd": b.metric_sd}
            )
        rows.append({**row, "metric (patched)": patched, "error-node IE": error})
    return rows


def metric_formula(metric: str | None) -> str:
    """The task metric in words, for tables and printouts."""
    if metric == SUMMED_LOGPROB_DIFF:
        return "log p(wrong) - log p(correct), each summed over its continuation's tokens"
    return "logit[wrong] - logit[correct] at the last position"
