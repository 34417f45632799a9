"""Folded normalisation: whether a crosscoder's per-snapshot factors live in its weights.

A crosscoder is trained on activations scaled per snapshot by ``c_s`` (so every snapshot
has mean norm sqrt(d_in)); the factors are recorded in its metadata. Folding multiplies
them into the weights, so the crosscoder then reads the model's raw activations. Every
stage that runs a crosscoder must know which it has; these functions are that one test
(:func:`is_folded`), the factors to apply around an unfolded one
(:func:`resolve_norm_factors`), and the decoder in the space it was trained in whichever
it is (:func:`training_space_decoder`). They read only ``cfg``, ``W_dec`` and the
``folded_norm_factors`` buffer, so any crosscoder-shaped object works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from crosslens.core.metadata import metadata_value

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder


def is_folded(crosscoder: Crosscoder) -> bool:
    """Whether per-snapshot normalisation factors are folded into the crosscoder's weights
    (it then reads raw activations; unfolded, it reads ``store.read(normalize=True)``).

    The one test every stage uses: the metadata flag that folding sets, or a
    ``folded_norm_factors`` buffer that is not all ones (for a crosscoder whose metadata
    was rebuilt without the flag).
    """
    if bool(metadata_value(crosscoder, "activation_norm_factors_folded")):
        return True
    folded_S = getattr(crosscoder, "folded_norm_factors", None)
    return isinstance(folded_S, torch.Tensor) and not bool(torch.all(folded_S == 1))


def folded_factors(crosscoder: Crosscoder) -> torch.Tensor:
    """The per-snapshot factors ``c_s`` in the crosscoder's weights ``[n_snapshots]``: its
    ``folded_norm_factors`` buffer, else (folded by a crosscoder without one) its metadata's
    factors, else ones. A folded crosscoder reads ``x_s / c_s`` where an unfolded one reads the
    normalised ``x_s``, and returns its reconstruction divided by ``c_s``."""
    n_snapshots = crosscoder.cfg.n_snapshots
    folded_S = getattr(crosscoder, "folded_norm_factors", None)
    if isinstance(folded_S, torch.Tensor) and folded_S.numel() == n_snapshots:
        return folded_S.detach().float().flatten()
    recorded = metadata_value(crosscoder, "activation_norm_factors")
    if bool(metadata_value(crosscoder, "activation_norm_factors_folded")) and recorded is not None:
        return torch.as_tensor(recorded, dtype=torch.float32).flatten()
    return torch.ones(n_snapshots)


def training_space_decoder(crosscoder: Crosscoder) -> torch.Tensor:
    """``W_dec [d_sae, n_snapshots, d_in]`` in the normalised space the crosscoder was trained
    in: the stored weights times the folded factors, so folding changes nothing here."""
    W_dec_FSD = crosscoder.W_dec.detach()
    folded_S = getattr(crosscoder, "folded_norm_factors", None)
    if isinstance(folded_S, torch.Tensor) and folded_S.numel() == W_dec_FSD.shape[1]:
        W_dec_FSD = W_dec_FSD * folded_S.detach().to(W_dec_FSD)[None, :, None]
    return W_dec_FSD


def resolve_norm_factors(
    crosscoder: Crosscoder, norm_factors: Sequence[float] | torch.Tensor | None = None
) -> torch.Tensor:
    """Per-snapshot factors ``c_s`` to apply around the crosscoder (ones once folded).

    Explicit ``norm_factors`` win. Otherwise the metadata's ``activation_norm_factors``
    are used unless they are already folded into the weights (:func:`is_folded`).
    """
    n_snapshots = crosscoder.cfg.n_snapshots
    if norm_factors is None:
        recorded = metadata_value(crosscoder, "activation_norm_factors")
        if (
            recorded is None
            and not is_folded(crosscoder)
            and metadata_value(crosscoder, "activation_norm_factors_unknown")
        ):
            # a converted release whose source scaled activations by factors it did not save
            raise ValueError(
                "this crosscoder reads activations scaled by per-snapshot factors its source did not save; measure "
                "them on your tokens first: crosslens.pretrained.measure_norm_factors(crosscoder, store)"
            )
        norm_factors = [1.0] * n_snapshots if is_folded(crosscoder) or recorded is None else recorded
    factors = torch.as_tensor(norm_factors, dtype=torch.float32).flatten()
    if factors.shape != (n_snapshots,) or not bool(torch.all(torch.isfinite(factors) & (factors > 0))):
        raise ValueError(
            f"norm_factors must be {n_snapshots} finite positive numbers (one per snapshot), got {factors.tolist()}"
        )
    return factors
