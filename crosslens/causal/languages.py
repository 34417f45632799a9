"""One task per language, side by side: which features matter when, in which language.

Bayazit et al. follow a multilingual model (BLOOM) across checkpoints and ask whether a
feature's causal role on a phenomenon appears at the same time in every language.
:func:`run_language_tasks` runs the causal stage (:func:`run_causal_stage`) for each
language's task on the same crosscoder and snapshots, then puts their RelIE next to each
other for one shared feature set: the union of every language's top features by |IE|.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots

from crosslens.causal import defaults
from crosslens.causal.behaviour import SnapshotBehaviour
from crosslens.causal.ie_table import IETable
from crosslens.causal.relative_ie import RelIEThresholds, relie, select_top_features
from crosslens.causal.stage import CausalStageResult, metric_formula, run_causal_stage
from crosslens.core.errors import CrosslensError
from crosslens.tasks.base import TaskDataset

if TYPE_CHECKING:
    from crosslens.causal.snapshot_models import SnapshotModels
    from crosslens.crosscoders.protocol import Crosscoder


def language_of(task: TaskDataset) -> str:
    """A task's language: its pairs' ``language`` meta field when they agree, else its name."""
    found = {pair.meta.get("language") for pair in task.pairs}
    return str(found.pop()) if len(found) == 1 and None not in found else task.name


def shared_features(tables: Mapping[str, IETable], top_k: int) -> Int[torch.Tensor, " n_selected"]:
    """Sorted union over languages (and snapshots) of the top-``top_k`` features by |IE|."""
    if not tables:
        raise ValueError("no language tables to compare; run at least one task")
    chosen = [select_top_features(table.ie, top_k) for table in tables.values()]
    return torch.unique(torch.cat(chosen))


def relie_by_language(
    tables: Mapping[str, IETable], features: Int[torch.Tensor, " n_selected"]
) -> dict[str, Float[torch.Tensor, "n_selected n_snapshots"]]:
    """Each language's one-vs-all RelIE over snapshots for the same `features`."""
    columns = {tuple(table.snapshots) for table in tables.values()}
    if len(columns) != 1:
        raise ValueError(
            f"the language tables cover different snapshots ({sorted(columns)}); attribute every language "
            "on the same snapshots"
        )
    if len(next(iter(columns))) < 2:  # one snapshot holds every effect
        return {language: torch.ones(len(features), 1) for language in tables}
    return {language: relie(table.ie[features]) for language, table in tables.items()}


def relie_by_language_figure(
    relie_values: Mapping[str, Float[torch.Tensor, "n_features n_snapshots"]],
    *,
    feature_ids: Sequence[int],
    snapshot_labels: Sequence[str],
) -> go.Figure:
    """Side-by-side RelIE heatmaps, one panel per language, the same feature in the same row
    (rows ordered by where the first language's RelIE peaks)."""
    languages = list(relie_values)
    first = relie_values[languages[0]].detach().cpu().numpy()
    order = np.lexsort((-first.max(axis=1), first.argmax(axis=1)))
    rows = [f"f{feature_ids[i]}" for i in order]
    fig = make_subplots(rows=1, cols=len(languages), shared_yaxes=True, subplot_titles=languages)
    for column, language in enumerate(languages, start=1):
        values = relie_values[language].detach().cpu().numpy()[order]
        fig.add_trace(
            go.Heatmap(
                z=values,
                x=list(snapshot_labels),
                y=rows,
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                showscale=column == len(languages),
                colorbar={"title": "RelIE"},
                hovertemplate=f"{language}<br>%{{y}} at %{{x}}<br>RelIE %{{z:.2f}}<extra></extra>",
            ),
            row=1,
            col=column,
        )
    fig.update_layout(title="RelIE per language (same features in every panel)", template="plotly_white")
    return fig


def language_classes(
    results: Mapping[str, CausalStageResult],
    features: Int[torch.Tensor, " n_selected"],
    relie_values: Mapping[str, torch.Tensor],
    thresholds: RelIEThresholds = RelIEThresholds(),
    n_boot: int = defaults.N_BOOT,
) -> dict[str, np.ndarray]:
    """Each language's RelIE classes of the shared ``features``, by the rule its own stage classed
    its features with (:meth:`~crosslens.causal.ie_table.IETable.feature_classes`): its noise floor, and no
    class at a snapshot where its model is at chance."""
    classes = {}
    for language, result in results.items():
        behaviours = [SnapshotBehaviour.from_dict(b) for b in result.summary.behaviour]
        floor = result.summary.effect_floor
        labels, *_ = result.table.feature_classes(
            features, relie_values[language], thresholds, floor, n_boot, behaviours
        )
        classes[language] = labels
    return classes


