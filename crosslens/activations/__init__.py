"""Activations of the same tokens at every snapshot: harvest, store on disk, serve shuffled.

- :func:`harvest_activations` runs one snapshot at a time and writes an :class:`ActivationStore`.
- :class:`ActivationProvider` serves shuffled ``[batch, n_snapshots, d_in]`` batches from a store;
  :class:`OnTheFlyProvider` harvests into memory and serves without writing to disk.
- :mod:`crosslens.activations.tokens` builds the token table shared by all snapshots.
"""

from crosslens.activations.harvest import harvest_activations, harvest_rows, stop_layer_for
from crosslens.activations.provider import ActivationProvider, OnTheFlyProvider
from crosslens.activations.store import (
    ActivationStore,
    CorruptShardError,
    IncompleteStoreError,
    StoreMismatchError,
)
from crosslens.activations.tokens import (
    build_token_ids,
    keep_mask,
    pack_documents,
    tokenize_texts,
    tokens_from_dataset,
    tokens_from_pico,
)

__all__ = [
    "ActivationProvider",
    "ActivationStore",
    "CorruptShardError",
    "IncompleteStoreError",
    "OnTheFlyProvider",
    "StoreMismatchError",
    "build_token_ids",
    "harvest_activations",
    "harvest_rows",
    "keep_mask",
    "pack_documents",
    "stop_layer_for",
    "tokenize_texts",
    "tokens_from_dataset",
    "tokens_from_pico",
]
