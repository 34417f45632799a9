"""How many tokens a harvest takes, in rows of what length, and how many of them it keeps out
of training: the defaults of ``harvest`` and ``train --stream``, which ``plan`` sizes too, each
written once here. This module imports nothing heavy, so the command line's ``--help`` reads it
without torch."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

from crosslens.core.bounds import check_bounds

MAX_DEFAULT_HELDOUT_TOKENS = 16_384
"""The default held-out share, a tenth of the budget, stops here: enough rows for a stable quality
table, few enough that a large budget's held-out store stays small."""


@dataclass(frozen=True)
class TokenBudget:
    """The token table a harvest builds: whole rows of ``seq_len`` tokens, ``n_tokens // seq_len``
    of them (at least one) for training and ``heldout // seq_len`` held out on top of them."""

    n_tokens: int = field(default=200_000, metadata={"min": 1})
    """Tokens harvested for training (before exclusions): a store's, or the table ``train --stream``
    cycles through."""
    seq_len: int = field(default=64, metadata={"min": 2})
    """Tokens per sequence (a row of the token table)."""
    heldout_tokens: int | None = field(default=None, metadata={"min": 0})
    """Tokens kept out of training; None: a tenth of ``n_tokens``, at most
    :data:`MAX_DEFAULT_HELDOUT_TOKENS`."""

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
        return min(MAX_DEFAULT_HELDOUT_TOKENS, self.n_tokens // 10)

    @classmethod
    def resolve(cls, recipe: Any = None, **given: int | None) -> TokenBudget:
        """The budget of a command line: the values ``given`` (None: not given), else the
        recipe's (its ``n_tokens``, and its ``context`` as ``seq_len``), else the defaults."""
        values = {} if recipe is None else {"n_tokens": recipe.n_tokens, "seq_len": recipe.context}
        values.update({name: value for name, value in given.items() if value is not None})
        return cls(**values)


def _whole(value: Any, name: str) -> int:
    """``value`` as an int: any integer type, or a float with no fraction (``1e5``); not a bool."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                return int(value)
    raise TypeError(f"{name} must be a whole number of tokens, got {value!r}")


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


__all__ = ["CHUNK_TOKENS", "MAX_DEFAULT_HELDOUT_TOKENS", "TokenBudget", "chunk_buffer_bytes", "chunk_seqs_for"]
