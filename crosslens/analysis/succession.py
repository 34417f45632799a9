"""Successions: a latent's direction handed over to a near-parallel one as it fades (the lineage
events that :func:`crosslens.analysis.lineage_events.lineage` reads from presence over time).

- :func:`succession_events`: a latent fades as near-parallel latents emerge, both changes read
  from runs of presence;
- :func:`turn_successions`: the same handover where one of the two latents is present on both
  sides of it and turns, the crosscoder reusing a latent it had for another direction, so that
  only the other latent's presence changes.

Events come back as ``(kind, snapshot, before, after, cosine, how)`` tuples, the fields of a
:class:`~crosslens.analysis.lineage_events.LineageEvent`; ``config`` is a
:class:`~crosslens.analysis.lineage_events.LineageConfig`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from crosslens.analysis.evolution import NO_STEP

Succession = tuple[str, int, tuple[int, ...], tuple[int, ...], float, str]
"""``(kind, snapshot, before, after, cosine, how)``."""


def components(edges: list[tuple[int, int, float]]) -> list[tuple[tuple[int, ...], float]]:
    """Connected components of weighted edges, each with the smallest weight inside it."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, _ in edges:
        parent[find(a)] = find(b)
    members: dict[int, list[int]] = {}
    for node in sorted(parent):
        members.setdefault(find(node), []).append(node)
    weight: dict[int, float] = {}
    for a, _, c in edges:
        root = find(a)
        weight[root] = min(weight.get(root, c), c)
    return [(tuple(nodes), weight[root]) for root, nodes in members.items()]


def held_presence(present_FS: torch.Tensor, k: int) -> torch.Tensor:
    """Where a latent is present within a run of at least ``k`` consecutive present snapshots."""
    S = present_FS.shape[1]
    ahead_FS = torch.zeros(present_FS.shape, dtype=torch.long)
    behind_FS = torch.zeros(present_FS.shape, dtype=torch.long)
    for s in range(S):
        ahead_FS[:, s] = (ahead_FS[:, s - 1] + 1 if s else 1) * present_FS[:, s]
        r = S - 1 - s
        behind_FS[:, r] = (behind_FS[:, r + 1] + 1 if s else 1) * present_FS[:, r]
    return present_FS & (ahead_FS + behind_FS - 1 >= k)


def turned_rows(unit_FSD: torch.Tensor, present_FS: torch.Tensor, hold: float) -> torch.Tensor:
    """Where a present latent's row is under the hold line from its row at the last snapshot before
    it where it was present ``[F, S]`` (False at its first present snapshot and where it is absent:
    an absent row's direction is noise), a snapshot at a time, so that no ``[F, S, D]`` product is made."""
    turned_FS = torch.zeros(present_FS.shape, dtype=torch.bool)
    last_FD, seen_F = unit_FSD[:, 0].clone(), present_FS[:, 0].clone()
    for s in range(1, unit_FSD.shape[1]):
        now_F = present_FS[:, s]
        turned_FS[:, s] = now_F & seen_F & (torch.linalg.vecdot(unit_FSD[:, s], last_FD) < hold)
        last_FD[now_F], seen_F = unit_FSD[now_F, s], seen_F | now_F
    return turned_FS


