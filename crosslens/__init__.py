"""crosslens: watch a language model's features form, change and die during pre-training.

The pipeline (each stage usable on its own, see docs/DESIGN.md):

    CheckpointSuite -> harvest_stores (a HarvestConfig) -> ActivationStore -> crosscoder training
        -> feature-evolution analysis (decoder norms) -> causal analysis (splicing, IG, RelIE)

``import crosslens`` -- and ``crosslens --help`` -- stay light: each public name below is
imported on first use, so neither SAELens nor TransformerLens loads until something needs
them. Importing :mod:`crosslens.crosscoders` registers the crosscoder architectures with
SAELens (as SAELens's own modules register theirs), so ``sae_lens.SAE.load_from_disk`` and
``SAE.from_dict`` understand them after ``import crosslens.crosscoders``.
"""

from __future__ import annotations

from crosslens.core.lazy import lazy_attributes

__version__ = "0.3.0.dev0"

# the public surface of the top-level package (docs/API.md); each name is imported on first use
_LAZY = {
    "CheckpointSuite": "crosslens.checkpoints",
    "SnapshotRef": "crosslens.checkpoints",
    "SnapshotInfo": "crosslens.checkpoints",
    "PicoConfig": "crosslens.pico",
    "pico_suite": "crosslens.pico",
    "HarvestConfig": "crosslens.activations",
    "harvest_stores": "crosslens.activations",
    "harvest_activations": "crosslens.activations",
    "ActivationStore": "crosslens.activations",
    "ArchitectureConfig": "crosslens.training.config",
    "CrosscoderRunnerConfig": "crosslens.training.config",
    "LoggingConfig": "crosslens.training.config",
    "CrosscoderTrainingRunner": "crosslens.training.runner",
    "evaluate_crosscoder": "crosslens.training.metrics",
    "analyze_crosscoder": "crosslens.analysis",
    "load_crosscoder": "crosslens.causal",
    "run_causal_stage": "crosslens.causal",
    "get_task": "crosslens.tasks",
    "load_pretrained": "crosslens.pretrained",
    "from_pretrained": "crosslens.pretrained",
    "pretrained_directory": "crosslens.pretrained",
    "register_release": "crosslens.pretrained",
    "push_to_hub": "crosslens.pretrained",
}

__all__ = [*_LAZY, "crosscoders", "__version__"]


__getattr__ = lazy_attributes(__name__, {**_LAZY, "crosscoders": "crosslens.crosscoders"})
