"""Planted generators that differ in what a real model varies, to test defaults for transfer.

A default tuned on one planted set can be a default tuned to that set's data. Each
generator here changes what :meth:`PlantedConfig.hard` fixes, one way a real model's
activations differ from another's:

- ``zipf``: firing probabilities spread log-uniformly over 25x (0.4% to 10%, a Zipf-like
  frequency spectrum: as many features fire on 0.4-2% of tokens as on 2-10%, where
  ``hard`` spreads 0.5-5% uniformly).
- ``correlated``: 12 snapshots, d_in 48, 40 features of which 32 form 16 correlated pairs
  (the second copies the first's firing on 80% of tokens), transients 2-4 snapshots long.
- ``wide``: 5 snapshots, d_in 128 (for a 128-wide dictionary, a snapshots x d_in / d_sae
  ratio of 5 where ``hard`` has 4, and twice the width per snapshot), 48 features on
  1.6 per token, per-snapshot magnitudes 0.5-1.5 (decoder norms that change up to 3x
  between snapshots), 1-3 snapshot transients, adjacent-snapshot cosine 0.9, noise 0.03.

Every generator normalises its batches as the activation store does. Build one with
``PlantedConfig.preset(name, seed)``.
"""

from __future__ import annotations

from typing import Any

_SHARED: dict[str, Any] = dict(
    coefficient_min=0.7, coefficient_max=1.3, feature_scale_min=0.7, feature_scale_max=1.4,
    pair_correlation=0.5, noise_std=0.02, normalize=True,
)  # fmt: skip
"""What every generator keeps: coefficients 1 +/- 0.3, per-feature scales 0.7-1.4,
normalised batches."""

GENERATORS: dict[str, dict[str, Any]] = {
    "zipf": dict(
        n_snapshots=8, d_in=64, n_features=48, n_initialization=12, n_initialization_fading=8, n_transient=14,
        firing_prob_min=0.004, firing_prob_max=0.1, firing_log_uniform=True, magnitude_min=0.7,
        magnitude_max=1.3, n_correlated_pairs=4, transient_lengths=(2, 3, 4), adjacent_cosine=0.95,
    ),
    "correlated": dict(
        n_snapshots=12, d_in=48, n_features=40, n_initialization=8, n_initialization_fading=6, n_transient=14,
        firing_prob_min=0.01, firing_prob_max=0.05, magnitude_min=0.6, magnitude_max=1.4, feature_scale_max=1.5,
        n_correlated_pairs=16, pair_correlation=0.8, transient_lengths=(2, 3, 4), adjacent_cosine=0.97,
    ),
    "wide": dict(
        n_snapshots=5, d_in=128, n_features=48, n_initialization=14, n_initialization_fading=8, n_transient=12,
        firing_prob_min=0.01, firing_prob_max=0.06, magnitude_min=0.5, magnitude_max=1.5, n_correlated_pairs=8,
        transient_lengths=(1, 2, 3), adjacent_cosine=0.9, noise_std=0.03,
    ),
}  # fmt: skip
"""What each generator sets on top of the shared settings, by name (``PlantedConfig``
fields, all but the seed)."""


def preset_settings(name: str) -> dict[str, Any]:
    """The ``PlantedConfig`` fields of generator ``name``."""
    if name not in GENERATORS:
        raise ValueError(f"unknown planted generator {name!r}; choose one of {['hard', *GENERATORS]}.")
    return {**_SHARED, **GENERATORS[name]}


__all__ = ["GENERATORS", "preset_settings"]
