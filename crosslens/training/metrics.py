"""Reconstruction and sparsity metrics of a crosscoder on a batch, per snapshot."""

from __future__ import annotations

import torch
from jaxtyping import Float

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)


@torch.no_grad()
def crosscoder_metrics(
    x: Float[torch.Tensor, "batch n_snapshots d_in"],
    x_hat: Float[torch.Tensor, "batch n_snapshots d_in"],
    feature_acts: Float[torch.Tensor, "batch d_sae"],
) -> dict[str, float]:
    """Reconstruction and sparsity metrics of one batch.

    Per snapshot s: ``explained_variance = 1 - sum_b ||x_hat_s - x_s||^2 /
    sum_b ||x_s - mean_b x_s||^2`` and ``mse = mean_b ||x_hat_s - x_s||^2`` (summed over
    d_in, so the snapshots' MSEs add up to the loss's reconstruction term);
    ``l0`` = mean number of non-zero features per token.
    """
    x = x.float()
    sq_err_BS = (x_hat.float() - x).pow(2).sum(dim=-1)
    var_BS = (x - x.mean(dim=0)).pow(2).sum(dim=-1)
    ev_S = 1 - sq_err_BS.sum(dim=0) / var_BS.sum(dim=0)
    mse_S = sq_err_BS.mean(dim=0)
    out = {
        "metrics/explained_variance": (1 - sq_err_BS.sum() / var_BS.sum()).item(),
        "metrics/l0": (feature_acts != 0).sum(dim=-1).float().mean().item(),
    }
    for s, (ev, mse) in enumerate(zip(ev_S.tolist(), mse_S.tolist())):
        out[f"metrics/explained_variance/snapshot_{s}"] = ev
        out[f"metrics/mse/snapshot_{s}"] = mse
    return out
