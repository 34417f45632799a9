"""crosslens: watch a language model's features form, change and die during pre-training.

The pipeline (each stage usable on its own, see docs/DESIGN.md):

    CheckpointSuite -> harvest_activations -> ActivationStore -> crosscoder training
        -> feature-evolution analysis (decoder norms) -> causal analysis (splicing, IG, RelIE)

Importing crosslens registers its crosscoder architectures with SAELens, so
``sae_lens.SAE.load_from_disk`` and ``SAE.from_dict`` understand them. The registration
is deferred until SAELens itself is imported (at once if it already is), so that
``import crosslens`` -- and ``crosslens --help`` -- stay light: neither SAELens nor
TransformerLens loads until something needs them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

# the public surface of the top-level package (docs/API.md); each name is imported on first use
_LAZY = {
    "CheckpointSuite": "crosslens.checkpoints",
    "SnapshotRef": "crosslens.checkpoints",
    "SnapshotInfo": "crosslens.checkpoints",
    "PicoConfig": "crosslens.pico",
    "pico_suite": "crosslens.pico",
    "harvest_activations": "crosslens.activations",
    "ActivationStore": "crosslens.activations",
    "ArchitectureConfig": "crosslens.training.config",
    "CrosscoderRunnerConfig": "crosslens.training.config",
    "LoggingConfig": "crosslens.training.config",
    "CrosscoderTrainingRunner": "crosslens.training.runner",
    "evaluate_crosscoder": "crosslens.training.runner",
    "analyze_crosscoder": "crosslens.analysis",
    "load_crosscoder": "crosslens.causal",
    "run_causal_stage": "crosslens.causal",
    "get_task": "crosslens.tasks",
    "load_pretrained": "crosslens.pretrained",
    "pretrained_directory": "crosslens.pretrained",
    "register_release": "crosslens.pretrained",
    "push_to_hub": "crosslens.pretrained",
}

__all__ = [*_LAZY, "crosscoders", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "crosscoders":
        return importlib.import_module("crosslens.crosscoders")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crosslens' has no attribute {name!r}")


class _RegisterWhenSAELensLoads:
    """A meta-path finder that, once ``sae_lens`` finishes importing, imports
    ``crosslens.crosscoders`` (which registers the architectures), then removes itself."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "sae_lens":
            return None
        sys.meta_path.remove(self)  # find the real spec, and never fire twice
        spec = importlib.util.find_spec("sae_lens")
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            original_exec(module)
            importlib.import_module("crosslens.crosscoders")

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


import importlib.util  # noqa: E402

if "sae_lens" in sys.modules:
    importlib.import_module("crosslens.crosscoders")
elif not any(isinstance(finder, _RegisterWhenSAELensLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenSAELensLoads())
