"""Packing tokenized documents into the fixed-length rows every token table is made of.

The pico corpus and every harvest token table are packed by :func:`pack_documents`, so
their bytes (and every figure seeded on them) depend on it: documents are concatenated,
each followed by EOS, and cut into rows that each start with BOS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
    prefix = [bos_token_id] if bos_token_id is not None else []
    rows: list[list[int]] = []
    stream: list[int] = []
    for doc in documents:
        stream.extend(int(t) for t in doc)
        if eos_token_id is not None:
            stream.append(int(eos_token_id))
        start = 0  # walk an offset rather than re-slicing the stream: long documents stay linear
        while len(stream) - start >= body_len and (n_seqs is None or len(rows) < n_seqs):
            rows.append(prefix + stream[start : start + body_len])
            start += body_len
        del stream[:start]
        if n_seqs is not None and len(rows) >= n_seqs:
            break
    if not rows:
        raise ValueError(
            f"the documents hold fewer than {body_len} tokens, not enough for one row of "
            f"seq_len={seq_len}; give more text or a shorter seq_len."
        )
    if n_seqs is not None and len(rows) < n_seqs:
        raise ValueError(
            f"the documents fill only {len(rows)} rows of seq_len={seq_len}, but n_seqs={n_seqs} "
            "were asked for; give more text or ask for fewer tokens."
        )
    return torch.tensor(rows, dtype=torch.long)
