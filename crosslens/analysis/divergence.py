"""Splits and merges read from two latents whose rows coincide and part (or the reverse): the
divergence rules of :func:`crosslens.analysis.lineage_events.lineage`, and splits whose second
child is born as the parent's copy.

Pairs come back as ``(kind, snapshot, a, b, cosine)`` tuples; ``config`` is a
:class:`~crosslens.analysis.lineage_events.LineageConfig`, whose fields say what each rule reads.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch


def divergence_pairs(
    unit_FSD: torch.Tensor,
    present_FS: torch.Tensor,
    relatives: torch.Tensor,
    cosines: torch.Tensor,
    config,
    turned_FS: torch.Tensor,
) -> list[tuple[str, int, int, int, float]]:
    """Splits and merges of latents present together, as (kind, snapshot, a, b, cosine) pairs: pairs
    that were ever relatives at or above ``same_cosine``, their cosine at every snapshot both are
    present, and where it settles. ``turned_FS`` is
    :func:`~crosslens.analysis.succession.turned_rows` at the hold line."""
    j_P, s_P, k_P = torch.nonzero(cosines >= config.same_cosine, as_tuple=True)
    r_P = relatives[j_P, s_P, k_P]
    pairs = torch.unique(torch.stack([torch.minimum(j_P, r_P), torch.maximum(j_P, r_P)], dim=1), dim=0)
    if len(pairs) == 0:
        return []
    a_P, b_P = pairs[:, 0], pairs[:, 1]
    cos_PS = (unit_FSD[a_P] * unit_FSD[b_P]).sum(-1)
    both_PS = present_FS[a_P] & present_FS[b_P]
    same_PS, apart_PS = both_PS & (cos_PS >= config.hold_cosine), both_PS & (cos_PS <= config.apart_cosine)
    peak_PS = both_PS & (cos_PS >= config.same_cosine)
    S = unit_FSD.shape[1]
    idx_1S = torch.arange(S)[None, :]
    last_same_P = torch.where(same_PS, idx_1S, -1).amax(1)
    last_apart_P = torch.where(apart_PS, idx_1S, -1).amax(1)
    split_at_P = torch.where(apart_PS & (idx_1S > last_same_P[:, None]), idx_1S, S).amin(1)
    merge_at_P = torch.where(same_PS & (idx_1S > last_apart_P[:, None]), idx_1S, S).amin(1)

    def side(before: bool, at_P: torch.Tensor) -> torch.Tensor:
        return (idx_1S < at_P[:, None]) if before else (idx_1S >= at_P[:, None])

    def held(state_PS: torch.Tensor, before: bool, at_P: torch.Tensor) -> torch.Tensor:
        """Pairs in ``state_PS`` at ``min_snapshots`` or more snapshots before (or from) ``at_P``."""
        return (state_PS & side(before, at_P)).sum(1) >= config.min_snapshots

    def together(before: bool, at_P: torch.Tensor) -> torch.Tensor:
        """Pairs held together on that side of ``at_P``, at ``same_cosine`` at one snapshot at least."""
        return held(same_PS, before, at_P) & (peak_PS & side(before, at_P)).any(1)

    # rows that point opposite carry nothing between them: the two fire together to cancel
    cancels_P = (both_PS & (cos_PS <= -config.hold_cosine)).any(1)
    split_P = together(True, split_at_P) & held(apart_PS, False, split_at_P) & ~cancels_P
    merge_P = held(apart_PS, True, merge_at_P) & together(False, merge_at_P) & ~cancels_P
    # one concept becomes two (or two one) where both latents leave their rows; a latent that keeps
    # its own while the other moves is the other changing what it carries
    # (a merge is read from its together row back to its apart side, or, without turn_at_once,
    # from the last apart row on into the together state)
    merge_ends = (merge_at_P, last_apart_P) if config.turn_at_once else (last_apart_P, merge_at_P)
    for x_P in (a_P, b_P):
        split_P &= _left(unit_FSD, present_FS, turned_FS, x_P, last_same_P, split_at_P, config)
        merge_P &= _left(unit_FSD, present_FS, turned_FS, x_P, *merge_ends, config)
    # and both turn alike: a latent that turns less than half as far as its partner kept its concept
    split_P &= _balanced(unit_FSD, present_FS, a_P, b_P, last_same_P, split_at_P, config)
    merge_P &= _balanced(unit_FSD, present_FS, a_P, b_P, merge_at_P, last_apart_P, config)
    # and where the pair is together, its direction is one concept's, not a crowd's
    split_P &= ~_crowded(unit_FSD, present_FS, a_P, b_P, last_same_P, split_P, config)
    merge_P &= ~_crowded(unit_FSD, present_FS, a_P, b_P, merge_at_P, merge_P, config)
    found: list[tuple[str, int, int, int, float]] = []
    for kind, ok_P, at_P in (
        ("split", split_P & (last_same_P >= 0) & (last_apart_P > last_same_P), split_at_P),
        ("merge", merge_P & (last_apart_P >= 0) & (last_same_P > last_apart_P), merge_at_P),
    ):
        for p in torch.nonzero(ok_P).flatten().tolist():
            at = int(at_P[p])
            found.append((kind, at, int(a_P[p]), int(b_P[p]), float(cos_PS[p, at])))
    return found


def _left(
    unit_FSD: torch.Tensor,
    present_FS: torch.Tensor,
    turned_FS: torch.Tensor,
    x_P: torch.Tensor,
    from_P: torch.Tensor,
    to_P: torch.Tensor,
    config: Any,
) -> torch.Tensor:
    """Pairs whose latent ``x_P`` left its row at ``from_P`` by ``to_P``: its row at ``to_P`` is
    under the hold line from it, or, for a latent that gets there a snapshot after its partner, in
    one step: a present row among the ``min_snapshots`` from ``to_P`` (read away from ``from_P``)
    under the hold line from it and from the row beside it on the ``from_P`` side. Time runs from
    ``from_P`` to ``to_P``: forward for a split (from the pair's together row to its first snapshot
    apart), backward for a merge. Without ``turn_at_once``, any present row of those under the hold
    line from the row at ``from_P`` counts, the one-step condition aside. With ``leave_for_good``, no
    present row of those after the first under the hold line is back over it."""
    S = unit_FSD.shape[1]
    step_P1, at_PK, present_PK = _window(present_FS, x_P, from_P, to_P, config.min_snapshots)
    before_PK = (at_PK - step_P1).clamp(0, S - 1)
    x_P1 = x_P[:, None]
    rows_PKD = unit_FSD[x_P1, at_PK]
    from_start_PK = (unit_FSD[x_P, from_P.clamp(0, S - 1)][:, None] * rows_PKD).sum(-1)
    away_PK = present_PK & (from_start_PK < config.hold_cosine)
    # a latent back at the hold line after it was first under it within those snapshots dipped off
    # the row for a snapshot and kept it
    back_PK = (away_PK.cumsum(1) > 0) & present_PK & ~away_PK
    stays_P = ~back_PK.any(1) if config.leave_for_good else torch.ones_like(x_P, dtype=torch.bool)
    if not config.turn_at_once:
        return away_PK.any(1) & stays_P
    from_before_PK = (unit_FSD[x_P1, before_PK] * rows_PKD).sum(-1)
    in_one_step_P = (away_PK & present_FS[x_P1, before_PK] & (from_before_PK < config.hold_cosine)).any(1)
    # a latent that got under the hold line from the shared row only by drifting a little at every
    # snapshot on the way (as the feature it carries drifts) kept its direction: it left that row
    # where one step on the way turned it (under the hold line from its last present row before)
    lo_P, hi_P = torch.minimum(from_P, to_P).clamp(0, S - 1), torch.maximum(from_P, to_P).clamp(0, S - 1)
    idx_1S = torch.arange(S)[None, :]
    turned_P = (turned_FS[x_P] & (idx_1S > lo_P[:, None]) & (idx_1S <= hi_P[:, None])).any(1)
    return ((away_PK[:, 0] & turned_P) | in_one_step_P) & stays_P


def _window(
    present_FS: torch.Tensor, x_P: torch.Tensor, from_P: torch.Tensor, to_P: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` snapshots from ``to_P`` read away from ``from_P``: the step of time ``[P, 1]`` (+1
    forward, -1 backward), the snapshots ``[P, k]`` (clamped into range) and where latent ``x_P`` is
    present at one of them inside the range."""
    S = present_FS.shape[1]
    step_P1 = torch.where(to_P >= from_P, 1, -1)[:, None]
    at_PK = to_P[:, None] + step_P1 * torch.arange(k)
    inside_PK = (at_PK >= 0) & (at_PK < S)
    at_PK = at_PK.clamp(0, S - 1)
    return step_P1, at_PK, inside_PK & present_FS[x_P[:, None], at_PK]


