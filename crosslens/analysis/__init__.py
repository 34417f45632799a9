"""Feature evolution from a trained multi-snapshot crosscoder.

- :mod:`.evolution`: decoder-norm table, emergence/peak/fade, classes; :mod:`.evolution_analysis`
  bundles them for one crosscoder (:class:`EvolutionAnalysis`).
- :mod:`.geometry`: direction drift, RelDec, feature dimensionality.
- :mod:`.probes`: linear-probe check that decoder norm tracks the feature.
- :mod:`.contexts`: top-activating token windows from an activation store.
- :mod:`.synthetic`: planted multi-snapshot data with a known timeline.
- :mod:`.scaling`: how much of each latent each snapshot's activations hold (Minder et al.);
  :mod:`.emergence_check`: the latent-scaled emergence beside the decoder norm's, contested where
  they disagree; :mod:`.lineage_events`: splits, merges, handoffs and relatives from per-snapshot decoder
  directions (each latent's nearest others in :mod:`.relatives`; whether another crosscoder of the
  same store makes the same moves in :mod:`.agreement`); :mod:`.emergence_record` bundles and saves them, :mod:`.emergence_report` reports them.
- :mod:`.plots` and :mod:`.report`: plotly figures and a self-contained HTML report.
- :mod:`.diffing`: a two-model crosscoder's diffing classes (shared, A-only, B-only) by relative decoder norm.
- :mod:`.analyze`: :func:`analyze_crosscoder`, everything above in one call.
"""

from crosslens.analysis.agreement import lineage_agreement
from crosslens.analysis.analyze import analyze_crosscoder, write_evolution_report
from crosslens.analysis.composition import CoFiring, composition_pairs
from crosslens.analysis.contexts import Context, top_activating_contexts
from crosslens.analysis.diffing import DiffingAnalysis, DiffingThresholds
from crosslens.analysis.emergence_check import EmergenceCheck, EmergenceCheckConfig, check_emergence
from crosslens.analysis.emergence_record import EmergenceResult, LineageAgreement, compute_emergence, read_emergence
from crosslens.analysis.evolution import FEATURE_CLASSES, EvolutionConfig, Lifetimes
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.geometry import direction_drift, feature_dimensionality, rel_dec
from crosslens.analysis.lineage_events import (
    Lineage,
    LineageConfig,
    LineageEvent,
    lineage,
    lineage_of,
    strongest_at_first_snapshot,
)
from crosslens.analysis.planted_events import PlantedEvents
from crosslens.analysis.planted_lineage import PlantedLineageScores, planted_lineage_scores
from crosslens.analysis.planted_match import match_planted, planted_scores
from crosslens.analysis.probes import ProbeValidation, firing_frequency, probe_validation
from crosslens.analysis.report import evolution_report
from crosslens.analysis.scaling import LatentScaling, LatentScalingConfig, latent_scaling
from crosslens.analysis.synthetic import PlantedConfig, PlantedEvolution

__all__ = [
    "CoFiring",
    "composition_pairs",
    "EmergenceCheck",
    "EmergenceCheckConfig",
    "EmergenceResult",
    "LatentScaling",
    "LatentScalingConfig",
    "Lineage",
    "LineageAgreement",
    "LineageConfig",
    "LineageEvent",
    "PlantedEvents",
    "PlantedLineageScores",
    "check_emergence",
    "compute_emergence",
    "latent_scaling",
    "lineage",
    "lineage_of",
    "lineage_agreement",
    "read_emergence",
    "strongest_at_first_snapshot",
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
    "firing_frequency",
    "match_planted",
    "planted_lineage_scores",
    "planted_scores",
    "probe_validation",
    "rel_dec",
    "top_activating_contexts",
    "write_evolution_report",
]
