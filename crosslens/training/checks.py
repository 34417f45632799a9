"""Sanity checks on what the trainer is fed.

Every default in :mod:`crosslens.training.runner` (sparsity coefficients, learning rate,
decoder initialisation at norm 0.08) assumes each snapshot's activations were scaled to
mean norm ``sqrt(d_in)``, as the activation store does. On raw activations the same
defaults mis-train silently: on the planted benchmark (``crosslens.analysis.synthetic``), a ReLU
crosscoder fed raw batches loses many of the features it recovers from normalised ones
(benchmarks/README.md, "Planted features recovered"). :func:`check_activation_scale` looks at a
batch and says so.
"""

from __future__ import annotations

import math
import warnings

import torch
from jaxtyping import Float

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

ACTIVATION_SCALE_CHECKS = ("warn", "error", "off")

SCALE_TOLERANCE = 2.0
"""A snapshot's mean norm may differ from sqrt(d_in) by up to this factor either way. A
normalised store's batches sit close to 1; raw residual streams are off by far more, and more
as training goes on."""


class UnnormalizedActivationsWarning(UserWarning):
    """The batch's per-snapshot norms are far from ``sqrt(d_in)``."""


def check_activation_scale(x_BSD: Float[torch.Tensor, "batch n_snapshots d_in"], mode: str = "warn") -> list[float]:
    """Ratio of each snapshot's mean activation norm to ``sqrt(d_in)``; warns (``mode="warn"``)
    or raises ``ValueError`` (``"error"``) when any ratio is outside
    ``[1 / SCALE_TOLERANCE, SCALE_TOLERANCE]``. ``"off"`` checks nothing and returns []."""
    if mode not in ACTIVATION_SCALE_CHECKS:
        raise ValueError(f"mode={mode!r}: choose one of {ACTIVATION_SCALE_CHECKS}.")
    if mode == "off" or x_BSD.ndim != 3 or x_BSD.shape[0] == 0:
        return []
    with torch.no_grad():
        ratio_S = x_BSD.detach().float().norm(dim=-1).mean(dim=0) / math.sqrt(x_BSD.shape[-1])
    ratios = [float(r) for r in ratio_S.cpu()]
    bad = [s for s, r in enumerate(ratios) if not 1 / SCALE_TOLERANCE <= r <= SCALE_TOLERANCE]
    if bad:
        shown = ", ".join(f"{r:.3g}" for r in ratios)
        message = (
            f"the batch's mean activation norm divided by sqrt(d_in) is [{shown}] per snapshot "
            f"(snapshots {bad} are off by more than {SCALE_TOLERANCE:g}x); crosscoder defaults "
            "assume every snapshot normalised to mean norm sqrt(d_in). Read batches with "
            "ActivationProvider(store, hook, normalize=True) or store.read(hook, idx, "
            "normalize=True) (what `crosslens train` does), or multiply snapshot s by "
            "store.norm_factors(hook)[s]; set CrosscoderTrainerConfig(activation_scale_check="
            "'off') if the scale is intended."
        )
        if mode == "error":
            raise ValueError(message)
        warnings.warn(message, UnnormalizedActivationsWarning, stacklevel=3)
    return ratios
