"""Activations of the same tokens at every snapshot: harvest, store on disk, serve shuffled.

- :func:`harvest_activations` runs one snapshot at a time and writes an :class:`ActivationStore`.
- :class:`ActivationProvider` serves shuffled ``[batch, n_snapshots, d_in]`` batches from a store;
  :class:`OnTheFlyProvider` harvests into memory and serves without writing to disk.
- :mod:`crosslens.activations.tokens` builds the token table shared by all snapshots.
"""

from crosslens.activations.harvest import harvest_activations
from crosslens.activations.provider import ActivationProvider, OnTheFlyProvider
from crosslens.activations.store import (
    ActivationStore,
    CorruptShardError,
    IncompleteStoreError,
    StoreMismatchError,
)
from crosslens.activations.streaming import ResidentSnapshotProvider
from crosslens.activations.tokens import tokenize_texts, tokens_from_dataset, tokens_from_pico

__all__ = [
    "ActivationProvider",
    "ActivationStore",
    "CorruptShardError",
    "IncompleteStoreError",
    "OnTheFlyProvider",
    "ResidentSnapshotProvider",
    "StoreMismatchError",
    "harvest_activations",
    "tokenize_texts",
    "tokens_from_dataset",
    "tokens_from_pico",
]
