"""Reading one value from a crosscoder's metadata, whatever object holds it.

A crosscoder's ``cfg.metadata`` is a SAELens ``SAEMetadata`` once loaded through SAELens,
a plain dict when built by hand, and absent on duck-typed stand-ins; every stage that asks
"which hook?", "are the norm factors folded?" reads it through :func:`metadata_value`. A
crosscoder saved to a folder records it in its ``cfg.json`` (:func:`saved_metadata`, read
without its weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CFG_NAME = "cfg.json"
"""A saved crosscoder's config, SAELens's name for it."""
WEIGHTS_NAME = "sae_weights.safetensors"
"""A saved crosscoder's weights, SAELens's name for them."""
TRAINING_DETAILS_KEY = "training_architecture_details"
"""The metadata key under which SAELens saves a crosscoder's training fields (its training config's
fields that the inference config lacks: the sparsity schedule, JumpReLU's bandwidth, ...)."""


def saved_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The metadata a saved crosscoder's cfg.json records (hook, suite, ...), without loading its
    weights; {} where the folder has no readable cfg.json."""
    try:
        cfg = json.loads((Path(folder) / CFG_NAME).read_text())
    except (OSError, ValueError):
        return {}
    metadata = cfg.get("metadata") if isinstance(cfg, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def crosscoder_suite_record(crosscoder_path: str | os.PathLike) -> dict[str, Any]:
    """The suite provenance saved with a crosscoder (family, model_id, root, snapshots), or {}."""
    suite = saved_metadata(crosscoder_path).get("suite")
    return suite if isinstance(suite, dict) else {}


def trained_steps(suite_record: dict[str, Any]) -> list[int] | None:
    """The steps of the snapshots a crosscoder's suite record (:func:`crosscoder_suite_record`) lists,
    the ones it was trained on; None where it lists none."""
    return [int(entry["step"]) for entry in suite_record.get("snapshots") or []] or None


def metadata_value(crosscoder: Any, key: str) -> Any:
    """``crosscoder.cfg.metadata[key]``, or None when the crosscoder, its cfg or its metadata lacks it."""
    metadata = getattr(getattr(crosscoder, "cfg", None), "metadata", None)
    if metadata is None:
        return None
    if isinstance(metadata, dict):
        return metadata.get(key)
    getter = getattr(metadata, "get", None)
    return getter(key) if callable(getter) else getattr(metadata, key, None)


def unmeasured_norm_factors(metadata: Any) -> bool:
    """Whether a crosscoder with this ``metadata`` (a dict, or anything with ``get``) reads activations
    scaled by per-snapshot factors its source did not save, none measured since
    (``crosslens.pretrained.measure_norm_factors``): a stage that reads raw activations cannot run it."""
    return (
        bool(metadata.get("activation_norm_factors_unknown"))
        and metadata.get("activation_norm_factors") is None
        and not metadata.get("activation_norm_factors_folded")
    )
