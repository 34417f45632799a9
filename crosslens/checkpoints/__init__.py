"""Checkpoint suites: a model family's training snapshots as TransformerLens models.

>>> from crosslens.checkpoints import CheckpointSuite
>>> suite = CheckpointSuite.pythia("EleutherAI/pythia-160m").select(n=32)   # doctest: +SKIP
>>> for info, model in suite.iter_models():                                 # doctest: +SKIP
...     ...  # one HookedTransformer resident at a time
"""

from crosslens.checkpoints.convert import architecture_signature, hf_to_hooked, weights_sha256
from crosslens.checkpoints.hub import list_revisions
from crosslens.checkpoints.schedules import PYTHIA_STEPS, PYTHIA_V0_STEPS, spaced_steps
from crosslens.checkpoints.snapshot import (
    PYTHIA_TOKENS_PER_STEP,
    SnapshotInfo,
    SnapshotRef,
    parse_step,
    parse_tokens,
)
from crosslens.checkpoints.suite import CheckpointSuite, release_model

__all__ = [
    "CheckpointSuite",
    "PYTHIA_STEPS",
    "PYTHIA_TOKENS_PER_STEP",
    "PYTHIA_V0_STEPS",
    "SnapshotInfo",
    "SnapshotRef",
    "architecture_signature",
    "hf_to_hooked",
    "list_revisions",
    "parse_step",
    "parse_tokens",
    "release_model",
    "spaced_steps",
    "weights_sha256",
]
