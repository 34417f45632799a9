"""The feature-evolution report: :func:`evolution_report` fills a :class:`Report` (the HTML
builder every stage shares, :mod:`crosslens.htmlreport`) with the feature-evolution analysis.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from crosslens.analysis.contexts import Context
from crosslens.analysis.evolution import FEATURE_CLASSES, NO_STEP, feature_lifetimes
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.geometry import total_dimensionality, turning_point
from crosslens.analysis.plots import (
    dimensionality_curve,
    drift_curve,
    emergence_histogram,
    evolution_heatmap,
    feature_trajectories,
    probe_scatter,
)
from crosslens.analysis.probes import ProbeValidation
from crosslens.core.model_specs import check_model_pair
from crosslens.htmlreport import Report, feature_link
from crosslens.htmlreport import format_cell as _format_cell


# ---------------------------------------------------------------------------
# The feature-evolution report
# ---------------------------------------------------------------------------
def representative_features(analysis: EvolutionAnalysis, per_class: int = 2) -> list[int]:
    """The ``per_class`` strongest (largest peak norm) features of each live class: of the classes
    through time, or of two models' diffing classes (each model's own first) where the analysis holds them."""
    peak_F = analysis.norms.amax(dim=1)
    diffing = analysis.diffing
    names = ("initialization", "persistent", "transient") if diffing is None else (*diffing.only_classes(), "shared")
    chosen: list[int] = []
    for name in names:
        members = [i for i, c in enumerate(analysis.classes) if c == name]
        members.sort(key=lambda i: -float(peak_F[i]))
        chosen += members[:per_class]
    return chosen


REPORT_TITLE = "crosslens: feature evolution"
"""The evolution report's title where the caller names none."""


def evolution_report(
    analysis: EvolutionAnalysis,
    *,
    title: str = REPORT_TITLE,
    probes: ProbeValidation | None = None,
    contexts: Mapping[int, Sequence[Context]] | None = None,
    trajectory_features: Sequence[int] | None = None,
    n_table_features: int = 50,
    report: Report | None = None,
    device: str | torch.device | None = None,
    through_time: bool = True,
) -> Report:
    """Build (or extend) a :class:`Report` with the whole feature-evolution analysis.

    Sections: overview and snapshots, feature classes, norm heatmap, emergence histogram,
    trajectories, dimensionality, drift, a per-feature table, and, when given, probe
    validation and top-activating contexts. Callers add their own sections to the
    returned report before writing it. ``device`` is where the (quadratic in ``d_sae``)
    feature dimensionality is computed. ``through_time=False`` (the snapshots are two distinct
    models, not one model's checkpoints) leaves out what reads the snapshots as a training order:
    the classes through time, the timelines and emergences, dip and recover, and the steps and
    emergences of the snapshot and feature tables and of the contexts' captions, which give each
    feature the class the analysis holds (the diffing class where ``analysis.diffing`` is set); the
    dimensionality curve and the direction drift give way to each model's total dimensionality and
    the mean cosine of a feature's decoder directions in the two models. An
    analysis of another number of distinct models is refused (they have no order, and diffing compares two).
    """
    check_model_pair(analysis.metadata.get("suite"), analysis.n_snapshots, "evolution_report")
    report = report or Report(title, subtitle=_subtitle(analysis))
    _add_overview(report, analysis, through_time)
    if through_time:
        _add_feature_classes(report, analysis)
        _add_timelines(report, analysis, trajectory_features)
        _add_dip_section(report, analysis, n_table_features)
    if through_time:
        _add_geometry(report, analysis, device)
    else:
        _add_model_geometry(report, analysis, device)
    _add_feature_table(report, analysis, n_table_features, through_time)
    if probes is not None:
        _add_probe_section(report, probes)
    if contexts:
        _add_contexts(report, analysis, contexts, through_time)
    return report


