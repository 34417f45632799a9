"""Activation scaling a source applied without saving it, measured again on your tokens.

Kissane's crosscoders (and others trained on his code) read each model's activations scaled to
mean norm sqrt(d_in), ``c_m = sqrt(d_in) / E||x_m||``, with the expectation taken over their own
training tokens, and save no ``c_m``. crosslens's stores and streams measure exactly that statistic
(``ActivationStore.norm_factors``), so the factors are measured again on your tokens and recorded
as the crosscoder's ``activation_norm_factors``. Until then stages that read raw activations refuse
the crosscoder (:func:`crosslens.crosscoders.folding.resolve_norm_factors`), rather than read them
unscaled.
"""

from __future__ import annotations

from typing import Any

import torch

from crosslens.activations.partners import check_recorded_partner
from crosslens.activations.provider import norm_factors_of
from crosslens.activations.store import ActivationStore
from crosslens.core.hooks import crosscoder_hook


def measure_norm_factors(
    crosscoder: Any, source: ActivationStore | torch.Tensor, hook: str | None = None
) -> list[float]:
    """Measure ``c_s = sqrt(d_in) / mean ||x_s||`` on ``source`` (an activation store harvested from
    the crosscoder's models, or raw activations ``[n, n_snapshots, d_in]``), record them as the
    crosscoder's ``activation_norm_factors`` (unfolded) and return them. A store is checked to hold
    the crosscoder's snapshots first (:func:`~crosslens.activations.partners.check_recorded_partner`):
    one of other models, or of the same models in another order, would record factors that belong to
    other activations."""
    if isinstance(source, ActivationStore):
        check_recorded_partner(crosscoder, source, hook, used_by="measure_norm_factors")
        factors_S = source.norm_factors(crosscoder_hook(crosscoder, hook))
    else:
        acts_NSD = torch.as_tensor(source)
        expected = (crosscoder.cfg.n_snapshots, crosscoder.cfg.d_in)
        if acts_NSD.ndim != 3 or tuple(acts_NSD.shape[1:]) != expected:
            raise ValueError(f"activations must be [n, {expected[0]}, {expected[1]}], got {list(acts_NSD.shape)}")
        factors_S = norm_factors_of(acts_NSD.float())
    factors = [float(c) for c in factors_S]
    meta = crosscoder.cfg.metadata
    meta.activation_norm_factors = factors
    meta.activation_norm_factors_folded = False
    meta.activation_norm_factors_unknown = False
    return factors
