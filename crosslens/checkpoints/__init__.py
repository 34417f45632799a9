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
from crosslens.checkpoints.trajectory import (
    MixedIngredientsError,
    StageStart,
    group_by_stage,
    parse_ingredient,
    parse_stage,
    place_on_trajectory,
)

__all__ = [
    "CheckpointSuite",
    "MixedIngredientsError",
    "PYTHIA_STEPS",
    "PYTHIA_TOKENS_PER_STEP",
    "PYTHIA_V0_STEPS",
    "SnapshotInfo",
    "SnapshotRef",
    "StageStart",
    "architecture_signature",
    "hf_to_hooked",
    "group_by_stage",
    "list_revisions",
    "parse_ingredient",
    "parse_stage",
    "parse_step",
    "parse_tokens",
    "place_on_trajectory",
    "release_model",
    "spaced_steps",
    "weights_sha256",
]