def _add_overview(report: Report, analysis: EvolutionAnalysis, through_time: bool) -> None:
    """What a present, faded and dead feature is here; the metadata; the snapshots (two models: the models)."""
    report.add_heading("Overview")
    report.add_text(_lives_text(analysis) if through_time else _models_text(analysis))
    if analysis.metadata:
        report.add_html(
            "<details><summary>crosscoder metadata</summary><pre>"
            + html.escape(json.dumps(analysis.metadata, indent=2, default=str))
            + "</pre></details>"
        )
    if through_time:
        report.add_table(analysis.snapshot_table(), title="Snapshots")
    else:
        report.add_table(_model_rows(analysis), title="Models")


def _lives_text(analysis: EvolutionAnalysis) -> str:
    """What a present, emerging, faded and dead feature is through the snapshots."""
    cfg = analysis.config
    if cfg.presence == "robust":
        presence_text = (
            f"decoder norm is at least {cfg.emergence_threshold:g} of its peak"
            + (
                f" and it fires there on at least {cfg.firing_floor:g} of its peak per-snapshot rate"
                if analysis.snapshot_frequency is not None
                else ""
            )
            + "; it emerges where it is first present (robust presence: a return after a dip is not an "
            "emergence, see Dip and recover)"
        )
    else:
        presence_text = (
            f"decoder norm is at least {cfg.emergence_threshold:g} of its peak (decoder-norm presence, "
            "after Ge et al.); it emerges at the first snapshot from which it stays present"
        )
    return (
        f"{analysis.d_sae} crosscoder features over {analysis.n_snapshots} snapshots (steps {analysis.steps[0]} to "
        f"{analysis.steps[-1]}). A feature is present at a snapshot when its {presence_text}, and fades where it "
        f"falls below {cfg.fade_threshold:g} of its peak and does not climb back to {cfg.emergence_threshold:g} "
        f"before the end. Features are dead when their peak norm is below {cfg.dead_threshold:g} x the median "
        "peak, when their norms never moved from the shared initial value"
        + (
            (
                f", or when they fire on at most {cfg.dead_frequency:g} of the sampled tokens."
                if cfg.dead_frequency > 0
                else ", or when they never fire on the sampled tokens."
            )
            if analysis.frequency is not None
            else " (firing frequencies were not measured: pass an activation store to also catch latents that "
            "stopped firing during training)."
        )
    )


def _models_text(analysis: EvolutionAnalysis) -> str:
    """What the Models table counts, and where a two-model crosscoder's classes are."""
    return (
        f"{analysis.d_sae} crosscoder features over {analysis.n_snapshots} models, in no training order. A live "
        f"feature is present at a model when its decoder norm there is at least "
        f"{analysis.config.emergence_threshold:g} of its largest (the Models table counts them). Which model holds "
        "which feature, and which features are dead, is read by relative decoder norm in Model diffing, below; "
        "the Features table and the contexts give each feature that class."
    )


def _model_rows(analysis: EvolutionAnalysis) -> list[dict[str, object]]:
    """One row per model: its label and how many live features are present there (no steps, no
    emergences: two models are in no order)."""
    recorded = (analysis.metadata.get("suite") or {}).get("snapshots") or []
    labels = [str(entry.get("revision")) for entry in recorded]
    if len(labels) != analysis.n_snapshots:
        labels = [f"snapshot{s}" for s in range(analysis.n_snapshots)]
    live_F = torch.tensor([c != "dead" for c in analysis.classes])
    present_S = ((analysis.normalized >= analysis.config.emergence_threshold) & live_F[:, None]).sum(0)
    return [{"snapshot": s, "model": label, "present": int(present_S[s])} for s, label in enumerate(labels)]


def _add_feature_classes(report: Report, analysis: EvolutionAnalysis) -> None:
    report.add_heading("Feature classes")
    counts = analysis.class_counts()
    report.add_table(
        [
            {"class": name, "features": counts[name], "fraction": counts[name] / max(1, analysis.d_sae)}
            for name in FEATURE_CLASSES
        ],
        title="Features per class",
        percent=["fraction"],
    )
    report.add_text(
        f"initialization: present {analysis.initialization_words()}, kept in this class even if it fades later. "
        "persistent: emerges later and survives to the last snapshot. transient: emerges later, then fades. "
        "dead: never carries weight, was never trained, or never fires."
    )


