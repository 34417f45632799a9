"""Feature evolution from a trained multi-snapshot crosscoder.

- :mod:`.evolution`: decoder-norm table, emergence/peak/fade, classes (:class:`EvolutionAnalysis`).
- :mod:`.geometry`: direction drift, RelDec, feature dimensionality.
- :mod:`.probes`: linear-probe check that decoder norm tracks the feature.
- :mod:`.contexts`: top-activating token windows from an activation store.
- :mod:`.synthetic`: planted multi-snapshot data with a known timeline.
- :mod:`.plots` and :mod:`.report`: plotly figures and a self-contained HTML report.
- :mod:`.analyze`: :func:`analyze_crosscoder`, everything above in one call.
"""

from crosslens.analysis.analyze import analyze_crosscoder, write_evolution_report
from crosslens.analysis.contexts import Context, top_activating_contexts
from crosslens.analysis.evolution import (
    FEATURE_CLASSES,
    NO_STEP,
    PRESENCE_MODES,
    EvolutionAnalysis,
    EvolutionConfig,
    Lifetimes,
    classify_features,
    dead_features,
    decoder_norm_table,
    feature_lifetimes,
    normalize_norms,
    presence_strength,
)
from crosslens.analysis.geometry import (
    direction_drift,
    feature_dimensionality,
    pairwise_rel_dec,
    rel_dec,
    total_dimensionality,
    turning_point,
)
from crosslens.analysis.probes import (
    ProbeValidation,
    firing_frequency,
    probe_validation,
    snapshot_firing_frequency,
)
from crosslens.analysis.report import Report, evolution_report
from crosslens.analysis.synthetic import (
    PlantedConfig,
    PlantedEvolution,
    match_planted,
    planted_mmcs,
    planted_recovery,
    planted_scores,
)

__all__ = [
    "FEATURE_CLASSES",
    "NO_STEP",
    "PRESENCE_MODES",
    "Context",
    "EvolutionAnalysis",
    "EvolutionConfig",
    "Lifetimes",
    "PlantedConfig",
    "PlantedEvolution",
    "ProbeValidation",
    "Report",
    "analyze_crosscoder",
    "classify_features",
    "dead_features",
    "decoder_norm_table",
    "direction_drift",
    "evolution_report",
    "feature_dimensionality",
    "feature_lifetimes",
    "firing_frequency",
    "match_planted",
    "normalize_norms",
    "pairwise_rel_dec",
    "planted_mmcs",
    "presence_strength",
    "planted_recovery",
    "planted_scores",
    "probe_validation",
    "rel_dec",
    "snapshot_firing_frequency",
    "top_activating_contexts",
    "total_dimensionality",
    "turning_point",
    "write_evolution_report",
]
