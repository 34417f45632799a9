"""Splits read by composition: a parent latent that turns as a latent born beside it fires with it,
each child's direction carried by a sum of decoder rows rather than by a row of its own.

A crosscoder that spends a fixed number of active latents a token (TopK) can carry a split
without one latent per child. The parent's latent turns at the split, and a latent born there
fires with it on a child's tokens, its row along that child less the parent's. The child is the
sum of the two rows, each weighted by the latent's mean code on the tokens where both fire, and
no single row lies along it, so the rules that compare rows (divergence, birth) cannot see it.

- :func:`composition_pairs` reads, from the decoder alone, the latents born at a snapshot and
  the latents that turn at one: the pairs whose firing together is worth counting;
- :class:`CoFiring` counts it for those pairs in one pass over the tokens, folded in beside
  latent scaling's (:func:`~crosslens.analysis.scaling.latent_scaling`'s ``cofiring``): three
  ``[newborn, parent]`` matmuls a batch, never a ``[d_sae, d_sae]`` table;
- :func:`composition_splits` reads the splits (:attr:`~crosslens.analysis.lineage_events.LineageConfig.compositions`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Any

import torch
from jaxtyping import Float, Int

from crosslens.analysis.relatives import unit_rows
from crosslens.analysis.succession import turned_rows

Composed = tuple[tuple[int, float], ...]
"""A child's direction as ``(latent, weight)`` terms: the sum of the latents' decoder rows, each
times its weight."""


@dataclass
class CoFiring:
    """How often and how strongly latents born at a snapshot (``newborn_U``) fire with latents that
    turn at one (``parent_V``), summed over tokens. The tables are ``[newborn, parent]``, which on a
    wide crosscoder can hold many pairs, so they are float32 (half of float64's memory): counts stay
    exact up to 2**24 tokens, and the sums of codes only feed a child's direction."""

    newborn_U: Int[torch.Tensor, " n_newborn"]
    parent_V: Int[torch.Tensor, " n_parent"]
    n_fire_U: Float[torch.Tensor, " n_newborn"]
    """Tokens each newborn latent fires on."""
    both_UV: Float[torch.Tensor, "n_newborn n_parent"]
    """Tokens where both fire."""
    parent_code_UV: Float[torch.Tensor, "n_newborn n_parent"]
    """The parent's code summed over those tokens."""
    newborn_code_UV: Float[torch.Tensor, "n_newborn n_parent"]
    """The newborn's code summed over them."""

    @classmethod
    def zeros(cls, newborn_U: torch.Tensor, parent_V: torch.Tensor, device: torch.device | str = "cpu") -> CoFiring:
        table = lambda: torch.zeros(len(newborn_U), len(parent_V), dtype=torch.float32, device=device)  # noqa: E731
        return cls(
            newborn_U.long().to(device),
            parent_V.long().to(device),
            torch.zeros(len(newborn_U), dtype=torch.float32, device=device),
            table(),
            table(),
            table(),
        )

    @torch.no_grad()
    def add(self, f_BF: Float[torch.Tensor, "batch d_sae"]) -> None:
        """Fold one batch of shared codes in."""
        if len(self.newborn_U) == 0 or len(self.parent_V) == 0:
            return
        f_BU, f_BV = f_BF[:, self.newborn_U].float(), f_BF[:, self.parent_V].float()
        on_BU, on_BV = (f_BU > 0).float(), (f_BV > 0).float()
        self.n_fire_U += on_BU.sum(0)
        self.both_UV += on_BU.T @ on_BV
        # a code is 0 where its latent is silent, so these sums run over the tokens where both fire
        self.parent_code_UV += on_BU.T @ f_BV
        self.newborn_code_UV += f_BU.T @ on_BV

    def cpu(self) -> CoFiring:
        return CoFiring(*(getattr(self, f.name).cpu() for f in fields(self)))

    def lookup(self) -> tuple[dict[int, int], dict[int, int]]:
        """Row of each newborn latent and column of each parent latent."""
        return (
            {int(n): u for u, n in enumerate(self.newborn_U.tolist())},
            {int(p): v for v, p in enumerate(self.parent_V.tolist())},
        )


def composition_tables(present_FS: torch.Tensor, turned_FS: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a latent is born ``[F, S]`` (absent at the snapshot before, present at ``k`` from it
    on) and where it is a parent (present at the ``k`` snapshots before and ``k`` from it on, its
    row turned there, :func:`~crosslens.analysis.succession.turned_rows`), for snapshots with
    ``k`` on each side."""
    F, S = present_FS.shape
    born_FS = torch.zeros(F, S, dtype=torch.bool)
    parent_FS = torch.zeros(F, S, dtype=torch.bool)
    for t in range(k, S - k + 1):
        after_F = present_FS[:, t : t + k].all(1)
        born_FS[:, t] = after_F & ~present_FS[:, t - 1]
        parent_FS[:, t] = after_F & present_FS[:, t - k : t].all(1) & turned_FS[:, t]
    return born_FS, parent_FS


def composition_pairs(analysis: Any, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The newborn and parent latents of an :class:`~crosslens.analysis.evolution_analysis.EvolutionAnalysis`
    (:func:`composition_tables` on its presence, live latents only, turns at ``config``'s hold line):
    the latents :class:`CoFiring` counts; both empty where there is no snapshot with a newborn and
    a parent."""
    present_FS = (analysis.present.bool() & ~analysis.lifetimes.dead.bool()[:, None]).cpu()
    turned_FS = turned_rows(unit_rows(analysis.W_dec.float()).cpu(), present_FS, config.hold_cosine)
    born_FS, parent_FS = composition_tables(present_FS, turned_FS, config.min_snapshots)
    with_both_S = born_FS.any(0) & parent_FS.any(0)
    return (
        torch.nonzero(born_FS[:, with_both_S].any(1)).flatten(),
        torch.nonzero(parent_FS[:, with_both_S].any(1)).flatten(),
    )


def composition_splits(
    W_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    present_FS: torch.Tensor,
    turned_FS: torch.Tensor,
    cofiring: CoFiring,
    config: Any,
) -> list[tuple[str, int, tuple[int, ...], tuple[int, ...], float, str, tuple[Composed, ...]]]:
    """Splits of a parent latent ``p`` that turns at ``t`` into directions made of its own row and
    of its sums with latents born at ``t`` that fire with it on at least ``config.cofire_share`` of
    their tokens. Two of those directions are the split's children where, at each of the
    ``min_snapshots`` snapshots from ``t`` on, both have left the parent's last row before ``t``
    (under ``successor_cosine``: a direction at it or closer is the parent's, handed on), they are
    apart (at ``apart_cosine`` or under), and each is nearer that row than the other child: the
    parent's direction lies between them, as one direction become two. Events come back as
    ``(kind, snapshot, before, after, cosine, how, composed)``: the cosine of the two children at
    ``t`` (the largest, where more pairs part), ``composed`` each child's terms."""
    k = config.min_snapshots
    born_FS, parent_FS = composition_tables(present_FS, turned_FS, k)
    row_of, column_of = cofiring.lookup()
    found = []
    for t, p in torch.nonzero(parent_FS.T).tolist():
        if p not in column_of:
            continue
        v = column_of[p]
        children: dict[tuple[int, ...], Composed] = {(p,): ((p, 1.0),)}
        for n in torch.nonzero(born_FS[:, t]).flatten().tolist():
            u = row_of.get(n)
            if u is None or n == p:
                continue
            both = float(cofiring.both_UV[u, v])
            if both == 0.0 or both < config.cofire_share * float(cofiring.n_fire_U[u]):
                continue
            weights = float(cofiring.parent_code_UV[u, v]) / both, float(cofiring.newborn_code_UV[u, v]) / both
            children[(p, n)] = ((p, weights[0]), (n, weights[1]))
        if len(children) < 2:
            continue
        parted = _parted(W_FSD, p, t, k, children, config)
        if parted:
            kept = sorted({key for pair, _ in parted for key in pair})
            after = tuple(sorted({j for key in kept for j in key}))
            cosine = max(c for _, c in parted)
            found.append(
                ("split", t, (p,), after, round(cosine, 6), "composition", tuple(children[key] for key in kept))
            )
    return found


def composed_rows(W_FSD: torch.Tensor, terms: Composed) -> Float[torch.Tensor, "n_snapshots d_in"]:
    """A child's direction at every snapshot: its latents' rows summed with their weights."""
    return sum(weight * W_FSD[j] for j, weight in terms)


def with_children_rows(
    W_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"], events: Any
) -> tuple[Float[torch.Tensor, "rows n_snapshots d_in"], list[tuple[int, ...]]]:
    """The decoder with each split by composition's children appended as rows of their own
    (:func:`composed_rows`), and for each event the rows after it: its latents', or its children's
    appended rows; what reads a split's children as it reads latents (the planted scorer, the
    agreement with another crosscoder)."""
    extra: list[torch.Tensor] = []
    after_of: list[tuple[int, ...]] = []
    for e in events:
        if not e.composed:
            after_of.append(tuple(e.after))
            continue
        start = W_FSD.shape[0] + len(extra)
        extra += [composed_rows(W_FSD, child) for child in e.composed]
        after_of.append(tuple(range(start, start + len(e.composed))))
    return (torch.cat([W_FSD, torch.stack(extra)]) if extra else W_FSD), after_of


def _parted(
    W_FSD: torch.Tensor, p: int, t: int, k: int, children: dict[tuple[int, ...], Composed], config: Any
) -> list[tuple[tuple[tuple[int, ...], tuple[int, ...]], float]]:
    """The pairs of ``children`` that part as a split's children at ``t`` (:func:`composition_splits`),
    each with its cosine at ``t``."""
    before_D = unit_rows(W_FSD[p, t - 1][None, None].float())[0, 0]
    rows = {key: unit_rows(composed_rows(W_FSD, terms)[t : t + k][None].float())[0] for key, terms in children.items()}
    parted = []
    for a, b in itertools.combinations(rows, 2):
        ab_K = torch.linalg.vecdot(rows[a], rows[b])
        a_K, b_K = rows[a] @ before_D, rows[b] @ before_D
        ok = (ab_K <= config.apart_cosine) & (ab_K < torch.minimum(a_K, b_K))
        ok &= torch.maximum(a_K, b_K) < config.successor_cosine
        if bool(ok.all()):
            parted.append(((a, b), float(ab_K[0])))
    return parted


__all__ = [
    "CoFiring",
    "Composed",
    "composed_rows",
    "composition_pairs",
    "composition_splits",
    "composition_tables",
    "with_children_rows",
]
