"""One pass over the tokens, every feature at once: the running statistics of every (reading,
feature) and how a batch's codes update them.

Per reading ``j`` (see :mod:`crosslens.dashboards.readings`) and feature, over all tokens:
firing count, activation sum and maximum, a histogram of the firing activations (snapshots only),
the ``top_k`` strongest tokens with their windows' activations, and a seeded uniform sample of
``reservoir`` firing tokens (with windows) that the quantile contexts are picked from at the end.

Nothing loops over features. A batch's code ``[tokens, d_sae]`` is reduced by column (counts,
sums, maxima), its firing entries are listed once (``nonzero``), and only the entries that beat a
feature's current k-th best (or k-th key) become candidates; those are merged into the kept ones
for all features at once, by one sort of each feature's row of a small ``[d_sae, k + candidates]``
table (:func:`merge_kept`); their windows are gathered only for the entries that stay. The sample is priority sampling: each token gets a key per reading from a
hash of its row id, the reading and the seed (:func:`token_keys`), and each feature keeps its
``reservoir`` firing tokens of largest key, a uniform sample that does not depend on how the
tokens are cut into batches; the same seed gives the same sample.

Every update builds a new :class:`PassState` and the caller replaces the old one in a single
assignment, so an interrupt leaves either the state before the batch or the state after it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from jaxtyping import Float, Int

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.dashboards.sources import Batch

_MASK = (1 << 31) - 1
"""The hash works on 31 bits, so the product of two such values fits int64."""
_MIX = (1_103_515_245, 1_664_525, 22_695_477)


@dataclass(frozen=True)
class PassState:
    """The accumulators after ``position`` batches (``tokens`` tokens). ``J`` readings, ``F``
    features, ``K`` top contexts, ``Q`` sample slots, ``W`` window tokens, ``B`` histogram bins."""

    position: int
    tokens: int
    edges_B1: Float[torch.Tensor, " n_edges"]
    """Histogram bin edges (empty until the first batch has set them)."""
    count_JF: Int[torch.Tensor, "J F"]
    sum_JF: Float[torch.Tensor, "J F"]
    """float64."""
    max_JF: Float[torch.Tensor, "J F"]
    hist_SFB: Int[torch.Tensor, "S F B"]
    top_val_JFK: Float[torch.Tensor, "J F K"]
    """Strongest activations, descending (-1: empty slot)."""
    top_row_JFK: Int[torch.Tensor, "J F K"]
    top_win_JFKW: Float[torch.Tensor, "J F K W"]
    """float16: the feature's activation on each window token (0 outside the sequence)."""
    res_key_JFQ: Float[torch.Tensor, "J F Q"]
    """Sample keys, descending (-1: empty slot)."""
    res_val_JFQ: Float[torch.Tensor, "J F Q"]
    res_row_JFQ: Int[torch.Tensor, "J F Q"]
    res_win_JFQW: Float[torch.Tensor, "J F Q W"]

    @classmethod
    def empty(
        cls, n_readings: int, d_sae: int, top_k: int, reservoir: int, window: int, n_bins: int, device
    ) -> PassState:
        J, F, W = n_readings, d_sae, 2 * window + 1
        on = {"device": device}
        return cls(
            position=0,
            tokens=0,
            edges_B1=torch.empty(0, dtype=torch.float64, **on),
            count_JF=torch.zeros(J, F, dtype=torch.long, **on),
            sum_JF=torch.zeros(J, F, dtype=torch.float64, **on),
            max_JF=torch.zeros(J, F, **on),
            hist_SFB=torch.zeros(J - 1, F, n_bins, dtype=torch.long, **on),
            top_val_JFK=torch.full((J, F, top_k), -1.0, **on),
            top_row_JFK=torch.full((J, F, top_k), -1, dtype=torch.long, **on),
            top_win_JFKW=torch.zeros(J, F, top_k, W, dtype=torch.float16, **on),
            res_key_JFQ=torch.full((J, F, reservoir), -1.0, **on),
            res_val_JFQ=torch.zeros(J, F, reservoir, **on),
            res_row_JFQ=torch.full((J, F, reservoir), -1, dtype=torch.long, **on),
            res_win_JFQW=torch.zeros(J, F, reservoir, W, dtype=torch.float16, **on),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device: torch.device | str) -> PassState:
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})

    def to_saved(self) -> dict[str, Any]:
        """What :func:`torch.save` writes (CPU tensors, the position)."""
        return {"position": self.position, "tokens": self.tokens, **{k: t.cpu() for k, t in self.tensors().items()}}

    @classmethod
    def from_saved(cls, saved: dict[str, Any], device: torch.device | str) -> PassState:
        names = {f.name for f in fields(cls)}
        if set(saved) != names:
            raise ValueError(f"holds {sorted(set(saved) ^ names)} where a pass state does not")
        return cls(**{k: (v.to(device) if isinstance(v, torch.Tensor) else int(v)) for k, v in saved.items()})


