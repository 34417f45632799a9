"""Checkpoint suites: a model family's training snapshots as TransformerLens models.

>>> from crosslens.checkpoints import CheckpointSuite
>>> suite = CheckpointSuite.pythia("EleutherAI/pythia-160m").select(n=32)   # doctest: +SKIP
>>> for info, model in suite.iter_models():                                 # doctest: +SKIP
...     ...  # one HookedTransformer resident at a time
"""

from crosslens.checkpoints.hub import list_revisions
from crosslens.checkpoints.schedules import spaced_steps
from crosslens.checkpoints.snapshot import SnapshotInfo, SnapshotRef
from crosslens.checkpoints.suite import CheckpointSuite
from crosslens.checkpoints.trajectory import MixedIngredientsError
from crosslens.core.devices import release_model

__all__ = [
    "CheckpointSuite",
    "MixedIngredientsError",
    "SnapshotInfo",
    "SnapshotRef",
    "list_revisions",
    "release_model",
    "spaced_steps",
]