def _balanced(
    unit_FSD: torch.Tensor,
    present_FS: torch.Tensor,
    a_P: torch.Tensor,
    b_P: torch.Tensor,
    from_P: torch.Tensor,
    to_P: torch.Tensor,
    config: Any,
) -> torch.Tensor:
    """Pairs whose latents turn alike from their rows at ``from_P`` (:attr:`LineageConfig.turn_balance`):
    each latent's turn is the largest angle between that row and its present rows among the
    ``min_snapshots`` from ``to_P`` (read away from ``from_P``, as :func:`_left` reads them), and
    the smaller turn is at least ``turn_balance`` of the larger."""
    S = unit_FSD.shape[1]
    turns = []
    for x_P in (a_P, b_P):
        _, at_PK, present_PK = _window(present_FS, x_P, from_P, to_P, config.min_snapshots)
        cos_PK = (unit_FSD[x_P, from_P.clamp(0, S - 1)][:, None] * unit_FSD[x_P[:, None], at_PK]).sum(-1)
        turns.append(torch.arccos(cos_PK.masked_fill(~present_PK, 1.0).clamp(-1.0, 1.0).amin(1)))
    return torch.minimum(*turns) >= config.turn_balance * torch.maximum(*turns)


def birth_splits(
    unit_FSD: torch.Tensor,
    present_FS: torch.Tensor,
    held_FS: torch.Tensor,
    relatives: torch.Tensor,
    cosines: torch.Tensor,
    config: Any,
    turned_FS: torch.Tensor,
    seen: Collection[tuple[int, int]] = (),
) -> list[tuple[str, int, int, int, float]]:
    """Splits whose second child's latent is born as the parent's copy: a latent ``b`` first present
    at ``e`` (for ``min_snapshots`` in a row) with a relative ``a`` there at ``same_cosine`` or
    closer that was present at ``e - 1`` too, the two then apart as after a divergence's split: at
    ``min_snapshots`` snapshots after ``e``, never at the hold line again, never opposite, their
    shared row at ``e`` not a crowd's, and ``a`` leaving its row at ``e`` as a divergence's latents
    leave theirs (:func:`_left`). ``held_FS`` is where each latent is present within a run of
    ``min_snapshots`` (:func:`~crosslens.analysis.succession.held_presence`), ``turned_FS``
    :func:`~crosslens.analysis.succession.turned_rows` at the hold line; ``seen`` pairs (``a < b``)
    are left out."""
    F, S, _ = unit_FSD.shape
    k, rows_F = config.min_snapshots, torch.arange(F)
    first_F = torch.where(present_FS, torch.arange(S).expand(F, S), S).amin(1)
    born_F = (first_F >= 1) & (first_F < S) & held_FS[rows_F, first_F.clamp(max=S - 1)]
    b_B = torch.nonzero(born_F).flatten()
    e_B = first_F[b_B]
    near_BK, cos_BK = relatives[b_B, e_B], cosines[b_B, e_B]  # its nearest present latents where it is born
    hit_BK = (near_BK >= 0) & (cos_BK >= config.same_cosine)
    hit_BK &= present_FS[near_BK.clamp_min(0), (e_B - 1)[:, None]]  # that lived before it
    b_i, k_i = torch.nonzero(hit_BK, as_tuple=True)
    if len(b_i) == 0:
        return []
    a_P, b_P, e_P = near_BK[b_i, k_i], b_B[b_i], e_B[b_i]
    idx_1S = torch.arange(S)[None, :]
    cos_PS = (unit_FSD[a_P] * unit_FSD[b_P]).sum(-1)
    both_PS = present_FS[a_P] & present_FS[b_P]
    apart_PS = both_PS & (idx_1S >= e_P[:, None]) & (cos_PS <= config.apart_cosine)
    ok_P = apart_PS.sum(1) >= k  # apart as after a split, never together again, never opposite
    ok_P &= ~(both_PS & (idx_1S > e_P[:, None]) & (cos_PS >= config.hold_cosine)).any(1)
    ok_P &= ~(both_PS & (cos_PS <= -config.hold_cosine)).any(1)
    ok_P &= ~_crowded(unit_FSD, present_FS, a_P, b_P, e_P, ok_P, config)
    split_at_P = torch.where(apart_PS, idx_1S, S).amin(1)
    # the parent's latent turns too, as a divergence's latents both do: one that keeps its row while
    # the newborn leaves has a newborn duplicate that went on to carry another feature
    ok_P &= _left(unit_FSD, present_FS, turned_FS, a_P, e_P, split_at_P, config)
    found = []
    for p in torch.nonzero(ok_P).flatten().tolist():
        a, b, at = int(a_P[p]), int(b_P[p]), int(split_at_P[p])
        if (min(a, b), max(a, b)) not in seen:
            found.append(("split", at, min(a, b), max(a, b), float(cos_PS[p, at])))
    return found


