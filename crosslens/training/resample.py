"""Resampling of silent latents: a second chance for the width a dictionary leaves unused.

Why. Early in training several latents learn the same strong feature. In a JumpReLU
crosscoder the losers' pre-activations slide under their thresholds, their gates shut, and a
shut gate passes no gradient, so they stay silent for the rest of the run. The features
that no latent has taken by then are the weak ones (rare, short-lived, born late), whose
gradient never reaches a shut latent. Resampling (after Bricken et al. 2023,
*Towards Monosemanticity*) points the silent latents at what the dictionary reconstructs
worst, a few times during training.

What one resampling does, at a step of :func:`resample_steps`:

1. The *silent* latents are those that fired, since the previous resampling (or the start),
   on less than ``below_share`` of the dictionary's mean firing rate (L0 / d_sae).
2. Each gets one token of the step's batch, drawn without replacement with probability
   proportional to its squared reconstruction error (summed over snapshots).
3. Its decoder row becomes that token's residual ``x - x_hat`` at every snapshot, scaled to
   the median decoder norm of the other latents, and its encoder column the same direction
   at their median encoder norm: a late feature's residual lies at late snapshots only, so
   the new row starts with the feature's own timeline.
4. Its encoder bias puts its pre-activation ``h + b`` at or above zero on the others' median
   firing rate's share of the batch, and below zero on the rest. Its gate opens on fewer of
   those tokens: not on the last of them, where ``h + b`` is 0, and, JumpReLU's gate being
   ``(h + b) ||W_dec[i, s]|| > t`` at some snapshot with ``t`` back at its initial value (5.),
   not where ``h + b`` is under ``t / ||W_dec[i, s]||`` at every snapshot. So it starts at most
   at the median rate: a latent that fired on half of all tokens when resampled would be shut
   again at once by the sparsity penalty, whose quadratic term grows with the firing rate.
5. Its own training state goes back to its initial value (JumpReLU's threshold), and Adam's
   moments for its rows are cleared.

Everything is a function of the batch, the weights and the window's counts, with the token
draw seeded by the run's seed and the step, so a resumed run resamples the same latents the
same way. On a ``(data, snapshot)`` mesh every rank draws the same tokens (the errors are
summed over snapshot blocks and gathered over data ranks first) and writes its own block of
snapshots.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

RESAMPLE_SEED_OFFSET = 0x5EED
"""Mixed into the run's seed for the token draws, apart from every other generator of a run."""


