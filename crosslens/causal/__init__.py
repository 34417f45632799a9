"""Does a feature matter? Splicing, integrated gradients, ablation curves and RelIE.

- :func:`splice` runs a snapshot's HookedTransformer with the crosscoder at its hook.
- :func:`integrated_gradients` is the pure IG core; :func:`attribute` applies it to
  every snapshot of a suite for a task and returns an :class:`IETable`.
- :func:`ablate` and :func:`ablation_curves` remove feature sets and trace the metric.
- :func:`relie`, :func:`relie_pairwise` and :func:`classify_relie` say at which
  snapshots a feature matters.
- :func:`run_causal_stage` does all of it for one task and writes tables and a report.
"""

from crosslens.causal.ablation import (
    ablate,
    ablation_curve,
    ablation_curves,
    ablation_edit,
    mean_feature_codes,
    task_metric,
    top_k_features,
)
from crosslens.causal.attribution import (
    AttributionConfig,
    IETable,
    SnapshotAttribution,
    attribute,
    attribute_snapshot,
    collect_task_activations,
    logit_diff,
)
from crosslens.causal.ig import IGResult, attribution_patching, integrated_gradients
from crosslens.causal.relie import (
    RELIE_CLASSES,
    RelIEThresholds,
    class_counts,
    classify_relie,
    reldec,
    relie,
    relie_pairwise,
    select_top_features,
)
from crosslens.causal.stage import load_crosscoder, run_causal_stage
from crosslens.causal.splice import (
    SnapshotCodec,
    SpliceState,
    activations_at,
    collect_activations,
    exact_codes,
    resolve_norm_factors,
    run_from_hook,
    splice,
)

__all__ = [
    "RELIE_CLASSES",
    "AttributionConfig",
    "IETable",
    "IGResult",
    "RelIEThresholds",
    "SnapshotAttribution",
    "SnapshotCodec",
    "SpliceState",
    "ablate",
    "ablation_curve",
    "ablation_curves",
    "ablation_edit",
    "activations_at",
    "attribute",
    "attribute_snapshot",
    "attribution_patching",
    "class_counts",
    "classify_relie",
    "collect_activations",
    "collect_task_activations",
    "exact_codes",
    "integrated_gradients",
    "load_crosscoder",
    "logit_diff",
    "mean_feature_codes",
    "reldec",
    "relie",
    "relie_pairwise",
    "resolve_norm_factors",
    "run_causal_stage",
    "run_from_hook",
    "select_top_features",
    "splice",
    "task_metric",
    "top_k_features",
]
