"""How much of other planted features a learned latent's decoder carries.

A latent that stands for planted feature ``i`` can also write part of another feature ``p``
that fires on many of the same tokens (feature absorption). Some sparsity terms pay for
that: an L1 term on ``f * ||d||`` charges ``||d_i + a d_p||`` for a merged row where two
latents cost ``||d_i|| + a ||d_p||``, and a fixed k saves a slot on every token the two
share. The latent's direction then misses ``i``'s by that share, which is what
:func:`~crosslens.analysis.planted_match.match_planted`'s cosine bar reads as a miss.

The measure: fit latent ``j``'s decoder (its snapshots' rows concatenated, norms kept) by
least squares on every planted feature's decoder, then divide the norm of the part given
to features other than ``i`` by the norm of the part given to ``i``. 0 is a clean latent;
0.5 means it writes other features at half the strength of its own (a decoder cosine of
about 0.89 with ``i`` where the planted directions are near-orthogonal, as the generators
draw them).
"""

from __future__ import annotations

import torch
from jaxtyping import Float

ABSORBING_SHARE = 0.2
"""A matched latent whose decoder carries other planted features at this share of its own
feature or more counts as absorbing (its cosine with its feature is then about 0.98 or less)."""


def absorbed_shares(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    truth: Float[torch.Tensor, "n_features n_snapshots d_in"],
    pairs: list[tuple[int, int]],
) -> list[float]:
    """For each ``(learned j, planted i)`` pair, the norm of the part of ``W_dec[j]``
    that least squares on all of ``truth`` assigns to features other than ``i``, over the
    norm of the part it assigns to ``i`` (``inf`` when none goes to ``i``)."""
    if not pairs:
        return []
    truth_PX = truth.detach().double().flatten(1)
    learned = [j for j, _ in pairs]
    latents_XJ = W_dec.detach().double()[learned].flatten(1).T
    coef_PJ = torch.linalg.lstsq(truth_PX.T, latents_XJ, driver="gelsd").solution
    shares = []
    for col, (_, i) in enumerate(pairs):
        own_X = coef_PJ[i, col] * truth_PX[i]
        other_X = coef_PJ[:, col] @ truth_PX - own_X
        own = float(own_X.norm())
        shares.append(float(other_X.norm()) / own if own > 0 else float("inf"))
    return shares


__all__ = ["ABSORBING_SHARE", "absorbed_shares"]
