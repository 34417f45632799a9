"""From the finished pass's accumulators to the database's rows, in the order they are written.

Rows come out in primary-key order (feature, then snapshot -1 .. S-1, then kind and rank), which
keeps SQLite's pages full and the file the same bytes for the same accumulators. A context's
window is cut at its sequence's ends; its token ids come from the source's token table (tokens
the store leaves out, such as BOS, included, with activation 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.dashboards.accumulate import PassState
from crosslens.dashboards.config import Budget


@dataclass
class Contexts:
    """Every kept context of one kind, flattened: reading ``j``, feature, rank and window, with the
    window's token ids and activations (``[C, W]``) and its valid slots ``[lo, hi)``."""

    j: np.ndarray
    feature: np.ndarray
    rank: np.ndarray
    seq: np.ndarray
    pos: np.ndarray
    activation: np.ndarray
    quantile: np.ndarray | None
    ids_CW: np.ndarray
    acts_CW: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def __len__(self) -> int:
        return len(self.feature)


def _windows(rows_C: np.ndarray, wins_CW: np.ndarray, table_QL: np.ndarray, window: int) -> dict[str, np.ndarray]:
    seq_len = table_QL.shape[1]
    seq, pos = rows_C // seq_len, rows_C % seq_len
    offsets = np.arange(-window, window + 1)
    ids_CW = table_QL[seq[:, None], np.clip(pos[:, None] + offsets, 0, seq_len - 1)].astype("<i4")
    lo = np.maximum(0, window - pos)
    hi = np.minimum(2 * window + 1, window + seq_len - pos)
    return {"seq": seq, "pos": pos, "ids_CW": ids_CW, "acts_CW": wins_CW.astype("<f2"), "lo": lo, "hi": hi}


def top_contexts(state: PassState, table_QL: np.ndarray, window: int) -> Contexts:
    """The top contexts of every reading and feature that fired, strongest first."""
    val = state.top_val_JFK.cpu().numpy()
    j, f, k = np.nonzero(val > 0)
    rows = state.top_row_JFK.cpu().numpy()[j, f, k]
    wins = state.top_win_JFKW.cpu().numpy()[j, f, k]
    return Contexts(j, f, k, activation=val[j, f, k], quantile=None, **_windows(rows, wins, table_QL, window))


def quantile_contexts(state: PassState, table_QL: np.ndarray, budget: Budget) -> Contexts:
    """Contexts picked from each reading's sample at the activation quantiles ``(q + 0.5) / n``
    (distinct samples only, so fewer where the feature fired fewer times), highest first; each
    records the quantile of the sample it was drawn at, ``(i + 0.5) / m`` for the i-th of m."""
    n = budget.n_quantile
    key = state.res_key_JFQ.cpu().numpy()
    val = np.where(key >= 0, state.res_val_JFQ.cpu().numpy(), np.inf)
    m_JF = (key >= 0).sum(axis=-1)
    order = np.argsort(val, axis=-1, kind="stable")
    levels = (np.arange(n) + 0.5) / max(n, 1)
    index = np.rint(levels[None, None, :] * np.maximum(m_JF - 1, 0)[..., None]).astype(np.int64)
    keep = (m_JF[..., None] > 0) & np.concatenate(
        [np.ones_like(index[..., :1], bool), np.diff(index, axis=-1) > 0], axis=-1
    )
    rank = np.cumsum(keep[..., ::-1], axis=-1)[..., ::-1] - 1
    j, f, q = np.nonzero(keep)
    slot = np.take_along_axis(order, index, axis=-1)[j, f, q]
    rows = state.res_row_JFQ.cpu().numpy()[j, f, slot]
    wins = state.res_win_JFQW.cpu().numpy()[j, f, slot]
    quantile = np.round((index[j, f, q] + 0.5) / m_JF[j, f], 4)
    return Contexts(
        j,
        f,
        rank[j, f, q],
        activation=val[j, f, slot],
        quantile=quantile,
        **_windows(rows, wins, table_QL, budget.window),
    )


def context_rows(top: Contexts, quantile: Contexts) -> Iterator[tuple]:
    """The contexts table's rows, in primary-key order (feature, snapshot, kind, rank)."""
    both = [quantile, top]  # kinds in the order their names sort
    cat = lambda name: np.concatenate([getattr(c, name) for c in both])  # noqa: E731
    kind = np.concatenate([np.full(len(c), k) for k, c in enumerate(both)]).astype(np.int64)
    feature, j, rank = cat("feature"), cat("j"), cat("rank")
    order = np.lexsort((rank, kind, j, feature))
    W = top.ids_CW.shape[1]
    ids = np.concatenate([c.ids_CW for c in both])[order].astype("<i4").tobytes()
    acts = np.concatenate([c.acts_CW for c in both])[order].astype("<f2").tobytes()
    lo, hi = cat("lo")[order].tolist(), cat("hi")[order].tolist()
    q = np.concatenate(
        [quantile.quantile if quantile.quantile is not None else np.zeros(len(quantile)), np.full(len(top), np.nan)]
    )[order].tolist()
    columns = [a[order].tolist() for a in (feature, j, kind, rank, cat("seq"), cat("pos"), cat("activation"))]
    names = ("quantile", "top")
    for i, (f, jj, k, r, seq, pos, act) in enumerate(zip(*columns)):
        a, b = i * W + lo[i], i * W + hi[i]
        yield (
            f,
            jj - 1,
            names[k],
            r,
            seq,
            pos,
            act,
            None if q[i] != q[i] else q[i],
            pos - W // 2 + lo[i],
            ids[4 * a : 4 * b],
            acts[2 * a : 2 * b],
        )


def search_texts(top: Contexts, pieces: list[str]) -> Iterator[tuple[int, str]]:
    """``(feature, text)`` for ``context_search``: each feature's distinct top-context windows as text,
    one per line, in the order the contexts are stored."""
    order = np.lexsort((top.rank, top.j, top.feature))
    windows: dict[int, dict[bytes, None]] = {}
    for c in order.tolist():
        ids = top.ids_CW[c, int(top.lo[c]) : int(top.hi[c])]
        windows.setdefault(int(top.feature[c]), {})[ids.tobytes()] = None
    size = len(pieces)
    for feature in sorted(windows):
        lines = []
        for blob in windows[feature]:
            lines.append("".join(pieces[t] if 0 <= t < size else f"<{t}>" for t in np.frombuffer(blob, "<i4").tolist()))
        yield feature, "\n".join(lines)


@dataclass
class ReadingStats:
    """Density, mean and maximum activation per reading and feature (``[J, F]``), from the state."""

    density: np.ndarray
    mean: np.ndarray
    """NaN where the feature never fired."""
    max: np.ndarray

    @classmethod
    def of(cls, state: PassState) -> ReadingStats:
        count = state.count_JF.cpu().numpy()
        tokens = max(state.tokens, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, state.sum_JF.cpu().numpy() / count, np.nan)
        return cls(count / tokens, mean, state.max_JF.cpu().numpy().astype(np.float64))

    def frequency(self) -> torch.Tensor:
        """The crosscoder's firing rate per feature (reading 0), for the evolution analysis."""
        return torch.from_numpy(self.density[0]).float()


def optional(value: float) -> float | None:
    return None if value != value else float(value)  # NaN -> NULL