def _add_timelines(report: Report, analysis: EvolutionAnalysis, trajectory_features: Sequence[int] | None) -> None:
    """Norm heatmap, emergence histogram, trajectories of a few features."""
    report.add_heading("Decoder-norm heatmap")
    report.add_figure(evolution_heatmap(analysis), caption="Each row is a live feature, normalised by its peak.")
    report.add_heading("Emergence")
    report.add_figure(emergence_histogram(analysis))

    report.add_heading("Trajectories")
    features = list(trajectory_features) if trajectory_features is not None else representative_features(analysis)
    if features:
        report.add_figure(feature_trajectories(analysis, features))


def _add_geometry(report: Report, analysis: EvolutionAnalysis, device: str | torch.device | None) -> None:
    """Feature dimensionality and direction drift."""
    report.add_heading("Feature dimensionality")
    total_S = total_dimensionality(analysis.dimensionality(device=device, progress=analysis.d_sae > 20_000))
    turn = turning_point(total_S)
    report.add_figure(
        dimensionality_curve(total_S, analysis.steps, turn),
        caption="Sum over live features of D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (Elhage et al.). "
        + (f"Minimum at step {analysis.steps[turn]}." if turn is not None else "No interior minimum."),
    )

    report.add_heading("Direction drift")
    adjacent_FS, to_final_FS = analysis.drift()
    report.add_figure(
        drift_curve(adjacent_FS, to_final_FS, analysis.steps),
        caption="Mean cosine of each feature's decoder direction with its direction at the previous and at the "
        "final snapshot, over features present at both.",
    )


def _add_model_geometry(report: Report, analysis: EvolutionAnalysis, device: str | torch.device | None) -> None:
    """Two models' feature dimensionality, each model's, and the cosine of each feature's decoder
    directions in the one model and the other: two models have no order for a turning point to
    fall in, nor a final snapshot for a direction to drift towards."""
    labels = [str(row["model"]) for row in _model_rows(analysis)]
    report.add_heading("Feature dimensionality")
    total_S = total_dimensionality(analysis.dimensionality(device=device, progress=analysis.d_sae > 20_000))
    report.add_table(
        [{"model": label, "dimensionality": float(total_S[s])} for s, label in enumerate(labels)],
        title="Total feature dimensionality in each model",
    )
    report.add_text(
        "Sum over live features of D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (Elhage et al.), of each model's "
        "decoder rows: how many dimensions its features use."
    )
    report.add_heading("Decoder directions between the two models")
    cosine_F = analysis.drift()[0][:, 0]  # NaN where the feature is absent from either model
    both = int((~cosine_F.isnan()).sum())
    report.add_text(
        f"Mean cosine of each feature's decoder direction in {labels[0]} with its direction in {labels[1]}, over "
        f"the {both} features present in both: {float(cosine_F.nanmean()):.4g}."
        if both
        else f"No feature is present in both {labels[0]} and {labels[1]}: no pair of decoder directions to compare."
    )


def _add_feature_table(report: Report, analysis: EvolutionAnalysis, n_table_features: int, through_time: bool) -> None:
    report.add_heading("Features")
    peak_F = analysis.norms.amax(dim=1)
    strongest = sorted(range(analysis.d_sae), key=lambda i: -float(peak_F[i]))[:n_table_features]
    rows = analysis.feature_table(strongest)
    if not through_time:
        rows = [_model_feature_row(analysis, row) for row in rows]
    report.add_table(rows, title=f"The {len(strongest)} features with the largest peak norm")


def _model_feature_row(analysis: EvolutionAnalysis, row: dict) -> dict:
    """A feature table's row of two models: its class, peak norm, frequency and (where the analysis
    holds the diffing classes) relative decoder norm, without the steps of a training order."""
    kept = {k: v for k, v in row.items() if not k.endswith("_step")}
    if analysis.diffing is not None:
        kept["relative_norm"] = round(float(analysis.diffing.relative_norm[row["feature"]]), 4)
    return kept


