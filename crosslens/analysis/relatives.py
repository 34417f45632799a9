"""Relatives: each crosscoder latent's nearest latents at each snapshot by decoder cosine, what
lineage (:mod:`crosslens.analysis.lineage_events`) reads its pairs from and the browser links.

:func:`nearest_relatives` is one matmul per snapshot and chunk of latents, then top-k;
:func:`per_latent_relatives` is the same latent by latent, what it is checked and timed against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float

_EPS = 1e-12


def unit_rows(W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"]) -> torch.Tensor:
    """Every decoder row scaled to unit norm (zero rows stay zero)."""
    W_FSD = W_dec_FSD.detach().float()
    return W_FSD / W_FSD.norm(dim=-1, keepdim=True).clamp_min(_EPS)


@torch.no_grad()
def nearest_relatives(
    unit_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    present_FS: torch.Tensor,
    k: int,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each latent's ``k`` nearest other latents at each snapshot where it is present, among
    the latents present there, by decoder cosine: one matmul per snapshot and chunk."""
    F, S, _ = unit_FSD.shape
    k = min(k, max(1, F - 1))
    index_FSK = torch.full((F, S, k), -1, dtype=torch.long)
    cosine_FSK = torch.zeros(F, S, k)
    present_FS = present_FS.to(unit_FSD.device)
    for s in range(S):
        U_FD = unit_FSD[:, s]
        for start in range(0, F, chunk_size):
            stop = min(F, start + chunk_size)
            C_CF = U_FD[start:stop] @ U_FD.T
            C_CF = C_CF.masked_fill(~present_FS[None, :, s], -torch.inf)
            C_CF[torch.arange(stop - start), torch.arange(start, stop)] = -torch.inf
            top = C_CF.topk(k, dim=1)
            valid_CK = torch.isfinite(top.values) & present_FS[start:stop, s, None]
            index_FSK[start:stop, s] = torch.where(valid_CK, top.indices, -1).cpu()
            cosine_FSK[start:stop, s] = torch.where(valid_CK, top.values, 0.0).cpu()
    return index_FSK, cosine_FSK


def per_latent_relatives(
    unit_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    present_FS: torch.Tensor,
    k: int,
    latents: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_relatives` latent by latent (a loop over latents; what it is checked against),
    for ``latents`` (default all; the others' rows stay -1)."""
    F, S, _ = unit_FSD.shape
    k = min(k, max(1, F - 1))
    index_FSK = torch.full((F, S, k), -1, dtype=torch.long)
    cosine_FSK = torch.zeros(F, S, k)
    for j in range(F) if latents is None else latents:
        for s in range(S):
            if not present_FS[j, s]:
                continue
            cos_F = unit_FSD[:, s] @ unit_FSD[j, s]
            cos_F = cos_F.masked_fill(~present_FS[:, s], -torch.inf)
            cos_F[j] = -torch.inf
            top = cos_F.topk(k)
            valid = torch.isfinite(top.values)
            index_FSK[j, s] = torch.where(valid, top.indices, -1)
            cosine_FSK[j, s] = torch.where(valid, top.values, 0.0)
    return index_FSK, cosine_FSK


__all__ = ["nearest_relatives", "per_latent_relatives", "unit_rows"]
