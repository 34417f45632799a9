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

Three more hold the kinds of feature a crosscoder loses first, many of each in one set
(8 snapshots, d_in 64, 48 features, as ``hard``), with weaker and more varied features than
the others (``_WEAK``):

- ``rare``: 16 transients living 1-4 snapshots and firing on 1-4% of tokens each.
- ``cofiring``: 12 correlated pairs (half the features), their partners copying the
  first's firing on 30%, 60% or 90% of tokens.
- ``late``: 18 persistent features born at snapshot 3 or later, firing on 1.5-3.5% of
  tokens.

Four more plant what decoder norms and lineage can misread
(:mod:`crosslens.analysis.planted_events`), each on features present at every snapshot
(the shared settings on a smaller set, ``_SMALL``):

- ``weak-early``: 8 of 24 features present from snapshot 0 at 10-30% of their later
  magnitude, stepping up at snapshot 2, 3, 4 or 5.
- ``split``: 5 pairs of the 24 features share a parent's direction until snapshot 2-5, where each
  child turns away from it (cosine 0.6); the parent's tokens are its children's.
- ``handoff``: 5 of the 24 features fade at snapshot 2-5 as a successor at cosine 0.85 to their
  last direction emerges, firing on tokens of its own.
- ``merge``: the split read backwards: 5 pairs of the 24 features, each on a direction of its own
  (cosine 0.6 with the merged one just before), share one direction from snapshot 2-5 on.

Every generator normalises its batches as the activation store does. Build one with
``PlantedConfig.preset(name, seed)``.
"""

from __future__ import annotations

from typing import Any

from crosslens.analysis.planted_events import PlantedEvents

_SHARED: dict[str, Any] = dict(
    coefficient_min=0.7,
    coefficient_max=1.3,
    feature_scale_min=0.7,
    feature_scale_max=1.4,
    pair_correlation=0.5,
    noise_std=0.02,
    normalize=True,
)
"""What every generator keeps: coefficients 1 +/- 0.3, per-feature scales 0.7-1.4,
normalised batches."""

_WEAK: dict[str, Any] = dict(
    coefficient_min=0.5,
    coefficient_max=1.5,
    feature_scale_min=0.5,
    feature_scale_max=2.0,
    magnitude_min=0.7,
    magnitude_max=1.3,
    adjacent_cosine=0.93,
    noise_std=0.05,
)
"""What ``rare``, ``cofiring`` and ``late`` set on top of the shared settings: weaker and
more varied features than the others', as in ``scripts/planted_independent.py`` (coefficients
1 +/- 0.5, per-feature scales 0.5-2, directions drifting by cosine 0.93 per snapshot, noise
0.05), so that a rare feature is also often a weak one."""

_SMALL: dict[str, Any] = dict(
    n_snapshots=8,
    d_in=32,
    n_features=24,
    n_initialization_fading=3,
    n_transient=4,
    firing_prob_min=0.01,
    firing_prob_max=0.05,
    magnitude_min=0.8,
    magnitude_max=1.2,
    transient_lengths=(2, 3),
)
"""What ``weak-early``, ``split``, ``handoff`` and ``merge`` share: 8 snapshots of 32 dims, 24 features (12 present
throughout, 3 fading, 4 transient, 5 persistent), firing on 1-5% of tokens; half the width and
features of the others, so that a crosscoder of 64 latents trains on them in a quarter of the time
(``scripts/planted_emergence.py``'s ``SMALL_TRAINING``)."""

GENERATORS: dict[str, dict[str, Any]] = {
    "zipf": dict(
        n_snapshots=8,
        d_in=64,
        n_features=48,
        n_initialization=12,
        n_initialization_fading=8,
        n_transient=14,
        firing_prob_min=0.004,
        firing_prob_max=0.1,
        firing_log_uniform=True,
        magnitude_min=0.7,
        magnitude_max=1.3,
        n_correlated_pairs=4,
        transient_lengths=(2, 3, 4),
        adjacent_cosine=0.95,
    ),
    "correlated": dict(
        n_snapshots=12,
        d_in=48,
        n_features=40,
        n_initialization=8,
        n_initialization_fading=6,
        n_transient=14,
        firing_prob_min=0.01,
        firing_prob_max=0.05,
        magnitude_min=0.6,
        magnitude_max=1.4,
        feature_scale_max=1.5,
        n_correlated_pairs=16,
        pair_correlation=0.8,
        transient_lengths=(2, 3, 4),
        adjacent_cosine=0.97,
    ),
    "wide": dict(
        n_snapshots=5,
        d_in=128,
        n_features=48,
        n_initialization=14,
        n_initialization_fading=8,
        n_transient=12,
        firing_prob_min=0.01,
        firing_prob_max=0.06,
        magnitude_min=0.5,
        magnitude_max=1.5,
        n_correlated_pairs=8,
        transient_lengths=(1, 2, 3),
        adjacent_cosine=0.9,
        noise_std=0.03,
    ),
    "rare": dict(
        **_WEAK,
        n_snapshots=8,
        d_in=64,
        n_features=48,
        n_initialization=14,
        n_initialization_fading=6,
        n_transient=16,
        firing_prob_min=0.01,
        firing_prob_max=0.06,
        transient_firing=(0.01, 0.04),
        n_correlated_pairs=4,
        transient_lengths=(1, 2, 3, 4),
    ),
    "cofiring": dict(
        **_WEAK,
        n_snapshots=8,
        d_in=64,
        n_features=48,
        n_initialization=14,
        n_initialization_fading=6,
        n_transient=12,
        firing_prob_min=0.01,
        firing_prob_max=0.05,
        n_correlated_pairs=12,
        pair_correlations=(0.3, 0.6, 0.9),
        transient_lengths=(2, 3, 4),
    ),
    "late": dict(
        **_WEAK,
        n_snapshots=8,
        d_in=64,
        n_features=48,
        n_initialization=14,
        n_initialization_fading=6,
        n_transient=10,
        firing_prob_min=0.01,
        firing_prob_max=0.06,
        persistent_firing=(0.015, 0.035),
        persistent_emergence_min=3,
        n_correlated_pairs=4,
        transient_lengths=(2, 3),
    ),
}
"""What each generator of the recovery grid sets on top of the shared settings, by name
(``PlantedConfig`` fields, all but the seed)."""

EVENT_GENERATORS: dict[str, dict[str, Any]] = {
    "weak-early": dict(
        **_SMALL,
        n_initialization=12,
        events=PlantedEvents(n_weak_early=8),
    ),
    "split": dict(
        **_SMALL,
        n_initialization=12,
        events=PlantedEvents(n_splits=5),
    ),
    "handoff": dict(
        **_SMALL,
        n_initialization=12,
        events=PlantedEvents(n_handoffs=5),
    ),
    "merge": dict(
        **_SMALL,
        n_initialization=12,
        events=PlantedEvents(n_merges=5),
    ),
}
"""The generators that plant what decoder norms and lineage can misread, as :data:`GENERATORS`
(their scores are the emergence check's, ``scripts/planted_emergence.py``, not the recovery
grid's: a weak-early feature is one whose decoder-norm date may be wrong by design)."""


def preset_settings(name: str) -> dict[str, Any]:
    """The ``PlantedConfig`` fields of generator ``name``."""
    named = {**GENERATORS, **EVENT_GENERATORS}
    if name not in named:
        raise ValueError(f"unknown planted generator {name!r}; choose one of {['hard', *named]}.")
    return {**_SHARED, **named[name]}


__all__ = ["EVENT_GENERATORS", "GENERATORS", "preset_settings"]
