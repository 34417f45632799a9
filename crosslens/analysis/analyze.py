"""One call from a trained crosscoder (and optionally its activation store) to the report.

This is what ``crosslens analyze`` and the demo's last stage run.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from crosslens.activations.partners import check_recorded_partner
from crosslens.analysis.contexts import top_activating_contexts
from crosslens.analysis.diffing import add_diffing_section, is_diffing, set_diffing_classes
from crosslens.analysis.emergence_check import EmergenceCheckConfig
from crosslens.analysis.emergence_record import EmergenceResult, compute_emergence
from crosslens.analysis.emergence_report import add_emergence_section
from crosslens.analysis.evolution import EvolutionConfig
from crosslens.analysis.evolution_analysis import EvolutionAnalysis, metadata_dict, snapshots_from_metadata
from crosslens.analysis.lineage_events import LineageConfig
from crosslens.analysis.probes import (
    FREQUENCY_TOKENS,
    PROBE_FEATURES,
    PROBE_TOKENS,
    ProbeValidation,
    firing_frequency,
    probe_validation,
)
from crosslens.analysis.report import REPORT_TITLE, evolution_report, representative_features
from crosslens.analysis.scaling import LatentScalingConfig, check_snapshot_decoders
from crosslens.core.errors import PartnerMismatchError
from crosslens.core.hooks import recorded_hook, resolve_hook
from crosslens.core.metadata import unmeasured_norm_factors
from crosslens.htmlreport import Report

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder


def analyze_crosscoder(
    crosscoder: Crosscoder,
    *,
    store: Any = None,
    hook: str | None = None,
    tokenizer: Any = None,
    steps: Sequence[int] | None = None,
    tokens_seen: Sequence[int | None] | None = None,
    config: EvolutionConfig | None = None,
    n_frequency_tokens: int = FREQUENCY_TOKENS,
    n_probe_features: int = PROBE_FEATURES,
    n_probe_tokens: int = PROBE_TOKENS,
    n_context_features: int = 12,
    max_context_tokens: int | None = 200_000,
    title: str = REPORT_TITLE,
    device: str | torch.device | None = None,
    progress: bool = True,
    emergence: bool | EmergenceResult = True,
    scaling_config: LatentScalingConfig | None = None,
    check_config: EmergenceCheckConfig | None = None,
    lineage_config: LineageConfig | None = None,
) -> tuple[EvolutionAnalysis, Report]:
    """Analyse ``crosscoder`` and build the feature-evolution report.

    Without a store, the report covers what the decoder alone tells (norm timelines,
    classes, drift, dimensionality). With an activation store it adds firing frequencies
    (never-firing latents become ``dead``), the probe validation and top-activating
    contexts (decoded with ``tokenizer`` when given). Steps come from ``steps``, else the
    crosscoder's provenance metadata, else the store's snapshot list. A store or hook that is not
    the crosscoder's partner (other snapshots, hook or width than it records) is refused.

    ``device`` is where the feature dimensionality (quadratic in ``d_sae``) is computed.
    With ``emergence`` (default) it also checks every emergence with latent scaling on the store
    and reads the latents' lineage (:func:`~crosslens.analysis.emergence_record.compute_emergence`,
    settings in the three configs), kept as ``analysis.emergence`` and given its report section.
    A crosscoder of two models gets the diffing classes in place of the classes through time and of
    the emergence section, with latent scaling's verdict on its one-model-only latents where it read
    the store, kept as ``analysis.diffing``; one of another number of distinct models is refused
    (:class:`~crosslens.core.errors.CrosslensError`): they have no training order, and diffing
    compares two. ``emergence`` may also be a check saved for this crosscoder
    (:func:`~crosslens.analysis.emergence_record.read_emergence`), taken as it is: a report rebuilt
    without the store latent scaling read keeps it, and without a store classes dead latents by the
    firing frequencies it holds.
    Returns the analysis and the report; ``report.write(path)`` saves it.
    """
    diffing = is_diffing(crosscoder, "analyze_crosscoder")  # other than two distinct models: refused before reading
    if emergence and not isinstance(emergence, EmergenceResult):
        check_snapshot_decoders(crosscoder)  # before the store is read: latent scaling and lineage need it
    frequency = None
    if store is None and isinstance(emergence, EmergenceResult):
        frequency = emergence.frequency  # the firing the saved check classed dead latents by
    if store is not None:
        _refuse_unmeasured_factors(crosscoder)
        check_recorded_partner(crosscoder, store, hook, used_by="analyze_crosscoder")
        hook = resolve_hook(store, hook or _metadata_hook(crosscoder, store))
        frequency = firing_frequency(store, crosscoder, hook=hook, n_tokens=n_frequency_tokens)
        if steps is None and not _has_provenance_steps(crosscoder):
            steps, tokens_seen = _store_steps(store, tokens_seen)
    analysis = EvolutionAnalysis.from_crosscoder(crosscoder, steps, tokens_seen, config, frequency=frequency)
    if isinstance(emergence, EmergenceResult):
        analysis.emergence = emergence
    elif emergence:
        configs = {"scaling_config": scaling_config, "check_config": check_config, "lineage_config": lineage_config}
        analysis.emergence = compute_emergence(
            crosscoder, analysis, store, hook=hook, device=device, progress=progress, **configs
        )
    set_diffing_classes(analysis, crosscoder, analysis.emergence)  # before the contexts are chosen by class

    probes, contexts = None, None
    if store is not None:
        probes = _probes(store, crosscoder, hook, n_probe_tokens, n_probe_features)
        features = _context_features(analysis, n_context_features)
        read = {"hook": hook, "tokenizer": tokenizer, "max_tokens": max_context_tokens, "progress": progress}
        contexts = top_activating_contexts(store, crosscoder, features, **read)
    report = evolution_report(
        analysis, title=title, probes=probes, contexts=contexts, device=device, through_time=not diffing
    )
    _add_checks(report, analysis)
    return analysis, report


def _probes(store: Any, crosscoder: Crosscoder, hook: str, n_tokens: int, n_features: int) -> ProbeValidation | None:
    """The probe validation on ``store``, or None with a warning where it cannot be fitted."""
    try:
        return probe_validation(store, crosscoder, hook=hook, n_tokens=n_tokens, n_features=n_features)
    except ValueError as err:  # e.g. too few tokens for any feature to fire often enough
        warnings.warn(f"probe validation skipped: {err}", stacklevel=3)
        return None


def _add_checks(report: Report, analysis: EvolutionAnalysis) -> None:
    """The emergence check's section; for a crosscoder of two models instead (a base model and its
    fine-tune have no training order for an emergence or a lineage event to follow), the diffing
    classes judged by latent scaling (``analysis.diffing``)."""
    if analysis.diffing is not None:
        add_diffing_section(report, analysis.diffing)
    elif analysis.emergence is not None:
        add_emergence_section(report, analysis, analysis.emergence)


def write_evolution_report(crosscoder: Crosscoder, out: str | Path, **kwargs: Any) -> Path:
    """:func:`analyze_crosscoder`, then write the report to ``out``; returns the path."""
    _, report = analyze_crosscoder(crosscoder, **kwargs)
    return report.write(out)


def _context_features(analysis: EvolutionAnalysis, n: int) -> list[int]:
    """Representatives of every live class first, then the strongest remaining features."""
    chosen = representative_features(analysis, per_class=max(1, n // 3))
    peak_F = analysis.norms.amax(dim=1)
    live = [i for i in torch.argsort(peak_F, descending=True).tolist() if analysis.classes[i] != "dead"]
    for i in live:
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen[:n]


def _store_steps(store: Any, tokens_seen: Sequence[int | None] | None) -> tuple[Any, Any]:
    """The steps (and tokens seen) of the store's snapshots, for a crosscoder that records none."""
    snapshots = list(getattr(store, "snapshots", []) or [])
    if snapshots and all("step" in s for s in snapshots):
        return [int(s["step"]) for s in snapshots], tokens_seen or [s.get("tokens_seen") for s in snapshots]
    return None, tokens_seen


def _metadata_hook(crosscoder: Crosscoder, store: Any) -> str | None:
    hook = recorded_hook(crosscoder)
    return hook if hook in list(getattr(store, "hooks", [])) else None


def _has_provenance_steps(crosscoder: Crosscoder) -> bool:
    return bool(snapshots_from_metadata(metadata_dict(crosscoder)))


def _refuse_unmeasured_factors(crosscoder: Crosscoder) -> None:
    """Refuse a store read through a crosscoder whose source scaled activations by per-snapshot
    factors it did not save, none measured since: its activations would be read at a scale the
    crosscoder was not trained on, and every number from them would be off."""
    if unmeasured_norm_factors(metadata_dict(crosscoder)):
        raise PartnerMismatchError(
            "analyze_crosscoder: this crosscoder reads activations scaled by per-snapshot factors its source did not "
            "save, and none were measured; measure them on a store of its models first: "
            "crosslens.pretrained.measure_norm_factors(crosscoder, store) (for its run folder, crosslens pretrained "
            "run RELEASE --out RUN --store STORE --overwrite)"
        )
