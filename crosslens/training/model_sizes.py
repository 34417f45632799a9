"""The sizes of the snapshot models a run reads, without loading one: crosslens's table of
known models (``crosslens/data/models.json``), a local suite's or a cached Hugging Face
``config.json``, or the pico config, each as a :class:`~crosslens.checkpoints.shape.ModelShape`.
:mod:`crosslens.training.sizing` sizes a run from them.

Torch-free, as the ``crosslens plan`` that reads it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from crosslens.checkpoints.shape import ModelShape, estimate_n_params
from crosslens.core.errors import CrosslensError
from crosslens.core.model_specs import is_models_spec, parse_models
from crosslens.pico.config import MODEL_ID, PicoConfig, default_root, is_built


class PlanError(CrosslensError):
    """A plan's inputs are incomplete or inconsistent."""


def _models_table() -> dict[str, Any]:
    return json.loads((resources.files("crosslens") / "data" / "models.json").read_text())


def known_model(model_id: str) -> ModelShape | None:
    """Sizes of a model in crosslens's table (Pythia 14m..12b, OLMo-1B-0724, OLMo-2-1B,
    BLOOM-1b1), by hub id or short alias, case-insensitively; None if absent."""
    table = _models_table()
    lowered = {k.lower(): k for k in table["models"]}
    aliases = {k.lower(): v for k, v in table["aliases"].items()}
    key = model_id.strip().lower()
    key = aliases.get(key, lowered.get(key, key)).lower()
    if key not in lowered:
        return None
    name = lowered[key]
    row = table["models"][name]
    return ModelShape(
        name=name,
        d_model=row["d_model"],
        n_layers=row["n_layers"],
        d_mlp=row["d_mlp"],
        vocab=row["vocab"],
        n_params=row["n_params"],
        tied_embeddings=row["tied_embeddings"],
        n_heads=row["n_heads"],
        n_ctx=row["n_ctx"],
        source="crosslens table of known models",
    )


def model_shape_for(suite: str) -> ModelShape:
    """Sizes for a ``--suite`` value: ``pico``, a local suite folder, or a hub model id
    (crosslens's table, else a Hugging Face config already in the local cache); a diffing suite's
    (``A,B``): its first model's, which the others share."""
    if is_models_spec(suite):
        suite = parse_models(suite)[0].model_id
    if suite == "pico":
        cfg = PicoConfig()
        root = default_root(cfg)
        if is_built(root, cfg):  # the built suite's own config (exact vocabulary)
            suite = str(root)
        else:
            vocab = cfg.bpe_vocab_size
            return ModelShape(
                name=MODEL_ID,
                d_model=cfg.d_model,
                n_layers=cfg.n_layers,
                d_mlp=cfg.d_mlp,
                vocab=vocab,
                n_heads=cfg.n_heads,
                n_params=estimate_n_params(cfg.d_model, cfg.n_layers, cfg.d_mlp, vocab, tied=False),
                n_ctx=cfg.model_context,
                source="PicoConfig defaults (suite not built; vocabulary approximate)",
            )
    path = Path(suite)
    if path.is_dir():
        configs = sorted(path.glob("config.json")) or sorted(path.glob("*/config.json"))
        if not configs:
            raise PlanError(f"{suite} holds no config.json (nor */config.json); point --suite at a suite folder")
        return ModelShape.read(configs[0], suite)
    known = known_model(suite)
    if known is not None:
        return known
    try:
        from huggingface_hub import try_to_load_from_cache  # here: `crosslens --help` imports this module

        cached = try_to_load_from_cache(suite, "config.json")
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        cached = None
    if isinstance(cached, str):
        return ModelShape.read(cached, suite, f"cached {cached}")
    raise PlanError(
        f"crosslens does not know the sizes of {suite!r} and no config.json of it is cached; use a model "
        "from `crosslens plan --list-models`, a local suite folder, or a --recipe"
    )


def known_models() -> list[str]:
    """Model ids in crosslens's table of known sizes."""
    return sorted(_models_table()["models"])
