"""The sizes of the snapshot models a run reads, without loading one: crosslens's table of
known models (``crosslens/data/models.json``), a local suite's or a cached Hugging Face
``config.json``, or the pico config. :mod:`crosslens.training.sizing` sizes a run from them;
harvest and ``train --stream`` check a hook, a context and resident memory against them.

Torch-free, as the ``crosslens plan`` that reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from crosslens.core.errors import CrosslensError
from crosslens.core.model_specs import is_models_spec, parse_models
from crosslens.pico.config import PicoConfig, default_root, is_built


class PlanError(CrosslensError):
    """A plan's inputs are incomplete or inconsistent."""


@dataclass(frozen=True)
class ModelSpec:
    """The sizes of one model that matter for planning."""

    name: str
    """Model id or suite name."""
    d_model: int
    """Residual-stream width."""
    n_layers: int
    """Transformer blocks."""
    d_mlp: int
    """MLP hidden width."""
    vocab: int
    """Embedding rows (padded vocabulary)."""
    n_params: int
    """Total parameters, embeddings included."""
    tied_embeddings: bool = False
    """Whether unembedding shares the embedding matrix."""
    n_heads: int = 0
    """Attention heads (informational)."""
    n_ctx: int | None = None
    """The longest sequence the model reads; None where the source does not say (not checked)."""
    source: str = ""
    """Where the sizes come from."""

    @property
    def embedding_params(self) -> int:
        """Parameters of the embedding (and untied unembedding) matrices."""
        return self.vocab * self.d_model * (1 if self.tied_embeddings else 2)

    @property
    def params_per_layer(self) -> float:
        """Non-embedding parameters per block (final norms spread over the blocks)."""
        return (self.n_params - self.embedding_params) / self.n_layers

    def params_through_layer(self, layer: int) -> int:
        """Parameters a model truncated after block ``layer`` keeps (input embedding + blocks 0..layer)."""
        return int(self.vocab * self.d_model + (layer + 1) * self.params_per_layer)


def estimate_n_params(d_model: int, n_layers: int, d_mlp: int, vocab: int, *, tied: bool, gated: bool = False) -> int:
    """Parameters of a decoder-only transformer with biases and two LayerNorms per block
    (GPT-NeoX/BLOOM style): ``L (4d^2 + 2 d d_mlp + 9d + d_mlp) + V d (x2 untied) + 2d``.
    ``gated`` (SwiGLU) adds a third ``d x d_mlp`` matrix. Exact for Pythia; BLOOM adds an
    embedding LayerNorm (2d); OLMo has no biases (an overestimate of a fraction of a percent)."""
    n_mats = 3 if gated else 2
    per_layer = 4 * d_model * d_model + n_mats * d_model * d_mlp + 9 * d_model + d_mlp
    return n_layers * per_layer + vocab * d_model * (1 if tied else 2) + 2 * d_model


def _models_table() -> dict[str, Any]:
    return json.loads((resources.files("crosslens") / "data" / "models.json").read_text())


def known_model(model_id: str) -> ModelSpec | None:
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
    return ModelSpec(
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


CONTEXT_KEYS = ("n_ctx", "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""The config.json keys that give a model's longest sequence, in the order they are trusted."""

LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
"""The config.json keys that give a model's number of blocks, in the order they are trusted."""


def config_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` a Hugging Face ``config`` gives as an int, or None."""
    return next((config[key] for key in keys if isinstance(config.get(key), int)), None)


def config_context(config: dict[str, Any]) -> int | None:
    """The longest sequence a model with Hugging Face ``config`` reads, or None if it does not say."""
    return config_int(config, CONTEXT_KEYS)


def spec_from_hf_config(config: dict[str, Any], name: str, source: str) -> ModelSpec:
    d = int(config.get("hidden_size") or config.get("n_embed") or config.get("d_model"))
    n_layers = config_int(config, LAYER_KEYS)
    if n_layers is None:
        raise PlanError(f"{source} gives no number of blocks (one of {', '.join(LAYER_KEYS)})")
    d_mlp = int(config.get("intermediate_size") or config.get("d_mlp") or 4 * d)
    vocab = int(config.get("vocab_size") or config.get("embedding_size"))
    tied = bool(config.get("tie_word_embeddings", config.get("weight_tying", False)))
    gated = str(config.get("hidden_act", config.get("activation_type", ""))).lower() in ("silu", "swiglu")
    n_heads = int(config.get("num_attention_heads") or config.get("n_head") or 0)
    return ModelSpec(
        name=name,
        d_model=d,
        n_layers=n_layers,
        d_mlp=d_mlp,
        vocab=vocab,
        tied_embeddings=tied,
        n_heads=n_heads,
        n_params=estimate_n_params(d, n_layers, d_mlp, vocab, tied=tied, gated=gated),
        n_ctx=config_context(config),
        source=source,
    )


def model_spec_for(suite: str) -> ModelSpec:
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
            return ModelSpec(
                name="crosslens/pico",
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
        return spec_from_hf_config(json.loads(configs[0].read_text()), suite, f"{configs[0]}")
    known = known_model(suite)
    if known is not None:
        return known
    try:
        from huggingface_hub import try_to_load_from_cache  # here: `crosslens --help` imports this module

        cached = try_to_load_from_cache(suite, "config.json")
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        cached = None
    if isinstance(cached, str):
        return spec_from_hf_config(json.loads(Path(cached).read_text()), suite, f"cached {cached}")
    raise PlanError(
        f"crosslens does not know the sizes of {suite!r} and no config.json of it is cached; use a model "
        "from `crosslens plan --list-models`, a local suite folder, or a --recipe"
    )


def known_models() -> list[str]:
    """Model ids in crosslens's table of known sizes."""
    return sorted(_models_table()["models"])
