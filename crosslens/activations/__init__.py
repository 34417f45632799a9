"""Activations of the same tokens at every snapshot: harvest, store on disk, serve shuffled.

- :func:`harvest_stores` harvests a :class:`HarvestConfig` (which hooks, which tokens from a
  :class:`TokenSource`, how many by a :class:`TokenBudget`) from a suite, as ``crosslens
  harvest`` does: checked first, then a store and its held-out store.
- :func:`harvest_activations` runs one snapshot at a time on a token table and writes an
  :class:`ActivationStore`: :class:`HarvestInputs` gathers and checks what the store is built
  from before anything is written, then :func:`harvest_store` works through it.
- :class:`ActivationProvider` serves shuffled ``[batch, n_snapshots, d_in]`` batches from a store;
  :class:`OnTheFlyProvider` harvests into memory and serves without writing to disk.
- :mod:`crosslens.activations.tokens` builds the token table shared by all snapshots, of the
  size a :class:`TokenBudget` says.

The configs import nothing heavy and the other names resolve on first use, so the command line's
``--help`` reads the configs' defaults without torch.
"""

from __future__ import annotations

from crosslens.activations.budget import TokenBudget
from crosslens.activations.config import HarvestConfig, TokenSource
from crosslens.core.lazy import lazy_attributes

_LAZY = {
    "ActivationProvider": "crosslens.activations.provider",
    "ActivationStore": "crosslens.activations.store",
    "CorruptShardError": "crosslens.activations.store",
    "IncompleteStoreError": "crosslens.activations.store",
    "OnTheFlyProvider": "crosslens.activations.provider",
    "ResidentSnapshotProvider": "crosslens.activations.streaming",
    "StoreMismatchError": "crosslens.activations.store",
    "HarvestInputs": "crosslens.activations.harvest_inputs",
    "harvest_activations": "crosslens.activations.harvest",
    "harvest_store": "crosslens.activations.harvest",
    "harvest_stores": "crosslens.activations.harvest_job",
    "token_tables": "crosslens.activations.tokens",
    "tokenize_texts": "crosslens.activations.tokens",
    "tokens_from_dataset": "crosslens.activations.tokens",
    "tokens_from_pico": "crosslens.activations.tokens",
}

__all__ = ["HarvestConfig", "TokenBudget", "TokenSource", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
