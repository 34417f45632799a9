"""Planted generators that differ in what a real model varies, to test defaults for transfer.

A default tuned on one planted set can be a default tuned to that set's data. Each
generator here changes what :meth:`PlantedConfig.hard` fixes, one way a real model's
activations differ from another's:

- ``zipf``: firing probabilities spread log-uniformly over two decades (0.1% to 10%, a
  Zipf-like frequency spectrum), 64 features, per-feature scales 0.5-2.
- ``correlated``: 12 snapshots, d_in 48, 40 features of which 32 form 16 correlated pairs
  (the second copies the first's firing on 80% of tokens), transients 2-4 snapshots long.
- ``wide``: 5 snapshots, d_in 128 (a lower snapshots x d_in / d_sae ratio for a 128-wide
  dictionary than ``hard`` has), 96 features, per-feature scales 0.3-3 and per-snapshot
  magnitudes 0.4-1.6 (decoder norms that differ by up to 16x), adjacent-snapshot cosine
  0.9, noise 0.05.

Every generator normalises its batches as the activation store does. Build one with
``PlantedConfig.preset(name, seed)``.
"""

from __future__ import annotations

from typing import Any

GENERATORS: dict[str, dict[str, Any]] = {
    "zipf": dict(
        n_snapshots=8, d_in=64, n_features=64, n_initialization=16, n_initialization_fading=8,
        n_transient=16, firing_prob_min=0.001, firing_prob_max=0.1, firing_log_uniform=True,
        coefficient_min=0.7, coefficient_max=1.3, magnitude_min=0.7, magnitude_max=1.3,
        feature_scale_min=0.5, feature_scale_max=2.0, n_correlated_pairs=4, pair_correlation=0.5,
        transient_lengths=(2, 3, 4), adjacent_cosine=0.95, noise_std=0.02, normalize=True,
    ),
    "correlated": dict(
        n_snapshots=12, d_in=48, n_features=40, n_initialization=8, n_initialization_fading=6,
        n_transient=14, firing_prob_min=0.01, firing_prob_max=0.05, coefficient_min=0.7,
        coefficient_max=1.3, magnitude_min=0.6, magnitude_max=1.4, feature_scale_min=0.7,
        feature_scale_max=1.5, n_correlated_pairs=16, pair_correlation=0.8,
        transient_lengths=(2, 3, 4), adjacent_cosine=0.97, noise_std=0.02, normalize=True,
    ),
    "wide": dict(
        n_snapshots=5, d_in=128, n_features=96, n_initialization=30, n_initialization_fading=14,
        n_transient=20, firing_prob_min=0.005, firing_prob_max=0.04, coefficient_min=0.6,
        coefficient_max=1.4, magnitude_min=0.4, magnitude_max=1.6, feature_scale_min=0.3,
        feature_scale_max=3.0, n_correlated_pairs=8, pair_correlation=0.5,
        transient_lengths=(1, 2, 3), adjacent_cosine=0.9, noise_std=0.05, normalize=True,
    ),
}  # fmt: skip
"""Settings of every generator, by name (``PlantedConfig`` fields, all but the seed)."""


def preset_settings(name: str) -> dict[str, Any]:
    """The ``PlantedConfig`` fields of generator ``name``."""
    if name not in GENERATORS:
        raise ValueError(f"unknown planted generator {name!r}; choose one of {['hard', *GENERATORS]}.")
    return dict(GENERATORS[name])


__all__ = ["GENERATORS", "preset_settings"]