def _best_row_pair(
    rows_AKD: torch.Tensor, rows_BKD: torch.Tensor, left_out: Callable[[int, int], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest cosine over each (a, b)'s row pairs and which pair (``k * K + l`` for a's row
    ``k`` and b's row ``l``, the first on ties): one ``[A, B]`` matmul per pair, so memory stays
    that of one ``[A, B]`` table however many rows are compared. ``left_out(k, l)`` is the
    ``[A, B]`` mask of the pairs whose rows ``k`` and ``l`` are not compared (-2 where none is)."""
    K = rows_AKD.shape[1]
    best_AB = rows_AKD.new_full((rows_AKD.shape[0], rows_BKD.shape[0]), -2.0)
    which_AB = torch.zeros(best_AB.shape, dtype=torch.long, device=best_AB.device)
    for kl in range(K * K):
        C_AB = (rows_AKD[:, kl // K] @ rows_BKD[:, kl % K].T).masked_fill_(left_out(kl // K, kl % K), -2.0)
        better_AB = C_AB > best_AB
        best_AB, which_AB = torch.where(better_AB, C_AB, best_AB), torch.where(better_AB, kl, which_AB)
    return best_AB, which_AB


def succession_events(
    unit_FSD: torch.Tensor,
    present_FS: torch.Tensor,
    held_FS: torch.Tensor,
    emergence_F: torch.Tensor,
    fade_F: torch.Tensor,
    live_F: torch.Tensor,
    config: Any,
    turned_FS: torch.Tensor,
) -> list[Succession]:
    """Latents that fade as near-parallel latents emerge: the faders' last held rows (the last
    ``min_snapshots`` of a run that long) against the emergers' first held rows, the best pair
    deciding (but for two rows of one snapshot where both latents are present), masked to
    emergences near each fade. ``held_FS`` is :func:`held_presence` of
    ``present_FS`` at ``min_snapshots``, ``turned_FS`` :func:`turned_rows` at the hold line: with
    :attr:`~crosslens.analysis.lineage_events.LineageConfig.steady_successions`, a latent whose
    rows read here turn in one step between them is neither a fader nor an emerger."""
    S, k = unit_FSD.shape[1], config.min_snapshots
    idx_FS = torch.arange(S).expand(present_FS.shape)
    end_F = torch.where(held_FS & (idx_FS < fade_F[:, None]), idx_FS, -1).amax(1)
    onset_F = torch.where(held_FS & (idx_FS >= emergence_F[:, None]), idx_FS, S).amin(1)
    fading_F = live_F & (fade_F != NO_STEP) & (end_F >= 0)
    emerging_F = live_F & (emergence_F != NO_STEP) & (emergence_F > 0) & (onset_F < S)
    if config.steady_successions:
        # a latent hands over (or takes on) one direction only where it held it: a turn between
        # the rows read is a latent that carried the direction for fewer than min_snapshots
        fading_F &= ~(turned_FS & (idx_FS > end_F[:, None] - k) & (idx_FS <= end_F[:, None])).any(1)
        emerging_F &= ~(turned_FS & (idx_FS > onset_F[:, None]) & (idx_FS < onset_F[:, None] + k)).any(1)
    faders, emergers = torch.nonzero(fading_F).flatten(), torch.nonzero(emerging_F).flatten()
    if len(faders) == 0 or len(emergers) == 0:
        return []
    steps_K = torch.arange(k)
    snaps_AK = (end_F[faders, None] - steps_K).clamp_min(0)  # the row nearest the fade first
    snaps_BK = (onset_F[emergers, None] + steps_K).clamp_max(S - 1)
    # two latents present at one snapshot that fire together there (a correlated pair: one feature
    # fading as its partner is born) mix each other's direction into their rows of that snapshot,
    # which then say nothing of a handover: rows of one snapshot where both are present are not paired
    on_AK, on_BK = present_FS[faders[:, None], snaps_AK], present_FS[emergers[:, None], snaps_BK]

    def together(k_: int, l_: int) -> torch.Tensor:
        same_AB = snaps_AK[:, k_, None] == snaps_BK[None, :, l_]
        return same_AB & on_AK[:, k_, None] & on_BK[None, :, l_]

    C_AB, best_AB = _best_row_pair(unit_FSD[faders[:, None], snaps_AK], unit_FSD[emergers[:, None], snaps_BK], together)
    near_AB = (onset_F[emergers][None, :] - fade_F[faders, None]).abs() <= config.successor_window
    overlap_AB = (present_FS[faders].float() @ present_FS[emergers].float().T) <= config.successor_window
    edges_AB = near_AB & overlap_AB & (C_AB >= config.successor_cosine) & (faders[:, None] != emergers[None, :])
    a_E, b_E = torch.nonzero(edges_AB, as_tuple=True)
    edges = [(int(faders[a]), -1 - int(emergers[b]), float(C_AB[a, b])) for a, b in zip(a_E, b_E)]
    rows: dict[int, torch.Tensor] = {}  # each latent's row through which it is joined (its best edge's)
    best: dict[int, float] = {}
    for a, b in zip(a_E.tolist(), b_E.tolist()):
        kl = int(best_AB[a, b])
        for node, row in (
            (int(faders[a]), unit_FSD[faders[a], snaps_AK[a, kl // k]]),
            (-1 - int(emergers[b]), unit_FSD[emergers[b], snaps_BK[b, kl % k]]),
        ):
            if float(C_AB[a, b]) > best.get(node, -2.0):
                best[node], rows[node] = float(C_AB[a, b]), row
    events = []
    for component, _ in components(edges):
        before = tuple(sorted(n for n in component if n >= 0))
        after = tuple(sorted(-1 - n for n in component if n < 0))
        at = int(onset_F[list(after)].min())
        events.append(
            _succession(at, before, after, max(best[a] for a in before), rows, config.successor_cosine, "succession")
        )
    return events


def turn_successions(
    unit_FSD: torch.Tensor,
    present_FS: torch.Tensor,
    held_FS: torch.Tensor,
    config: Any,
    joined: set[tuple[int, int, int]],
    turned_FS: torch.Tensor,
) -> list[Succession]:
    """Handovers at a snapshot ``t`` where one latent's presence changes and the other turns: a
    direction ``a`` held a snapshot before that no present latent continues at ``t`` or ``t + 1``
    (under the hold line from it), and a direction ``b`` held at ``t`` that no present latent held
    at ``t - 1`` and that ``b`` keeps for ``min_snapshots``, at ``successor_cosine`` or closer to
    ``a``'s. Of the two latents exactly one is present on both sides, and it turned in one step: it
    held one direction for ``min_snapshots`` before ``t`` and another for as many from ``t`` (a
    latent whose row drifts from snapshot to snapshot hands nothing over). Pairs that ``joined``
    holds as ``(snapshot, a, b)`` with ``a < b`` within a snapshot are another event's already;
    ``held_FS`` is :func:`held_presence` of ``present_FS`` at ``min_snapshots`` and ``turned_FS``
    :func:`turned_rows` at the hold line."""
    S, k, hold = unit_FSD.shape[1], config.min_snapshots, config.hold_cosine
    kept_FS = present_FS & ~turned_FS  # present at s and s - 1 with the row held between them
    kept_FS[:, 0] = False
    kept_FS[:, 1:] &= present_FS[:, :-1]
    steady_FS = present_FS.clone()  # the k rows up to s present and holding one direction
    for j in range(k - 1):  # (kept_FS[:, 0] is False, so no window reaches before snapshot 0)
        steady_FS[:, j:] &= kept_FS[:, : S - j]
    edges: dict[int, list[tuple[int, int, float]]] = {}
    rows: dict[tuple[int, int], torch.Tensor] = {}
    for t in range(1, S):
        steady_after_F = steady_FS[:, t + k - 1] if t + k - 1 < S else torch.zeros_like(present_FS[:, 0])
        # a fader: absent at t, or turned there in one step; a successor: absent at t - 1, or turned
        # there in one step, and its new direction kept
        step_F = turned_FS[:, t] & steady_FS[:, t - 1] & steady_after_F
        A = torch.nonzero(held_FS[:, t - 1] & (~present_FS[:, t] | step_F)).flatten()
        B = torch.nonzero(held_FS[:, t] & steady_after_F & (~present_FS[:, t - 1] | step_F)).flatten()
        if len(A) == 0 or len(B) == 0:
            continue
        P_AD, Q_BD = unit_FSD[A, t - 1], unit_FSD[B, t]
        faded_A = _nearest(P_AD, unit_FSD[:, t], present_FS[:, t], config.chunk_size) < hold
        if t + 1 < S:
            faded_A &= _nearest(P_AD, unit_FSD[:, t + 1], present_FS[:, t + 1], config.chunk_size) < hold
        new_B = _nearest(Q_BD, unit_FSD[:, t - 1], present_FS[:, t - 1], config.chunk_size) < hold
        C_AB = P_AD @ Q_BD.T
        # exactly one of the two latents present on both sides: the one that turned
        ok_AB = present_FS[A, t][:, None] ^ present_FS[B, t - 1][None, :]
        ok_AB &= faded_A[:, None] & new_B[None, :] & (C_AB >= config.successor_cosine)
        for i, j in zip(*torch.nonzero(ok_AB, as_tuple=True)):
            a, b = int(A[i]), int(B[j])
            if any((t + d, min(a, b), max(a, b)) in joined for d in (-1, 0, 1)):
                continue
            edges.setdefault(t, []).append((a, -1 - b, float(C_AB[i, j])))
            rows[(t, a)], rows[(t, -1 - b)] = P_AD[i], Q_BD[j]
    events = []
    for t, pairs in edges.items():
        for component, _ in components(pairs):
            before = tuple(sorted(n for n in component if n >= 0))
            after = tuple(sorted(-1 - n for n in component if n < 0))
            best = max(c for a, _, c in pairs if a in before)
            at_rows = {n: rows[(t, n)] for n in component}
            events.append(_succession(t, before, after, best, at_rows, config.successor_cosine, "turn"))
    return events


def _nearest(rows_AD: torch.Tensor, unit_FD: torch.Tensor, present_F: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Each row's largest cosine to the present latents' rows ``unit_FD`` (-1 where none is present),
    a chunk of rows at a time."""
    others_PD = unit_FD[present_F]
    if len(others_PD) == 0:
        return rows_AD.new_full((len(rows_AD),), -1.0)
    return torch.cat([(chunk @ others_PD.T).amax(1) for chunk in rows_AD.split(chunk_size)])


def _succession(
    at: int,
    before: tuple[int, ...],
    after: tuple[int, ...],
    cosine: float,
    rows: dict[int, torch.Tensor],
    same_cosine: float,
    how: str,
) -> Succession:
    """One latent to one is a handoff, one to several a split, several to one a merge, counted in
    directions (``rows`` by node: a latent before, ``-1 - latent`` after)."""
    n_before = _directions([rows[a] for a in before], same_cosine)
    n_after = _directions([rows[-1 - b] for b in after], same_cosine)
    kind = "handoff" if n_before == n_after else ("split" if n_after > n_before else "merge")
    return kind, at, before, after, round(cosine, 6), how


def _directions(rows: list[torch.Tensor], same_cosine: float) -> int:
    """How many directions ``rows`` (unit) hold: rows at ``same_cosine`` or closer count as one, so
    that two latents carrying one direction (duplicates) do not make a handoff look like a split."""
    if len(rows) < 2:
        return len(rows)
    C = torch.stack(rows) @ torch.stack(rows).T
    edges = [(a, b, 1.0) for a, b in zip(*torch.nonzero(C >= same_cosine, as_tuple=True)) if a < b]
    grouped = {int(n) for a, b, _ in edges for n in (a, b)}
    return len(components([(int(a), int(b), c) for a, b, c in edges])) + len(rows) - len(grouped)
