"""Activations of the same tokens at every snapshot: harvest, store on disk, serve shuffled.

- :func:`harvest_activations` runs one snapshot at a time and writes an :class:`ActivationStore`.
- :class:`ActivationProvider` serves shuffled ``[batch, n_snapshots, d_in]`` batches from a store;
  :class:`OnTheFlyProvider` harvests into memory and serves without writing to disk.
- :mod:`crosslens.activations.tokens` builds the token table shared by all snapshots, of the
  size a :class:`TokenBudget` says.

The budget imports nothing heavy and the other names resolve on first use, so the command line's
``--help`` reads the budget's defaults without torch.
"""

from __future__ import annotations

from crosslens.activations.budget import TokenBudget
from crosslens.core.lazy import lazy_attributes

_LAZY = {
    "ActivationProvider": "crosslens.activations.provider",
    "ActivationStore": "crosslens.activations.store",
    "CorruptShardError": "crosslens.activations.store",
    "IncompleteStoreError": "crosslens.activations.store",
    "OnTheFlyProvider": "crosslens.activations.provider",
    "ResidentSnapshotProvider": "crosslens.activations.streaming",
    "StoreMismatchError": "crosslens.activations.store",
    "harvest_activations": "crosslens.activations.harvest",
    "tokenize_texts": "crosslens.activations.tokens",
    "tokens_from_dataset": "crosslens.activations.tokens",
    "tokens_from_pico": "crosslens.activations.tokens",
}

__all__ = ["TokenBudget", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