# --------------------------------------------------------------------------- the hash
def token_keys(row_N: torch.Tensor, reading: int, seed: int) -> Float[torch.Tensor, " N"]:
    """A key in [0, 1) for each token row at ``reading``: a fixed function of the three, spread
    uniformly (multiply-xorshift rounds on 31 bits; 24 bits kept, exact in float32). Every feature
    ranks a token by the same key, so each feature's kept firing tokens are a uniform sample of them."""
    row_N = row_N.long()
    h = ((row_N & _MASK) * 2_654_435_761 + ((row_N >> 31) & _MASK) * 40_503 + reading * 69_069 + (seed & _MASK)) & _MASK
    for multiplier in _MIX:
        h = h ^ (h >> 15)
        h = (h * multiplier) & _MASK
    h = h ^ (h >> 13)
    return (h >> 7).float() / float(1 << 24)


# --------------------------------------------------------------------------- merging
def merge_kept(
    score_FK: torch.Tensor, feature_C: torch.Tensor, score_C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature's ``K`` highest scores among its kept ones and the candidates: the new scores
    ``[F, K]`` (best first) and where each came from, an index into the kept ones flattened
    (``< F * K``) followed by the candidates.

    The candidates are grouped by feature (a stable sort of their features alone) and laid beside
    the kept ones in an ``[F, K + M]`` table (``M``: the most candidates of one feature), padded with
    -inf below every kept score (kept slots hold at least the empty score, -1); a stable sort of each
    row picks, so equal scores keep the earlier token (kept ones come from earlier batches, and a
    feature's candidates are in token order). Callers keep ``M`` small (:func:`batch_best` first,
    where a batch floods)."""
    F, K = score_FK.shape
    device = score_FK.device
    order_C = torch.sort(feature_C, stable=True).indices
    counts_F = torch.bincount(feature_C, minlength=F)
    starts_F = torch.cumsum(counts_F, 0) - counts_F
    feature_sorted = feature_C[order_C]
    slot_C = torch.arange(len(order_C), device=device) - starts_F[feature_sorted]
    M = int(counts_F.max()) if len(order_C) else 0
    table = torch.full((F, K + M), -math.inf, device=device, dtype=score_FK.dtype)
    table[:, :K] = score_FK
    table[feature_sorted, K + slot_C] = score_C[order_C]
    values, columns = torch.sort(table, dim=1, descending=True, stable=True)
    values_FK, column_FK = values[:, :K], columns[:, :K]
    is_new = column_FK >= K
    new_index = (
        order_C[(starts_F[:, None] + (column_FK - K).clamp(min=0)).clamp(max=max(len(order_C) - 1, 0))]
        if M
        else column_FK
    )
    kept_index = torch.arange(F, device=device)[:, None] * K + column_FK.clamp(max=K - 1)
    chosen_FK = torch.where(is_new, F * K + new_index, kept_index)
    return values_FK.contiguous(), chosen_FK


def take(kept: torch.Tensor, chosen_FK: torch.Tensor, new: Any) -> torch.Tensor:
    """``kept`` (``[F, K, ...]``) rearranged by :func:`merge_kept`'s ``chosen_FK``, the entries from
    candidates filled by ``new(candidate indices)``."""
    F, K = chosen_FK.shape
    chosen = chosen_FK.reshape(-1)
    out = kept.reshape(F * K, *kept.shape[2:])[chosen.clamp(max=F * K - 1)]
    fresh = torch.nonzero(chosen >= F * K).squeeze(1)
    if fresh.numel():
        out[fresh] = new(chosen[fresh] - F * K).to(out.dtype)
    return out.reshape(kept.shape)


def window_codes(
    code_NF: torch.Tensor, batch: Batch, row_C: torch.Tensor, feature_C: torch.Tensor, window: int
) -> torch.Tensor:
    """``[C, 2 * window + 1]`` float16: feature ``feature_C[c]``'s code on the tokens around batch row
    ``row_C[c]`` in its sequence (0 where the window leaves the sequence or a token is not kept)."""
    offsets_W = torch.arange(-window, window + 1, device=code_NF.device)
    pos_CW = batch.pos_N[row_C][:, None] + offsets_W
    seq_len = batch.grid_QL.shape[1]
    rows_CW = batch.grid_QL[batch.local_seq_N[row_C][:, None], pos_CW.clamp(0, seq_len - 1)]
    valid_CW = (pos_CW >= 0) & (pos_CW < seq_len) & (rows_CW >= 0)
    values_CW = code_NF[rows_CW.clamp(min=0), feature_C[:, None]]
    return torch.where(valid_CW, values_CW, 0.0).half()


def batch_best(score_NF: torch.Tensor, kept_FK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (token row, feature) pairs that can enter a feature's ``K`` best from this batch: scores at
    or above the batch's K-th highest of the feature (ties at that value all come), not negative (-1:
    not firing), and above the feature's K-th kept one."""
    F, K = kept_FK.shape
    kth_F = score_NF.T.contiguous().topk(min(K, score_NF.shape[0]), dim=1).values[:, -1]
    floor_F = torch.maximum(kth_F, torch.zeros_like(kth_F))
    n_C, f_C = torch.nonzero((score_NF >= floor_F) & (score_NF > kept_FK[:, -1]), as_tuple=True)
    return n_C, f_C


# --------------------------------------------------------------------------- one batch
@dataclass(frozen=True)
class ReadingUpdate:
    """One reading's new accumulators (the rows ``j`` of the state's tensors)."""

    count_F: torch.Tensor
    sum_F: torch.Tensor
    max_F: torch.Tensor
    hist_FB: torch.Tensor | None
    top: tuple[torch.Tensor, ...]
    res: tuple[torch.Tensor, ...]


def update_reading(
    state: PassState, j: int, code_NF: torch.Tensor, batch: Batch, window: int, key_N: torch.Tensor
) -> ReadingUpdate:
    """Reading ``j``'s accumulators with the batch's code folded in (the state is not changed).
    ``key_N``: the batch's tokens' sample keys at this reading (:func:`token_keys`).

    The firing entries are listed once; counts, maxima, the histogram and the candidates are
    computed on that list, the sums by column over the dense code (a fixed order of additions)."""
    F = code_NF.shape[1]
    n_idx, f_idx = torch.nonzero(code_NF > 0, as_tuple=True)
    vals = code_NF[n_idx, f_idx]
    count_F = state.count_JF[j] + torch.bincount(f_idx, minlength=F)
    sum_F = state.sum_JF[j] + code_NF.sum(dim=0).double()
    max_F = state.max_JF[j].scatter_reduce(0, f_idx, vals, "amax")
    hist_FB = None
    if j > 0:
        B = state.hist_SFB.shape[2]
        bins = torch.bucketize(vals.double(), state.edges_B1[1:-1], right=True)
        hist_FB = state.hist_SFB[j - 1] + torch.bincount(f_idx * B + bins, minlength=F * B).reshape(F, B)

    def windows(n_C: torch.Tensor, f_C: torch.Tensor) -> Any:
        return lambda c: window_codes(code_NF, batch, n_C[c], f_C[c], window)

    top_FK = state.top_val_JFK[j]
    n_C, f_C = _candidates(n_idx, f_idx, vals > top_FK[f_idx, -1], top_FK.shape[1])
    if n_C is None:  # a flood of candidates (the first batches): this batch's best of each feature first
        n_C, f_C = batch_best(torch.where(code_NF > 0, code_NF, -1.0), top_FK)
    top = (top_FK, state.top_row_JFK[j], state.top_win_JFKW[j])
    if n_C.numel():
        top_FK, chosen = merge_kept(top_FK, f_C, code_NF[n_C, f_C])
        top = (top_FK, take(top[1], chosen, lambda c: batch.row_ids_N[n_C[c]]), take(top[2], chosen, windows(n_C, f_C)))
    key_FQ = state.res_key_JFQ[j]
    n_C, f_C = _candidates(n_idx, f_idx, key_N[n_idx] > key_FQ[f_idx, -1], key_FQ.shape[1])
    if n_C is None:
        n_C, f_C = batch_best(torch.where(code_NF > 0, key_N[:, None], -1.0), key_FQ)
    res = (key_FQ, state.res_val_JFQ[j], state.res_row_JFQ[j], state.res_win_JFQW[j])
    if n_C.numel():
        key_FQ, chosen = merge_kept(key_FQ, f_C, key_N[n_C])
        res = (
            key_FQ,
            take(res[1], chosen, lambda c: code_NF[n_C[c], f_C[c]]),
            take(res[2], chosen, lambda c: batch.row_ids_N[n_C[c]]),
            take(res[3], chosen, windows(n_C, f_C)),
        )
    return ReadingUpdate(count_F, sum_F, max_F, hist_FB, top, res)


def _candidates(n_idx: torch.Tensor, f_idx: torch.Tensor, beats: torch.Tensor, k: int) -> tuple[Any, Any]:
    """The firing entries where ``beats``, or ``(None, None)`` where some feature has more than
    ``2 k`` of them (the caller then takes the batch's best of each feature first)."""
    chosen = torch.nonzero(beats).squeeze(1)
    f_C = f_idx[chosen]
    if chosen.numel() > 2 * k and int(torch.bincount(f_C).max()) > 2 * k:
        return None, None
    return n_idx[chosen], f_C


def apply_updates(state: PassState, updates: list[ReadingUpdate], n_tokens: int) -> PassState:
    """The state after a batch of ``n_tokens`` tokens whose readings gave ``updates`` (in order)."""
    stack = lambda values: torch.stack(list(values))  # noqa: E731
    return replace(
        state,
        position=state.position + 1,
        tokens=state.tokens + n_tokens,
        count_JF=stack(u.count_F for u in updates),
        sum_JF=stack(u.sum_F for u in updates),
        max_JF=stack(u.max_F for u in updates),
        hist_SFB=stack(u.hist_FB for u in updates[1:]),
        top_val_JFK=stack(u.top[0] for u in updates),
        top_row_JFK=stack(u.top[1] for u in updates),
        top_win_JFKW=stack(u.top[2] for u in updates),
        res_key_JFQ=stack(u.res[0] for u in updates),
        res_val_JFQ=stack(u.res[1] for u in updates),
        res_row_JFQ=stack(u.res[2] for u in updates),
        res_win_JFQW=stack(u.res[3] for u in updates),
    )


def histogram_edges(codes: Iterable[torch.Tensor], n_bins: int) -> Float[torch.Tensor, " n_edges"]:
    """Log-spaced edges from a power of ten below the firing activations' 0.1% quantile to one above
    twice their maximum, over the first batch's codes (values outside count in the end bins)."""
    samples, peak = [], 0.0
    for code in codes:
        firing = code[code > 0]
        if firing.numel():
            peak = max(peak, float(firing.max()))
            samples.append(firing[:: max(1, firing.numel() // 100_000)].double().cpu())
    if not samples:
        low, high = -3.0, 2.0
    else:
        sample = torch.cat(samples).sort().values
        low = math.floor(math.log10(max(float(sample[int(0.001 * (len(sample) - 1))]), 1e-12)))
        high = max(math.ceil(math.log10(2 * peak)), low + 1)
    exponents = torch.linspace(low, high, n_bins + 1, dtype=torch.float64)
    return torch.tensor([float(f"{10.0 ** float(e):.6g}") for e in exponents], dtype=torch.float64)
