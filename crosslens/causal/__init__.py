"""Does a feature matter? Splicing, integrated gradients, ablation curves and RelIE.

- :func:`splice` runs a snapshot's HookedTransformer with the crosscoder at its hook.
- :func:`integrated_gradients` is the pure IG core; :func:`attribute` applies it to
  every snapshot of a suite for a task and returns an :class:`IETable`.
- :func:`ablate` and :func:`ablation_curves` remove feature sets and trace the metric.
- :func:`relie`, :func:`relie_pairwise` and :func:`classify_relie` say at which
  snapshots a feature matters.
- :func:`run_causal_stage` does all of it for one task and writes tables and a report.

Each name is imported on first use, so that the command line can read the stage's defaults
(:mod:`crosslens.causal.defaults`) without loading torch.
"""

from crosslens.core.lazy import lazy_attributes

_SOURCES = {
    "ablate": "crosslens.causal.ablation",
    "ablation_curves": "crosslens.causal.ablation",
    "task_metric": "crosslens.causal.ablation",
    "AttributionConfig": "crosslens.causal.attribution",
    "attribute": "crosslens.causal.attribution",
    "IETable": "crosslens.causal.ie_table",
    "integrated_gradients": "crosslens.causal.ig",
    "RELIE_CLASSES": "crosslens.causal.relative_ie",
    "RelIEThresholds": "crosslens.causal.relative_ie",
    "class_counts": "crosslens.causal.relative_ie",
    "classify_relie": "crosslens.causal.relative_ie",
    "reldec": "crosslens.causal.relative_ie",
    "relie": "crosslens.causal.relative_ie",
    "relie_pairwise": "crosslens.causal.relative_ie",
    "format_spliced_loss": "crosslens.causal.spliced_loss_eval",
    "spliced_loss": "crosslens.causal.spliced_loss_eval",
    "splice": "crosslens.causal.splicing",
    "CausalStageResult": "crosslens.causal.stage",
    "causal_report": "crosslens.causal.stage",
    "load_crosscoder": "crosslens.causal.stage",
    "run_causal_stage": "crosslens.causal.stage",
    "SnapshotCodec": "crosslens.crosscoders.per_snapshot_sae",
}

__all__ = sorted(_SOURCES)

# the plots module is public too (docs/API.md), as an attribute of the package
__getattr__ = lazy_attributes(__name__, {**_SOURCES, "plots": "crosslens.causal.plots"})
