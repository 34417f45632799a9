"""Model-agnostic crosscoder training: ``[batch, n_snapshots, d_in]`` batches in,
trained crosscoder out."""

from crosslens.training.config import CrosscoderTrainerConfig
from crosslens.training.layout import latest_checkpoint
from crosslens.training.trainer import BatchSource, CrosscoderTrainer

__all__ = [
    "BatchSource",
    "CrosscoderTrainer",
    "CrosscoderTrainerConfig",
    "latest_checkpoint",
]
