"""Packing tokenized documents into the fixed-length rows every token table is made of.

The pico corpus and every harvest token table are packed by :func:`pack_documents`, so
their bytes (and every figure seeded on them) depend on it: documents are concatenated,
each followed by EOS, and cut into rows that each start with BOS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from jaxtyping import Int

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)


def pack_documents(
    documents: Iterable[Sequence[int]],
    seq_len: int,
    *,
    n_seqs: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Int[torch.Tensor, "n_seqs seq_len"]:
    """Concatenate tokenized documents (EOS after each) into rows of ``seq_len``.

    Each row starts with ``bos_token_id`` when given, followed by ``seq_len - 1`` tokens
    of the running stream; a final partial row is dropped. ``documents`` may be a lazy
    iterable: packing stops as soon as ``n_seqs`` rows are full. The pico corpus and every
    harvest token table are packed this way, so their bytes (and every figure seeded on
    them) depend on it.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short; use seq_len >= 2.")
    if n_seqs is not None and n_seqs < 1:
        raise ValueError(f"n_seqs={n_seqs} must be >= 1 (or None for all documents).")
    body_len = seq_len - (1 if bos_token_id is not None else 0)
    eos = np.array([eos_token_id] if eos_token_id is not None else [], dtype=np.int64)
    # Rows go into int64 arrays as they fill (8 bytes a token; a Python int in a list is about 36):
    # into the table itself where its length is known, else into blocks joined at the end.
    table = np.empty((n_seqs, seq_len), dtype=np.int64) if n_seqs is not None else None
    blocks: list[np.ndarray] = []
    n_rows = 0
    # the tokens not yet in a row, joined only once they fill one: each token is copied a bounded
    # number of times however short the documents
    pending: list[np.ndarray] = []
    n_pending = 0
    for doc in documents:
        piece = np.asarray(doc, dtype=np.int64).reshape(-1)
        pending += [piece, eos]
        n_pending += len(piece) + len(eos)
        if n_pending < body_len:
            continue
        stream = np.concatenate(pending)
        n_full = len(stream) // body_len
        if n_seqs is not None:
            n_full = min(n_full, n_seqs - n_rows)
        if n_full:
            body = stream[: n_full * body_len].reshape(n_full, body_len)
            rows = table[n_rows : n_rows + n_full] if table is not None else np.empty((n_full, seq_len), dtype=np.int64)
            if bos_token_id is not None:
                rows[:, 0] = bos_token_id
            rows[:, seq_len - body_len :] = body
            if table is None:
                blocks.append(rows)
            n_rows += n_full
        pending = [stream[n_full * body_len :]]
        n_pending = len(pending[0])
        if n_seqs is not None and n_rows >= n_seqs:
            break
    if not n_rows:
        raise ValueError(
            f"the documents hold fewer than {body_len} tokens, not enough for one row of "
            f"seq_len={seq_len}; give more text or a shorter seq_len."
        )
    if n_seqs is not None and n_rows < n_seqs:
        raise ValueError(
            f"the documents fill only {n_rows} rows of seq_len={seq_len}, but n_seqs={n_seqs} "
            "were asked for; give more text or ask for fewer tokens."
        )
    return torch.from_numpy(table if table is not None else np.concatenate(blocks))
