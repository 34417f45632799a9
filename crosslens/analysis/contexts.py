"""Top-activating token windows per feature, read from an activation store."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from crosslens.analysis.probes import encode_in_batches, reads_normalized
from crosslens.core.hooks import resolve_hook
from crosslens.core.progress import progress_bar
from crosslens.core.tensors import feature_index

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder


BREAK = " \u2016"
"""Drawn where a window crosses from one document to the next (their separator is not stored)."""


@dataclass(frozen=True)
class Context:
    """One token on which a feature fired, with the tokens around it."""

    feature: int
    """Crosscoder feature."""
    activation: float
    """Feature activation on the focus token."""
    token_index: int
    """Row of the focus token in the store."""
    seq: int
    """Sequence the token comes from."""
    pos: int
    """Position of the token in its sequence."""
    token_ids: list[int]
    """Window of token ids (only tokens present in the store)."""
    focus: int
    """Index of the focus token inside ``token_ids``."""
    tokens: list[str] | None = None
    """Each token's text as it reads in the window (:func:`window_pieces`: the spaces between
    words kept), when a tokenizer was given."""
    breaks: tuple[int, ...] = ()
    """Indices in ``token_ids`` before which the sequence has a token the store does not
    hold: the end-of-document token between two packed documents, shown as ``BREAK``."""

    def text(self, marker: tuple[str, str] = ("[[", "]]")) -> str:
        """The window as text, focus token wrapped in ``marker`` (its leading space left outside)."""
        return self._render(marker, str)

    def html(self) -> str:
        """The window as HTML, focus token highlighted."""
        return self._render(("<mark>", "</mark>"), html.escape)

    def _render(self, marker: tuple[str, str], escape: Callable[[str], str]) -> str:
        pieces = (
            self.tokens if self.tokens is not None else [f" {t}" if k else str(t) for k, t in enumerate(self.token_ids)]
        )
        out = []
        for k, piece in enumerate(pieces):
            body = piece.lstrip()
            lead = piece[: len(piece) - len(body)] or (" " if k in self.breaks else "")
            if k in self.breaks:
                out.append(escape(BREAK))
            out.append(escape(lead) + (f"{marker[0]}{escape(body)}{marker[1]}" if k == self.focus else escape(body)))
        return "".join(out)


def window_pieces(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """Each token's text inside a window, the spaces between words kept.

    A token decoded alone loses the space a word-level tokenizer puts between words
    (``thechildlaughs``). So each token's piece is how far it grows the decoded text of the
    tokens before it, where that growth is the token's own text with spaces around it; where
    it is not (a character split across byte tokens), the token decoded alone."""
    pieces: list[str] = []
    before = ""
    for k, token in enumerate(token_ids):
        alone = tokenizer.decode([token])
        text = tokenizer.decode(list(token_ids[: k + 1]))
        grown = text[len(before) :] if text.startswith(before) else None
        pieces.append(grown if grown is not None and grown.strip() == alone.strip() else alone)
        before = text
    return pieces


@torch.no_grad()
def top_activating_contexts(
    store: Any,
    crosscoder: Crosscoder,
    features: Sequence[int],
    *,
    hook: str | None = None,
    k: int = 8,
    left: int = 8,
    right: int = 2,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    batch_size: int = 4096,
    progress: bool = True,
) -> dict[int, list[Context]]:
    """The ``k`` tokens with the largest activation of each feature, with their windows.

    Streams the store (``store.read(hook, idx, normalize=...)``, normalised unless the
    crosscoder has its normalisation factors folded in) through
    ``crosscoder.encode``; windows come from ``store.token_ids`` and ``store.positions``
    (``(seq, pos)`` per token), ``left`` tokens before and ``right`` after the focus token.
    Tokens on which the feature is 0 are never returned, so a feature may get fewer than
    ``k`` contexts.
    """
    features = feature_index(features, int(crosscoder.W_dec.shape[0])).tolist()
    if not features:
        return {}
    if k < 1 or left < 0 or right < 0:
        raise ValueError(f"need k >= 1 and left, right >= 0; got k={k}, left={left}, right={right}.")
    hook = resolve_hook(store, hook)
    n_total = int(store.n_tokens) if max_tokens is None else min(int(store.n_tokens), max_tokens)
    feature_idx = torch.tensor(features)
    normalize = reads_normalized(crosscoder)

    best_val_KF = torch.full((0, len(features)), -torch.inf)
    best_idx_KF = torch.zeros((0, len(features)), dtype=torch.long)
    for start in progress_bar(range(0, n_total, batch_size), desc="top contexts", show=progress):
        idx_B = torch.arange(start, min(start + batch_size, n_total))
        acts_BSD = store.read(hook, idx_B, normalize=normalize)
        f_BF = encode_in_batches(crosscoder, acts_BSD, batch_size, columns=feature_idx)
        vals = torch.cat([best_val_KF, f_BF])
        ids = torch.cat([best_idx_KF, idx_B[:, None].expand_as(f_BF)])
        top = vals.topk(min(k, len(vals)), dim=0)
        best_val_KF, best_idx_KF = top.values, ids.gather(0, top.indices)

    window = _WindowIndex(store)
    out: dict[int, list[Context]] = {}
    for col, feature in enumerate(features):
        contexts = []
        for val, tok in zip(best_val_KF[:, col].tolist(), best_idx_KF[:, col].tolist()):
            if val <= 0:
                continue
            token_ids, focus, seq, pos, breaks = window.around(tok, left, right)
            tokens = window_pieces(tokenizer, token_ids) if tokenizer is not None else None
            contexts.append(Context(feature, float(val), tok, seq, pos, token_ids, focus, tokens, breaks))
        out[feature] = contexts
    return out


class _WindowIndex:
    """Find a token's neighbours by (seq, pos), whatever order the store keeps tokens in."""

    def __init__(self, store: Any) -> None:
        self.token_ids = torch.as_tensor(store.token_ids).long()
        positions = torch.as_tensor(store.positions).long()
        if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) != len(self.token_ids):
            raise ValueError(
                f"store.positions has shape {tuple(positions.shape)}; expected [n_tokens, 2] "
                f"(seq, pos) matching store.token_ids ({len(self.token_ids)} tokens)."
            )
        self.positions = positions
        self.stride = int(positions[:, 1].max()) + 1 if len(positions) else 1
        keys = positions[:, 0] * self.stride + positions[:, 1]
        self.sorted_keys, self.order = keys.sort()

    def around(self, token: int, left: int, right: int) -> tuple[list[int], int, int, int, tuple[int, ...]]:
        """(token ids, focus index, seq, pos, breaks) of the window around ``token``: only tokens
        the store holds; ``breaks`` lists the indices with a token left out of the store before them."""
        seq, pos = (int(v) for v in self.positions[token])
        wanted = torch.arange(max(0, pos - left), min(self.stride, pos + right + 1))
        keys = seq * self.stride + wanted
        slot = torch.searchsorted(self.sorted_keys, keys).clamp_max(len(self.sorted_keys) - 1)
        found = self.sorted_keys[slot] == keys
        rows = self.order[slot[found]]
        found_pos = wanted[found].tolist()
        breaks = tuple(k for k in range(1, len(found_pos)) if found_pos[k] != found_pos[k - 1] + 1)
        return self.token_ids[rows].tolist(), found_pos.index(pos), seq, pos, breaks
