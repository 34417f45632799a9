"""crosslens: watch a language model's features form, change and die during pre-training.

The pipeline (each stage usable on its own, see docs/DESIGN.md):

    CheckpointSuite -> harvest_activations -> ActivationStore -> crosscoder training
        -> feature-evolution analysis (decoder norms) -> causal analysis (splicing, IG, RelIE)

Importing crosslens registers its crosscoder architectures with SAELens, so
``sae_lens.SAE.load_from_disk`` and ``SAE.from_dict`` understand them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from crosslens import crosscoders  # noqa: E402  (registers the architectures with SAELens)
from crosslens.checkpoints import CheckpointSuite, SnapshotInfo, SnapshotRef  # noqa: E402

_PRETRAINED_EXPORTS = ("load_pretrained", "pretrained_directory", "register_release")


def __getattr__(name: str):
    # the sharing API (crosslens.pretrained), imported on first use
    if name in _PRETRAINED_EXPORTS:
        import crosslens.pretrained

        return getattr(crosslens.pretrained, name)
    raise AttributeError(f"module 'crosslens' has no attribute {name!r}")


__all__ = [
    "CheckpointSuite",
    "SnapshotInfo",
    "SnapshotRef",
    "crosscoders",
    "load_pretrained",
    "pretrained_directory",
    "register_release",
    "__version__",
]
