"""How many tokens a harvest takes, in rows of what length, and how many of them it keeps out
of training: the defaults of ``harvest`` and ``train --stream``, which ``plan`` sizes too, each
written once here; and whether a harvest's token table fits in memory and its stores on their
disk, checked before anything is allocated or written. This module imports nothing heavy, so the
command line's ``--help`` reads it without torch."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslens.core.bounds import check_bounds
from crosslens.core.devices import available_memory
from crosslens.core.errors import CrosslensError, keyword_and_flag
from crosslens.core.launch import local_world_size
from crosslens.core.paths import folder_bytes, free_disk
from crosslens.core.units import format_bytes

DEFAULT_HELDOUT_PERCENT = 10
"""The share of the token budget held out by default, in percent."""
MAX_DEFAULT_HELDOUT_TOKENS = 16_384
"""The default held-out share stops here: enough rows for a stable quality
table, few enough that a large budget's held-out store stays small."""


@dataclass(frozen=True)
class TokenBudget:
    """The token table a harvest builds: whole rows of ``seq_len`` tokens, ``n_tokens // seq_len``
    of them (at least one) for training and ``heldout // seq_len`` held out on top of them."""

    n_tokens: int = field(default=200_000, metadata={"min": 1})
    """Token budget, before exclusions (a --recipe's is its own)."""
    seq_len: int = field(default=64, metadata={"min": 2})
    """Tokens per sequence (a --recipe's is its context)."""
    heldout_tokens: int | None = field(default=None, metadata={"min": 0})
    """Tokens (a seeded random sample of rows) kept out of training for the held-out quality table:
    harvest writes them to OUT-heldout, train --stream harvests them from its resident models
    (default: {DEFAULT_HELDOUT_PERCENT}% of --n-tokens, at most {MAX_DEFAULT_HELDOUT_TOKENS}; 0: none). OUT-heldout records the seal of OUT, and
    readers refuse it for any other store."""

    def __post_init__(self) -> None:
        for name in ("n_tokens", "seq_len", "heldout_tokens"):  # a count written 1e5 is taken, 1.5 refused
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _whole(value, name))
        check_bounds(self)

    @property
    def n_rows(self) -> int:
        """Training rows of the token table."""
        return max(1, self.n_tokens // self.seq_len)

    @property
    def heldout_rows(self) -> int:
        """Held-out rows: none when the held-out tokens are fewer than one row's."""
        return self.heldout // self.seq_len

    @property
    def table_tokens(self) -> int:
        """Tokens of the training rows (before exclusions): ``n_tokens`` rounded down to whole rows."""
        return self.n_rows * self.seq_len

    @property
    def heldout_table_tokens(self) -> int:
        """Tokens of the held-out rows (before exclusions)."""
        return self.heldout_rows * self.seq_len

    @property
    def heldout(self) -> int:
        """The held-out tokens this budget keeps."""
        if self.heldout_tokens is not None:
            return self.heldout_tokens
        return min(MAX_DEFAULT_HELDOUT_TOKENS, self.n_tokens * DEFAULT_HELDOUT_PERCENT // 100)


def _whole(value: Any, name: str) -> int:
    """``value`` as an int: any integer type, or a float with no fraction (``1e5``); not a bool."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                return int(value)
    raise TypeError(f"{name} must be a whole number of tokens, got {value!r}")


HARVEST_BATCH_SEQS = 32
"""Token rows per forward pass of a snapshot model while activations are harvested, into a store or
streamed."""

SHARD_TOKENS = 1 << 16
"""Token positions (before exclusions) one shard file of a store holds, about."""

CHUNK_TOKENS = 1 << 16
"""Token positions per streamed chunk at the most: the chunk is the shuffle buffer, held on the
training device for every snapshot (twice while the next one is harvested), so at Ge et al.'s
shape (32 snapshots, d_in 768, rows of 1024) 256 rows would take 26 GB in float32."""


def chunk_seqs_for(seq_len: int) -> int:
    """Rows per streamed chunk: 256 (the provider's default) up to :data:`CHUNK_TOKENS` positions."""
    return max(1, min(256, CHUNK_TOKENS // max(1, seq_len)))


def chunk_tokens_for(seq_len: int) -> int:
    """Token positions of a streamed chunk: :func:`chunk_seqs_for` rows of ``seq_len``."""
    return chunk_seqs_for(seq_len) * seq_len


def chunk_buffer_bytes(chunk_tokens: int, n_snapshots: int, d_in: int, dtype_bytes: int, n_chunks: int = 2) -> int:
    """Bytes of the chunk buffers a streaming rank holds: ``n_chunks`` (the one served and, with
    prefetch, the one harvested meanwhile) of ``chunk_tokens`` positions at each of its
    ``n_snapshots``, ``d_in`` values each, in the buffer's dtype. ``train --stream``'s chunks hold
    :func:`chunk_seqs_for` rows."""
    return n_chunks * chunk_tokens * n_snapshots * d_in * dtype_bytes


N_TOKENS = keyword_and_flag("n_tokens", "--n-tokens")
HELDOUT_TOKENS = keyword_and_flag("heldout_tokens", "--heldout-tokens")
OUT_DIR = keyword_and_flag("out_dir", "--out")
STORE_BFLOAT16 = keyword_and_flag('store_dtype="bfloat16"', "--store-dtype bfloat16")
"""How a refused token table or store names its fixes, for ``harvest_stores``'s callers and the commands'."""

TOKEN_TABLE_BYTES_PER_TOKEN = 20
"""Bytes of memory per token of the token table while it is built and split: the int64 table
packing fills, the copy its split into training and held-out rows makes, and the kept-token masks."""


def check_token_table_fits(n_tokens: int) -> None:
    """Refuse a token table of ``n_tokens`` (rows x seq_len, held-out rows included) that cannot be
    built in the memory available, before its text is read: one for every torchrun worker on this
    machine, each of which builds its own."""
    workers = local_world_size()
    table = n_tokens * TOKEN_TABLE_BYTES_PER_TOKEN * workers
    memory = available_memory("cpu")
    if memory is not None and table > memory:
        each = f", one for each of the {workers} workers on this machine," if workers > 1 else ""
        raise CrosslensError(
            f"{N_TOKENS}: a table of {n_tokens:,} tokens{each} needs about {format_bytes(table)} of memory while it "
            f"is built, and {format_bytes(memory)} is available; lower {N_TOKENS} (+ {HELDOUT_TOKENS}) to at most "
            f"about {memory // (TOKEN_TABLE_BYTES_PER_TOKEN * workers):,}"
        )


def check_harvest_fits(
    n_tokens: int, n_snapshots: int, widths: Sequence[int] | None, value_bytes: int, outs: Sequence[str | Path]
) -> int | None:
    """Refuse a harvest of ``n_tokens`` (token table rows x seq_len, held-out rows included) whose
    token table cannot fit in memory, or whose stores (``outs``) cannot fit on their disk, before
    anything is allocated or written. Returns the stores' bytes (None when ``widths``, the values
    per token of each hook, are unknown)."""
    check_token_table_fits(n_tokens)
    if widths is None:
        return None
    per_token = n_snapshots * sum(widths) * value_bytes
    # the token file holds each row (int64), and each kept token's id (int64) and position (2 x int64)
    store = n_tokens * (per_token + 32)
    needed = store - sum(folder_bytes(out) for out in outs)  # what is there is resumed or replaced
    free = free_disk(outs[0])
    if free is not None and needed > free:
        raise CrosslensError(
            f"{OUT_DIR} {outs[0]}: the store needs about {format_bytes(store)} ({n_tokens:,} tokens x {n_snapshots} "
            f"snapshots x {sum(widths)} values x {value_bytes} B) and its disk has {format_bytes(free)} free; free "
            f"space, lower {N_TOKENS} or the number of snapshots (`--n-snapshots`), pass "
            f"{STORE_BFLOAT16}, or harvest into another {OUT_DIR}"
        )
    return store


__all__ = [
    "CHUNK_TOKENS",
    "DEFAULT_HELDOUT_PERCENT",
    "MAX_DEFAULT_HELDOUT_TOKENS",
    "TOKEN_TABLE_BYTES_PER_TOKEN",
    "TokenBudget",
    "check_harvest_fits",
    "check_token_table_fits",
    "chunk_buffer_bytes",
    "chunk_seqs_for",
]
