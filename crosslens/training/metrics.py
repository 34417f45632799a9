"""Reconstruction and sparsity metrics of a crosscoder, per snapshot: on a batch
(:func:`crosscoder_metrics`), and on a store's tokens (:func:`evaluate_crosscoder`)."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from sae_lens.saes.sae import SAE

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.activations import ActivationStore
from crosslens.activations.partners import check_recorded_partner
from crosslens.core.errors import check_store_given
from crosslens.core.metadata import metadata_value
from crosslens.crosscoders.folding import folded_factors


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


EVAL_TOKENS = 8192
"""Held-out tokens the quality table reads by default."""


@torch.no_grad()
def evaluate_crosscoder(
    crosscoder: SAE,
    store: ActivationStore,
    hook: str | None = None,
    *,
    n_tokens: int = EVAL_TOKENS,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Per-snapshot explained variance and MSE, mean L0 and dead features on ``store``'s tokens.

    Use a store harvested from tokens the crosscoder was not trained on. A store that is not the
    crosscoder's partner (other snapshots, hook or width than it records) is refused. The metrics
    are on activations normalised with the store's factors, as in training. A crosscoder with its
    factors folded into its weights is given those activations with its folding undone
    (:func:`~crosslens.crosscoders.folding.folded_factors`), so folding leaves every number as it was.
    """
    check_recorded_partner(crosscoder, store, hook, used_by="evaluate_crosscoder")
    check_store_given(store, "evaluate_crosscoder", needs="read")
    if n_tokens < 1 or batch_size < 1:
        raise ValueError(f"n_tokens={n_tokens}, batch_size={batch_size}: both are at least 1")
    hook = store.resolve_hook(hook or metadata_value(crosscoder, "hook_name"))
    folded_1S1 = folded_factors(crosscoder).to(crosscoder.device)[None, :, None]
    n = min(n_tokens, store.n_tokens)
    fired = None
    xs, xhats, fs = [], [], []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x_BSD = store.read(hook, idx, normalize=True).to(crosscoder.device)
        f_BF = crosscoder.encode(x_BSD / folded_1S1)
        xhat_BSD = crosscoder.decode(f_BF) * folded_1S1
        xs.append(x_BSD)
        xhats.append(xhat_BSD)
        fs.append(f_BF)
        fired = (f_BF != 0).any(0) if fired is None else fired | (f_BF != 0).any(0)
    metrics = crosscoder_metrics(torch.cat(xs), torch.cat(xhats), torch.cat(fs))
    S = store.n_snapshots
    result = {
        "explained_variance": [metrics[f"metrics/explained_variance/snapshot_{s}"] for s in range(S)],
        "mse": [metrics[f"metrics/mse/snapshot_{s}"] for s in range(S)],
        "l0": metrics["metrics/l0"],
        "dead_features": int((~fired).sum().item()) if fired is not None else 0,
        "n_tokens": n,
    }
    return result
