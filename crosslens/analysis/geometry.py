"""Geometry of the per-snapshot decoders: direction drift, RelDec, feature dimensionality. Each
measure takes a decoder tensor or a crosscoder (read in the space it was trained in)."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from crosslens.core.progress import progress_bar
from crosslens.core.tensors import one_vs_all_share
from crosslens.crosscoders.folding import training_space_decoder

_EPS = 1e-12


def _check_decoder(W_dec: torch.Tensor | Any) -> torch.Tensor:
    """The decoder ``[d_sae, n_snapshots, d_in]`` of a decoder tensor, or of a crosscoder in the
    normalised space it was trained in (:func:`crosslens.crosscoders.folding.training_space_decoder`),
    so that a measure is the same before and after folding."""
    if not isinstance(W_dec, torch.Tensor):
        if not hasattr(W_dec, "W_dec"):
            raise TypeError(
                f"expected a decoder tensor [d_sae, n_snapshots, d_in] or a crosscoder, got {type(W_dec).__name__}"
            )
        W_dec = training_space_decoder(W_dec)
    if W_dec.ndim != 3:
        raise ValueError(
            f"W_dec has shape {tuple(W_dec.shape)}; expected [d_sae, n_snapshots, d_in] "
            "(the crosscoder parameter layout). Pass crosscoder.W_dec."
        )
    return W_dec.detach().float()


def _unit(x: torch.Tensor, min_norm: float) -> torch.Tensor:
    """Unit vectors along the last dim; rows shorter than ``min_norm`` become NaN."""
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > min_norm, x / norm.clamp_min(_EPS), torch.nan)


def direction_drift(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"] | Any,
    min_norm: float = 0.0,
) -> tuple[Float[torch.Tensor, "d_sae n_snapshots_minus_1"], Float[torch.Tensor, "d_sae n_snapshots"]]:
    """How far each feature's direction moves between snapshots.

    Returns ``(adjacent, to_final)``: ``adjacent[i, s] = cos(W_dec[i, s], W_dec[i, s+1])``
    and ``to_final[i, s] = cos(W_dec[i, s], W_dec[i, -1])``. Pairs involving a decoder row
    with norm ``<= min_norm`` (an absent feature has no direction) are NaN; use
    ``torch.nanmean`` to average.
    """
    unit_FSD = _unit(_check_decoder(W_dec), min_norm)
    adjacent_FS = (unit_FSD[:, :-1] * unit_FSD[:, 1:]).sum(-1)
    to_final_FS = (unit_FSD * unit_FSD[:, -1:]).sum(-1)
    return adjacent_FS, to_final_FS


def rel_dec(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"] | Any,
) -> Float[torch.Tensor, "d_sae n_snapshots"]:
    """One-vs-all relative decoder norm ``||W_dec[i,s]|| / sum_s' ||W_dec[i,s']||``.

    ``W_dec`` is a decoder tensor or a crosscoder; a crosscoder's norms are taken in the
    normalised space it was trained in (:func:`crosslens.crosscoders.folding.training_space_decoder`),
    so RelDec is the same before and after folding and equals
    :func:`crosslens.causal.reldec` of ``crosscoder.decoder_norms()``.
    Rows sum to 1; a feature with all-zero decoders gets the uniform ``1 / n_snapshots``.
    """
    return one_vs_all_share(_check_decoder(W_dec).norm(dim=-1))


def pairwise_rel_dec(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"] | Any,
) -> Float[torch.Tensor, "d_sae n_snapshots n_snapshots"]:
    """Pairwise RelDec ``||W_dec[i,a]|| / (||W_dec[i,a]|| + ||W_dec[i,b]||)``.

    ``out[i, a, b]`` is 1 when the feature lives only at snapshot ``a`` of the pair, 0 when
    only at ``b``, 0.5 when equally at both (and when it has no weight at either).
    """
    norms_FS = _check_decoder(W_dec).norm(dim=-1)
    a_FSS = norms_FS[:, :, None]
    pair_FSS = a_FSS + norms_FS[:, None, :]
    return torch.where(pair_FSS > 0, a_FSS / pair_FSS.clamp_min(_EPS), 0.5)


def feature_dimensionality(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"] | Any,
    chunk_size: int = 4096,
    progress: bool = False,
) -> Float[torch.Tensor, "d_sae n_snapshots"]:
    """Elhage et al.'s feature dimensionality at every snapshot.

    ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` over the decoder rows ``W_j = W_dec[j, s]``
    of one snapshot. The sum includes ``j = i``, so ``0 <= D_i <= 1``: 1 for a feature with
    a dimension to itself, ``1/k`` for ``k`` features sharing one. Features with a zero row
    at that snapshot get 0. Pairs are computed ``chunk_size`` rows at a time, so memory is
    ``chunk_size x d_sae`` per snapshot.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1.")
    W_FSD = _check_decoder(W_dec)
    d_sae, n_snapshots, _ = W_FSD.shape
    dims_FS = torch.zeros(d_sae, n_snapshots, device=W_FSD.device)
    chunks = [(s, start) for s in range(n_snapshots) for start in range(0, d_sae, chunk_size)]
    for s, start in progress_bar(chunks, desc="feature dimensionality", show=progress):
        W_FD = W_FSD[:, s]
        rows_CD = W_FD[start : start + chunk_size]
        norms_C = rows_CD.norm(dim=-1)
        unit_CD = rows_CD / norms_C.clamp_min(_EPS)[:, None]
        interference_C = ((unit_CD @ W_FD.T) ** 2).sum(dim=1)
        dims_FS[start : start + chunk_size, s] = torch.where(
            norms_C > 0, norms_C**2 / interference_C.clamp_min(_EPS), 0.0
        )
    return dims_FS


def total_dimensionality(
    dims: Float[torch.Tensor, "d_sae n_snapshots"],
) -> Float[torch.Tensor, " n_snapshots"]:
    """Sum of feature dimensionalities per snapshot: how many dimensions the features use.

    Ge et al. see it fall, then rise (compress-then-expand) around the onset of feature
    learning; :func:`turning_point` finds the minimum.
    """
    if dims.ndim != 2:
        raise ValueError(f"dims has shape {tuple(dims.shape)}; expected [d_sae, n_snapshots].")
    return dims.sum(dim=0)


def turning_point(total: Float[torch.Tensor, " n_snapshots"]) -> int | None:
    """Snapshot index of the minimum of a compress-then-expand curve, or ``None`` when the
    minimum sits at either end (no turn)."""
    index = int(torch.argmin(total))
    return index if 0 < index < len(total) - 1 else None
