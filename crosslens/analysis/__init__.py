"""Feature evolution from a trained multi-snapshot crosscoder.

- :mod:`.evolution`: decoder-norm table, emergence/peak/fade, classes; :mod:`.evolution_analysis`
  bundles them for one crosscoder (:class:`EvolutionAnalysis`).
- :mod:`.geometry`: direction drift, RelDec, feature dimensionality.
- :mod:`.probes`: linear-probe check that decoder norm tracks the feature.
- :mod:`.contexts`: top-activating token windows from an activation store.
- :mod:`.synthetic`: planted multi-snapshot data with a known timeline.
- :mod:`.plots` and :mod:`.report`: plotly figures and a self-contained HTML report.
- :mod:`.diffing`: a two-model crosscoder's diffing classes (shared, A-only, B-only) by relative decoder norm.
- :mod:`.analyze`: :func:`analyze_crosscoder`, everything above in one call.
"""

from crosslens.analysis.analyze import analyze_crosscoder, write_evolution_report
from crosslens.analysis.contexts import Context, top_activating_contexts
from crosslens.analysis.diffing import DiffingAnalysis, DiffingThresholds
from crosslens.analysis.evolution import FEATURE_CLASSES, EvolutionConfig, Lifetimes
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.geometry import direction_drift, feature_dimensionality, rel_dec
from crosslens.analysis.probes import ProbeValidation, probe_validation
from crosslens.analysis.report import evolution_report
from crosslens.analysis.synthetic import PlantedConfig, PlantedEvolution, planted_scores

__all__ = [
    "EvolutionAnalysis",
    "EvolutionConfig",
    "FEATURE_CLASSES",
    "Lifetimes",
    "Context",
    "DiffingAnalysis",
    "DiffingThresholds",
    "PlantedConfig",
    "PlantedEvolution",
    "ProbeValidation",
    "analyze_crosscoder",
    "direction_drift",
    "evolution_report",
    "feature_dimensionality",
    "planted_scores",
    "probe_validation",
    "rel_dec",
    "top_activating_contexts",
    "write_evolution_report",
]