def _crowded(
    unit_FSD: torch.Tensor,
    present_FS: torch.Tensor,
    a_P: torch.Tensor,
    b_P: torch.Tensor,
    at_P: torch.Tensor,
    asked_P: torch.Tensor,
    config: Any,
) -> torch.Tensor:
    """Of the ``asked_P`` pairs, those where more than ``max_shared`` other present latents lie at the
    hold line or closer to the row of ``a`` or of ``b`` at snapshot ``at_P``: a matmul per snapshot
    and chunk of rows."""
    crowded_P = torch.zeros_like(asked_P)
    for s in torch.unique(at_P[asked_P]).tolist():
        pairs = torch.nonzero(asked_P & (at_P == s)).flatten()
        latents_R = torch.cat([a_P[pairs], b_P[pairs]])
        shared_R = torch.empty_like(latents_R)
        for start in range(0, len(latents_R), config.chunk_size):
            rows_CD = unit_FSD[latents_R[start : start + config.chunk_size], s]
            near_CF = ((rows_CD @ unit_FSD[:, s].T) >= config.hold_cosine) & present_FS[None, :, s]
            shared_R[start : start + config.chunk_size] = near_CF.sum(1) - 1  # the latent itself
        crowded_P[pairs] = shared_R.view(2, -1).amax(0) > config.max_shared
    return crowded_P