def _add_probe_section(report: Report, probes: ProbeValidation) -> None:
    report.add_heading("Probe validation")
    report.add_text(
        f"For {len(probes.features)} features, a linear probe per snapshot predicts from that snapshot's "
        f"activations whether the feature fires ({probes.n_tokens} tokens, held-out balanced error). "
        f"Pearson r between probe error and normalised decoder norm: {probes.pearson_r:.3f} "
        "(strongly negative means the decoder norm tracks the feature)."
    )
    report.add_figure(probe_scatter(probes))


def _add_contexts(
    report: Report, analysis: EvolutionAnalysis, contexts: Mapping[int, Sequence[Context]], through_time: bool
) -> None:
    report.add_heading("Top-activating contexts")
    for feature, items in contexts.items():
        cls = analysis.classes[feature] if feature < analysis.d_sae else "?"
        lines = "".join(f'<tr><td>{c.activation:.3f}</td><td class="text context">{c.html()}</td></tr>' for c in items)
        said = html.escape(cls)
        if through_time:
            emergence = analysis.emergence_step(feature) if feature < analysis.d_sae else None
            said += f", emerges at step {_format_cell(emergence)}"
        report.add_html(
            f"<table><caption>feature {feature_link(feature)} ({said})</caption><thead><tr><th>activation</th>"
            f'<th class="text">context</th></tr></thead><tbody>{lines}</tbody></table>'
        )


def _add_dip_section(report: Report, analysis: EvolutionAnalysis, n_table_features: int) -> None:
    """Features that are present, vanish for a stretch and come back: their own pattern,
    not an emergence (robust presence), with the emergence Ge et al.'s decoder-norm
    reading would give them."""
    report.add_heading("Dip and recover")
    dippers = analysis.dip_and_recover_features()
    live = sum(1 for c in analysis.classes if c != "dead")
    report.add_text(
        f"{len(dippers)} of {live} live features dip below {analysis.config.fade_threshold:g} of their peak "
        "and later come back above the presence threshold. "
        + (
            "Under robust presence they emerge where they first appear; Ge et al.'s decoder-norm reading "
            "would date their emergence to the return."
            if analysis.config.presence == "robust"
            else "Under Ge et al.'s decoder-norm reading (this report's mode) their emergence is the return; "
            "robust presence would date it to where they first appear."
        )
        + " A dip shared by most features at the same snapshots (see the Snapshots table, columns dipping "
        "and recovering) points at the snapshot, e.g. activation norms changing fast, not at the features."
    )
    if not dippers:
        return
    lt = analysis.lifetimes
    by_dip: dict[int, int] = {}
    for i in dippers:
        by_dip[int(lt.dip[i])] = by_dip.get(int(lt.dip[i]), 0) + 1
    report.add_table(
        [
            {"dip_step": analysis.steps[s], "features": n, "fraction_of_live": n / max(1, live)}
            for s, n in sorted(by_dip.items())
        ],
        title="Where the dips start",
        percent=["fraction_of_live"],
    )
    peak_F = analysis.norms.amax(dim=1)
    strongest = sorted(dippers, key=lambda i: -float(peak_F[i]))
    report.add_figure(
        feature_trajectories(analysis, strongest[:6], normalized=True, title="Dip and recover, norm / peak"),
        caption="The six dip-and-recover features with the largest peak norm, each normalised by its peak.",
    )
    rows = analysis.feature_table(strongest[:n_table_features])
    other = "robust" if analysis.config.presence == "decoder_norm" else "decoder_norm"
    alt = feature_lifetimes(
        analysis.norms, replace(analysis.config, presence=other), analysis.frequency, analysis.snapshot_frequency
    )
    for row in rows:
        e = int(alt.emergence[row["feature"]])
        row[f"emergence_step ({other})"] = None if e == NO_STEP else analysis.steps[e]
    report.add_table(rows, title=f"The {len(rows)} strongest dip-and-recover features")


def _subtitle(analysis: EvolutionAnalysis) -> str:
    meta = analysis.metadata
    suite = meta.get("suite") if isinstance(meta.get("suite"), dict) else {}
    parts = [
        str(x) for x in (suite.get("model_id") or meta.get("model_id"), meta.get("hook") or meta.get("hook_name")) if x
    ]
    return " | ".join(parts) if parts else f"{analysis.d_sae} features x {analysis.n_snapshots} snapshots"
