"""What shape a suite's model is, without loading it: widths, depth, vocabulary, context and
parameter count, read from a Hugging Face ``config.json`` (:meth:`ModelShape.from_hf_config`).

:meth:`CheckpointSuite.shape <crosslens.checkpoints.suite.CheckpointSuite.shape>` answers it
for a suite, read once from its first snapshot's config; :mod:`crosslens.training.model_sizes`
for a ``--suite`` word (crosslens's table of known models, a folder, the pico config).

Torch-free: ``crosslens plan`` reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosslens.core.devices import DTYPE_BYTES
from crosslens.core.errors import CrosslensError
from crosslens.core.hooks import hook_width

CONTEXT_KEYS = ("n_ctx", "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""The config.json keys that give a model's longest sequence, in the order they are trusted."""

LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
"""The config.json keys that give a model's number of blocks, in the order they are trusted."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of one model that matter for harvesting and planning."""

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

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str, source: str) -> ModelShape:
        """The shape a Hugging Face ``config`` (a parsed config.json) gives; ``source`` names the
        file in errors. A config without a width, a depth or a vocabulary is refused."""
        n_layers = config_int(config, LAYER_KEYS)
        if n_layers is None:
            raise CrosslensError(f"{source} gives no number of blocks (one of {', '.join(LAYER_KEYS)})")
        try:
            d = int(config.get("hidden_size") or config.get("n_embed") or config.get("d_model"))
            vocab = int(config.get("vocab_size") or config.get("embedding_size"))
        except TypeError:
            raise CrosslensError(f"{source} gives no width (hidden_size) or no vocabulary (vocab_size)") from None
        d_mlp = int(config.get("intermediate_size") or config.get("d_mlp") or 4 * d)
        tied = bool(config.get("tie_word_embeddings", config.get("weight_tying", False)))
        gated = str(config.get("hidden_act", config.get("activation_type", ""))).lower() in ("silu", "swiglu")
        return cls(
            name=name,
            d_model=d,
            n_layers=n_layers,
            d_mlp=d_mlp,
            vocab=vocab,
            tied_embeddings=tied,
            n_heads=int(config.get("num_attention_heads") or config.get("n_head") or 0),
            n_params=estimate_n_params(d, n_layers, d_mlp, vocab, tied=tied, gated=gated),
            n_ctx=config_int(config, CONTEXT_KEYS),
            source=source,
        )

    @classmethod
    def read(cls, path: str | Path, name: str, source: str | None = None) -> ModelShape:
        """The shape of the config.json at ``path``."""
        return cls.from_hf_config(json.loads(Path(path).read_text()), name, source or str(path))

    @classmethod
    def in_folder(cls, folder: str | Path | None, name: str) -> ModelShape | None:
        """The shape of the config.json in ``folder``; None where there is none, or it does not
        give the usual size fields."""
        if folder is None or not (Path(folder) / "config.json").is_file():
            return None
        try:
            return cls.read(Path(folder) / "config.json", name)
        except CrosslensError:
            return None

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

    def params_in_blocks(self, n_blocks: int) -> int:
        """Parameters of the model run to its first ``n_blocks`` blocks: all of them when that is
        every block (the final norm and unembedding included), else :meth:`params_through_layer`."""
        return self.n_params if n_blocks >= self.n_layers else self.params_through_layer(n_blocks - 1)

    def weight_bytes(self, dtype: str, n_blocks: int | None = None) -> int:
        """Bytes of the weights in ``dtype`` (``"bfloat16"``, ...), of the first ``n_blocks``
        blocks only where given (a model truncated after its deepest hook)."""
        return self.params_in_blocks(self.n_layers if n_blocks is None else n_blocks) * DTYPE_BYTES[dtype]

    def hook_width(self, hook: str) -> int:
        """``d_in`` of ``hook``: ``d_mlp`` for the MLP's hidden hooks, else ``d_model``."""
        return hook_width(hook, self.d_model, self.d_mlp)


def estimate_n_params(d_model: int, n_layers: int, d_mlp: int, vocab: int, *, tied: bool, gated: bool = False) -> int:
    """Parameters of a decoder-only transformer with biases and two LayerNorms per block
    (GPT-NeoX/BLOOM style): ``L (4d^2 + 2 d d_mlp + 9d + d_mlp) + V d (x2 untied) + 2d``.
    ``gated`` (SwiGLU) adds a third ``d x d_mlp`` matrix. Exact for Pythia; BLOOM adds an
    embedding LayerNorm (2d); OLMo has no biases (an overestimate of a fraction of a percent)."""
    n_mats = 3 if gated else 2
    per_layer = 4 * d_model * d_model + n_mats * d_model * d_mlp + 9 * d_model + d_mlp
    return n_layers * per_layer + vocab * d_model * (1 if tied else 2) + 2 * d_model


def config_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` a Hugging Face ``config`` gives as an int, or None."""
    return next((config[key] for key in keys if isinstance(config.get(key), int)), None)
