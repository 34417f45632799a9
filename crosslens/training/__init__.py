"""Model-agnostic crosscoder training: ``[batch, n_snapshots, d_in]`` batches in,
trained crosscoder out.

The configs (:mod:`crosslens.training.config`) import neither torch nor SAELens, so this
package resolves its other public names on first use: ``crosslens --help`` reads the configs
without loading the trainer. Sizing a run before it starts (:mod:`crosslens.training.sizing`,
from the snapshot models' sizes in :mod:`crosslens.training.model_sizes`) is torch-free too.
"""

from __future__ import annotations

from crosslens.core.lazy import lazy_attributes
from crosslens.training.config import ArchitectureConfig, CrosscoderRunnerConfig, CrosscoderTrainerConfig, LoggingConfig

_SIZING = {
    "DEFAULT_TFLOPS": "crosslens.training.sizing",
    "PlanConfig": "crosslens.training.sizing",
    "crosscoder_flops": "crosslens.training.sizing",
    "default_mesh": "crosslens.training.sizing",
    "make_plan": "crosslens.training.sizing",
    "plan_config_from_recipe": "crosslens.training.sizing",
    "ring_allreduce_bytes": "crosslens.training.sizing",
    "stream_prediction": "crosslens.training.sizing",
    "PlanError": "crosslens.training.model_sizes",
    "known_model": "crosslens.training.model_sizes",
    "known_models": "crosslens.training.model_sizes",
    "model_shape_for": "crosslens.training.model_sizes",
    "activation_bytes": "crosslens.training.memory",
    "parameter_counts": "crosslens.training.memory",
}

_LAZY = {
    "BatchSource": "crosslens.training.trainer",
    "CrosscoderTrainer": "crosslens.training.trainer",
    "StreamingTrainingRunner": "crosslens.training.streaming",
    "latest_checkpoint": "crosslens.core.paths",
    "train_planted": "crosslens.training.planted",
    **_SIZING,
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
    "train_planted",
    *sorted(_SIZING),
]


__getattr__ = lazy_attributes(__name__, _LAZY)
