"""Checkpoint suites: a model family's training snapshots as TransformerLens models.

>>> from crosslens.checkpoints import CheckpointSuite
>>> suite = CheckpointSuite.pythia("EleutherAI/pythia-160m").select(n=32)   # doctest: +SKIP
>>> for info, model in suite.iter_models():                                 # doctest: +SKIP
...     ...  # one HookedTransformer resident at a time

The names resolve on first use: :class:`ModelShape` is read without torch (``crosslens plan``
sizes a model from it), while the suite imports torch and TransformerLens.
"""

from __future__ import annotations

from crosslens.core.lazy import lazy_attributes

_LAZY = {
    "CheckpointSuite": "crosslens.checkpoints.suite",
    "MixedIngredientsError": "crosslens.checkpoints.trajectory",
    "ModelShape": "crosslens.checkpoints.shape",
    "SnapshotInfo": "crosslens.checkpoints.snapshot",
    "SnapshotRef": "crosslens.checkpoints.snapshot",
    "list_revisions": "crosslens.checkpoints.hub",
    "release_model": "crosslens.core.devices",
    "spaced_steps": "crosslens.checkpoints.schedules",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