def resample_steps(total_steps: int, times: int) -> tuple[int, ...]:
    """The steps after which latents are resampled: ``times`` of them, evenly spaced through the
    first two thirds of training (3000 steps, 4 times: 500, 1000, 1500, 2000). The last third,
    which holds the learning rate's decay, is left for the resampled latents to settle."""
    if times < 0:
        raise ValueError(f"resample_dead must be >= 0, got {times}.")
    return tuple(sorted({total_steps * j // (times + 2) for j in range(1, times + 1)} - {0}))


def silent_latents(
    counts_F: Int[torch.Tensor, " d_sae"], n_tokens: int, below_share: float
) -> Bool[torch.Tensor, " d_sae"]:
    """Latents that fired on fewer than ``below_share`` times the mean latent's count of the
    ``n_tokens`` tokens that ``counts_F`` was counted over."""
    if n_tokens <= 0:
        return torch.zeros_like(counts_F, dtype=torch.bool)
    rate_F = counts_F.double() / n_tokens
    return rate_F < below_share * rate_F.mean()


def token_draw_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator a resampling at ``step`` of a run seeded ``seed`` draws its tokens with."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) ^ RESAMPLE_SEED_OFFSET)


@torch.no_grad()
def resample_latents(
    sae: Any,
    x_NSD: Float[torch.Tensor, "n n_snapshots d_in"],
    silent_F: Bool[torch.Tensor, " d_sae"],
    rate_F: Float[torch.Tensor, " d_sae"],
    generator: torch.Generator,
    *,
    data_rank: int = 0,
) -> Int[torch.Tensor, " n_resampled"]:
    """Re-initialise the ``silent_F`` latents of ``sae`` from the residuals of ``x_NSD`` (this
    rank's block of the step's batch) as the module docstring says; ``rate_F`` is every
    latent's firing rate over the window. Returns the resampled latents' indices (the same on
    every rank; fewer than the silent ones where the batch has fewer tokens with an error).
    The caller clears their optimizer state (:func:`clear_adam_rows`)."""
    collectives = sae.collectives
    idx_L = silent_F.nonzero().flatten()
    live_F = ~silent_F
    if len(idx_L) == 0 or not bool(live_F.any()):
        return idx_L[:0]
    x_NSD = x_NSD.to(sae.W_dec.dtype)
    residual_NSD = (
        x_NSD - sae.training_pass(x_NSD).recon_NSD
    )  # the pass training reconstructs with, a mesh rank's block
    err_N = collectives.snapshot_sum(residual_NSD.pow(2).sum(dim=(1, 2)))
    all_err_N = collectives.data_gather(err_N).double().cpu()
    n_pick = min(len(idx_L), int((all_err_N > 0).sum()))
    if n_pick == 0:
        return idx_L[:0]
    picks_L = torch.multinomial(all_err_N, n_pick, replacement=False, generator=generator)
    idx_L = idx_L[:n_pick]
    # the picked tokens' residuals at this rank's snapshots, from whichever data rank holds them
    n_local = x_NSD.shape[0]
    local_L = (picks_L >= data_rank * n_local) & (picks_L < (data_rank + 1) * n_local)
    picked_LSD = residual_NSD.new_zeros(n_pick, *residual_NSD.shape[1:])
    picked_LSD[local_L.to(picked_LSD.device)] = residual_NSD[(picks_L[local_L] - data_rank * n_local).to(x_NSD.device)]
    picked_LSD = collectives.data_sum(picked_LSD)
    norm_L = collectives.snapshot_sum(picked_LSD.pow(2).sum(dim=(1, 2))).sqrt()
    direction_LSD = picked_LSD / norm_L.clamp_min(torch.finfo(norm_L.dtype).tiny)[:, None, None]
    dec_norm = collectives.snapshot_sum(sae.W_dec.pow(2).sum(dim=(1, 2))).sqrt()[live_F].median()
    enc_norm = collectives.snapshot_sum(sae.W_enc.pow(2).sum(dim=(0, 1))).sqrt()[live_F].median()
    idx_dev = idx_L.to(sae.W_dec.device)
    sae.W_dec[idx_dev] = direction_LSD * dec_norm
    sae.W_enc[:, :, idx_dev] = (direction_LSD * enc_norm).permute(1, 2, 0).to(sae.W_enc.dtype)
    sae.b_enc[idx_dev] = 0
    h_NL = collectives.data_gather(sae.hidden_pre(x_NSD)[:, idx_dev].float())
    # h + b >= 0 on n_firing tokens; the gate, strict and above a threshold, opens on fewer
    n_firing = max(1, round(float(rate_F[live_F].median()) * h_NL.shape[0]))
    sae.b_enc[idx_dev] = -h_NL.topk(n_firing, dim=0).values[-1].to(sae.b_enc.dtype)
    sae.reset_latent_state(idx_dev)
    return idx_L


def clear_adam_rows(
    optimizer: torch.optim.Optimizer, rows: list[tuple[torch.Tensor, int]], idx_L: torch.Tensor
) -> None:
    """Zero, for each ``(parameter, latent axis)`` of ``rows``, the slices ``idx_L`` of every
    optimizer state tensor shaped like the parameter (Adam's two moments, in whichever dtype)."""
    for param, axis in rows:
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value.index_fill_(axis, idx_L.to(value.device), 0)
