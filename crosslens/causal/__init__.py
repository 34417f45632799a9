"""Does a feature matter? Splicing, integrated gradients, ablation curves and RelIE.

- :func:`splice` runs a snapshot's HookedTransformer with the crosscoder at its hook.
- :func:`integrated_gradients` is the pure IG core; :func:`attribute` applies it to
  every snapshot of a suite for a task and returns an :class:`IETable`.
- :func:`ablate` and :func:`ablation_curves` remove feature sets and trace the metric.
- :func:`relie`, :func:`relie_pairwise` and :func:`classify_relie` say at which
  snapshots a feature matters.
- :func:`run_causal_stage` does all of it for one task and writes tables and a report.
"""

from crosslens.causal.ablation import ablate, ablation_curves, task_metric
from crosslens.causal.attribution import AttributionConfig, attribute
from crosslens.causal.ie_table import IETable
from crosslens.causal.ig import integrated_gradients
from crosslens.causal.relative_ie import (
    RELIE_CLASSES,
    RelIEThresholds,
    class_counts,
    classify_relie,
    reldec,
    relie,
    relie_pairwise,
)
from crosslens.causal.spliced_loss_eval import format_spliced_loss, spliced_loss
from crosslens.causal.splicing import splice
from crosslens.causal.stage import CausalStageResult, causal_report, load_crosscoder, run_causal_stage
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec

__all__ = [
    "AttributionConfig",
    "CausalStageResult",
    "IETable",
    "RELIE_CLASSES",
    "RelIEThresholds",
    "SnapshotCodec",
    "ablate",
    "ablation_curves",
    "attribute",
    "causal_report",
    "class_counts",
    "classify_relie",
    "format_spliced_loss",
    "integrated_gradients",
    "load_crosscoder",
    "reldec",
    "relie",
    "relie_pairwise",
    "run_causal_stage",
    "splice",
    "spliced_loss",
    "task_metric",
]
