"""Model-agnostic crosscoder training: ``[batch, n_snapshots, d_in]`` batches in,
trained crosscoder out.

The configs (:mod:`crosslens.training.config`) import neither torch nor SAELens, so this
package resolves its other public names on first use: ``crosslens --help`` reads the configs
without loading the trainer.
"""

from __future__ import annotations

from crosslens.core.lazy import lazy_attributes
from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig, CrosscoderTrainerConfig, LoggingConfig

_LAZY = {
    "BatchSource": "crosslens.training.trainer",
    "CrosscoderTrainer": "crosslens.training.trainer",
    "StreamingTrainingRunner": "crosslens.training.streaming",
    "latest_checkpoint": "crosslens.core.paths",
}

__all__ = [
    "ArchitectureConfig",
    "BatchSource",
    "CrosscoderRunnerConfig",
    "CrosscoderTrainer",
    "CrosscoderTrainerConfig",
    "LoggingConfig",
    "StreamingTrainingRunner",
    "latest_checkpoint",
]


__getattr__ = lazy_attributes(__name__, _LAZY)