def language_rows(tables: Mapping[str, IETable], classes: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per snapshot, each language's clean metric and how many of the features it classes
    ``specific`` there (``classes``: :func:`language_classes`)."""
    first = next(iter(tables.values()))
    rows = []
    for column, label in enumerate(first.snapshot_labels):
        row: dict[str, Any] = {"snapshot": label}
        for language, table in tables.items():
            row[f"{language}: metric"] = float(table.metric_clean[column])
            row[f"{language}: specific"] = int((classes[language][:, column] == "specific").sum())
        rows.append(row)
    return rows


def language_report(
    tables: Mapping[str, IETable],
    features: Int[torch.Tensor, " n_selected"],
    relie_values: Mapping[str, torch.Tensor],
    classes: Mapping[str, np.ndarray],
    thresholds: RelIEThresholds = RelIEThresholds(),
):
    """A report section (``crosslens.htmlreport.Report``) comparing the languages; ``classes``:
    each language's RelIE classes of the features (:func:`language_classes`)."""
    from crosslens.htmlreport import Report

    first = next(iter(tables.values()))
    report = Report("Causal analysis per language", subtitle=", ".join(tables))
    report.add_heading("RelIE per language")
    report.add_figure(
        relie_by_language_figure(relie_values, feature_ids=features.tolist(), snapshot_labels=first.snapshot_labels),
        caption=(
            f"{len(features)} features: the union of every language's top features by |IE| at each snapshot. "
            "RelIE = |IE at a snapshot| / sum over snapshots, per language."
        ),
    )
    report.add_table(language_rows(tables, classes))
    report.add_text(
        f"metric = {metric_formula(first.config.get('metric'))} (negative: right); specific = shared features "
        f"whose RelIE at that snapshot is above {thresholds.specific} and whose effect clears that language's "
        "noise floor, as its own causal stage classes them (none at a snapshot where its model is at chance)."
    )
    return report


def run_language_tasks(
    models: SnapshotModels,
    crosscoder: Crosscoder | str | Path,
    tasks: Sequence[TaskDataset],
    out_dir: str | Path,
    *,
    top_k: int = defaults.TOP_K,
    thresholds: RelIEThresholds = RelIEThresholds(),
    **stage_kwargs: Any,
) -> dict[str, Any]:
    """:func:`run_causal_stage` for each task (one per language) into ``out_dir/<task name>/``,
    then RelIE per language for a shared feature set, written to ``relie_by_language.json``
    and ``languages_report.html``. Returns ``{"results": {language: stage result},
    "features", "relie", "report", "paths"}``."""
    by_language: dict[str, TaskDataset] = {}
    for task in tasks:  # all of them before the first stage runs and writes
        language = language_of(task)
        if language in by_language:
            raise CrosslensError(
                f"tasks {by_language[language].name!r} and {task.name!r} are both in language {language!r}; "
                "pass one task per language (--task)"
            )
        by_language[language] = task
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, CausalStageResult] = {}
    for language, task in by_language.items():
        results[language] = run_causal_stage(
            models, crosscoder, task, out / task.name, top_k=top_k, thresholds=thresholds, **stage_kwargs
        )
    tables = {language: result.table for language, result in results.items()}
    features = shared_features(tables, top_k)
    relie_values = relie_by_language(tables, features)
    first = next(iter(tables.values()))
    paths = {"relie_by_language": out / "relie_by_language.json"}
    paths["relie_by_language"].write_text(
        json.dumps(
            {
                "languages": list(tables),
                "tasks": {language: table.task for language, table in tables.items()},
                "features": features.tolist(),
                "snapshots": first.snapshots,
                "snapshot_labels": first.snapshot_labels,
                "relie": {language: values.tolist() for language, values in relie_values.items()},
                "metric_clean": {language: table.metric_clean.tolist() for language, table in tables.items()},
            }
        )
    )
    classes = language_classes(results, features, relie_values, thresholds, stage_kwargs.get("n_boot", defaults.N_BOOT))
    report = language_report(tables, features, relie_values, classes, thresholds)
    paths["report"] = report.write(out / "languages_report.html")
    return {"results": results, "features": features, "relie": relie_values, "report": report, "paths": paths}
