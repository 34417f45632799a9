"""Planted multi-snapshot data: activations whose feature timeline is known exactly.

Each true feature ``i`` has a unit direction per snapshot ``d[i, s]`` (drifting a little
between snapshots), a magnitude per snapshot ``m[i, s]`` (zero where the feature does not
exist yet or any more) and a firing probability. A token "has" a feature at every snapshot
with the same coefficient, as a token's meaning does not depend on the checkpoint, so the
activation of snapshot ``s`` is ``sum_i c_i m[i, s] d[i, s] + noise``.

A crosscoder trained on these batches should find one latent per true feature whose
decoder norm is ~0 exactly where ``m[i, s] = 0``; :mod:`crosslens.analysis.planted_match` checks
that, which is how the analysis is validated.

:meth:`PlantedConfig.hard` is a harder set: 8 snapshots, d_in 64, 48
features firing on 0.5-5% of tokens, per-feature scales 0.5-2 and per-snapshot scale
changes 0.6-1.4, correlated pairs, short transients, batches normalised like an
activation store's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int

from crosslens.analysis.evolution import NO_STEP
from crosslens.analysis.planted_draws import (
    class_firing,
    drift,
    firing_probabilities,
    plant_schedules,
    spread_directions,
)
from crosslens.analysis.planted_events import EventTruth, PlantedEvents, plant_events


@dataclass(frozen=True)
class PlantedConfig:
    """Shape of a planted multi-snapshot data set. Feature counts per schedule must add up
    to at most ``n_features``; the remaining features are ``persistent``."""

    n_snapshots: int = 6
    """Number of snapshots S."""
    d_in: int = 32
    """Width of each snapshot's activations."""
    n_features: int = 32
    """Number of true features."""
    n_initialization: int = 8
    """Features present from snapshot 0 to the end."""
    n_initialization_fading: int = 2
    """Features present from snapshot 0 that fade later (class ``initialization``, with a
    fade step)."""
    n_transient: int = 8
    """Features that emerge after snapshot 0 and fade before the last snapshot."""
    firing_prob_min: float = 0.03
    """Smallest per-token firing probability (drawn uniformly per feature)."""
    firing_prob_max: float = 0.1
    """Largest per-token firing probability."""
    firing_log_uniform: bool = False
    """Draw firing probabilities log-uniformly in [firing_prob_min, firing_prob_max]
    (a Zipf-like spread where rare features are as common as frequent ones) instead of
    uniformly; the same random draw, so no other quantity changes."""
    coefficient_min: float = 0.5
    """Per-token coefficients ``c_i`` are uniform in [coefficient_min, coefficient_max]."""
    coefficient_max: float = 1.5
    """See ``coefficient_min``."""
    magnitude_min: float = 0.8
    """Magnitudes ``m[i, s]`` where a feature is present are uniform in
    [magnitude_min, magnitude_max]: step functions in time, so the planted emergence snapshot
    is unambiguous."""
    magnitude_max: float = 1.2
    """See ``magnitude_min``."""
    adjacent_cosine: float = 0.95
    """Cosine between a feature's directions at adjacent snapshots (direction drift)."""
    noise_std: float = 0.02
    """Standard deviation of isotropic Gaussian noise added to every activation entry."""
    steps: tuple[int, ...] | None = None
    """Training step attached to each snapshot; default ``0, 1, 2, 4, ...`` (log-spaced)."""
    seed: int = 0
    """Seed for directions, schedules, magnitudes and firing probabilities."""
    feature_scale_min: float = 1.0
    """Each feature's magnitudes are multiplied by its own scale, log-uniform in
    [feature_scale_min, feature_scale_max] (1, 1: no per-feature scale)."""
    feature_scale_max: float = 1.0
    """See ``feature_scale_min``."""
    n_correlated_pairs: int = 0
    """Pairs of features (a, b) whose firing is correlated: b fires exactly when a does on
    a ``pair_correlation`` share of tokens and independently otherwise. Both share a's
    firing probability, so each keeps its marginal rate."""
    pair_correlation: float = 0.5
    """Share of tokens on which the second feature of a pair copies the first one's firing."""
    transient_lengths: tuple[int, ...] | None = None
    """Allowed numbers of snapshots a transient feature is present for; None: any window."""
    normalize: bool = False
    """Scale every snapshot so its mean activation norm is sqrt(d_in), as the activation
    store does (factors measured on a fixed sample, folded into the planted decoder)."""
    pair_correlations: tuple[float, ...] | None = None
    """Per-pair shares of copied firing, cycled over the pairs (pair k gets entry
    k mod length), so one set holds pairs at several strengths; None: every pair at
    ``pair_correlation``."""
    transient_firing: tuple[float, float] | None = None
    """Firing probability range (uniform) of the transient features, which then need not
    fire like the rest; None: the common draw."""
    persistent_firing: tuple[float, float] | None = None
    """The same for the persistent features (emerging after snapshot 0, never fading)."""
    persistent_emergence_min: int = 1
    """Earliest snapshot a persistent feature emerges at; their emergences cycle over
    [persistent_emergence_min, n_snapshots - 1] (late births when raised)."""
    events: PlantedEvents | None = None
    """Weak early presence, splits and handoffs planted on the features present throughout
    (:mod:`crosslens.analysis.planted_events`); None: none."""

    def __post_init__(self) -> None:
        if self.n_snapshots < 2:
            raise ValueError(f"n_snapshots={self.n_snapshots}: a planted evolution needs 2 snapshots or more.")
        if self.n_snapshots < 3 and self.n_transient:
            raise ValueError(
                f"n_snapshots={self.n_snapshots}: transient features need at least 3 snapshots "
                "(absent, present, faded); use n_snapshots >= 3, or n_transient=0 (two models)."
            )
        if self.d_in < 1 or self.n_features < 1:
            raise ValueError(
                f"d_in={self.d_in}, n_features={self.n_features}: plant 1 feature or more in 1 dimension or more."
            )
        scheduled = self.n_initialization + self.n_initialization_fading + self.n_transient
        if min(self.n_initialization, self.n_initialization_fading, self.n_transient) < 0:
            raise ValueError("feature counts per schedule must be >= 0.")
        if scheduled > self.n_features:
            raise ValueError(
                f"n_initialization + n_initialization_fading + n_transient = {scheduled} exceeds "
                f"n_features={self.n_features}; raise n_features or plant fewer of each kind."
            )
        if not 0.0 < self.firing_prob_min < self.firing_prob_max <= 1.0:
            raise ValueError("need 0 < firing_prob_min < firing_prob_max <= 1.")
        if not 0.0 < self.coefficient_min <= self.coefficient_max:
            raise ValueError("need 0 < coefficient_min <= coefficient_max.")
        if not 0.0 < self.magnitude_min <= self.magnitude_max:
            raise ValueError("need 0 < magnitude_min <= magnitude_max.")
        if not -1.0 <= self.adjacent_cosine <= 1.0:
            raise ValueError(f"adjacent_cosine={self.adjacent_cosine} is a cosine; use a value in [-1, 1].")
        if self.noise_std < 0:
            raise ValueError(f"noise_std={self.noise_std} must be >= 0.")
        if self.steps is not None and len(self.steps) != self.n_snapshots:
            raise ValueError(
                f"steps has {len(self.steps)} entries for n_snapshots={self.n_snapshots}; "
                "give one step per snapshot or leave steps=None."
            )
        if not 0.0 < self.feature_scale_min <= self.feature_scale_max:
            raise ValueError("need 0 < feature_scale_min <= feature_scale_max.")
        if self.n_correlated_pairs < 0 or 2 * self.n_correlated_pairs > self.n_features:
            raise ValueError(
                f"n_correlated_pairs={self.n_correlated_pairs} needs 2 features each out of "
                f"n_features={self.n_features}; use 0 <= n_correlated_pairs <= n_features // 2."
            )
        for share in (self.pair_correlation, *(self.pair_correlations or ())):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"pair correlation {share} is a share of tokens; use [0, 1].")
        if self.pair_correlations is not None and not self.pair_correlations:
            raise ValueError("pair_correlations is empty; give at least one share or None.")
        for name in ("transient_firing", "persistent_firing"):
            span = getattr(self, name)
            if span is not None and not (len(span) == 2 and 0.0 < span[0] <= span[1] <= 1.0):
                raise ValueError(f"{name}={span}: give (low, high) with 0 < low <= high <= 1, or None.")
        if not 1 <= self.persistent_emergence_min <= self.n_snapshots - 1:
            raise ValueError(
                f"persistent_emergence_min={self.persistent_emergence_min}: a persistent feature emerges "
                f"after snapshot 0 and by the last, so use [1, n_snapshots - 1={self.n_snapshots - 1}]."
            )
        if self.transient_lengths is not None:
            if not self.transient_lengths or not all(1 <= n <= self.n_snapshots - 2 for n in self.transient_lengths):
                raise ValueError(
                    f"transient_lengths={self.transient_lengths}: a transient feature is absent at "
                    f"the first and last snapshot, so each length must be in [1, n_snapshots - 2="
                    f"{self.n_snapshots - 2}]."
                )

    @classmethod
    def preset(cls, name: str, seed: int = 0, **overrides: Any) -> PlantedConfig:
        """A named planted set (``"hard"``, one of
        :data:`crosslens.analysis.planted_generators.GENERATORS` or of its ``EVENT_GENERATORS``),
        with ``overrides``."""
        from crosslens.analysis.planted_generators import preset_settings

        if name == "hard":
            return cls.hard(seed, **overrides)
        return cls(**{**preset_settings(name), "seed": seed, **overrides})

    @classmethod
    def hard(cls, seed: int = 0, **overrides: Any) -> PlantedConfig:
        """A harder planted set: 8 snapshots, d_in 64, 48 features (12
        present throughout, 8 fading after snapshot j, 14 absent until snapshot k, 14
        transient for 2-3 snapshots), firing probabilities 0.5-5%, coefficients 1 +/- 0.3,
        per-feature scales 0.5-2, per-snapshot scale changes 0.6-1.4, 6 correlated pairs,
        adjacent-snapshot cosine 0.95, noise 0.02, normalised batches."""
        settings: dict[str, Any] = dict(
            n_snapshots=8,
            d_in=64,
            n_features=48,
            n_initialization=12,
            n_initialization_fading=8,
            n_transient=14,
            firing_prob_min=0.005,
            firing_prob_max=0.05,
            coefficient_min=0.7,
            coefficient_max=1.3,
            magnitude_min=0.6,
            magnitude_max=1.4,
            feature_scale_min=0.5,
            feature_scale_max=2.0,
            n_correlated_pairs=6,
            pair_correlation=0.5,
            transient_lengths=(2, 3),
            adjacent_cosine=0.95,
            noise_std=0.02,
            normalize=True,
            seed=seed,
        )
        settings.update(overrides)
        return cls(**settings)


@dataclass
class PlantedEvolution:
    """A planted data set: ground-truth timeline plus a sampler. Build with :meth:`build`."""

    config: PlantedConfig
    """The configuration it was built from."""
    directions: Float[torch.Tensor, "n_features n_snapshots d_in"]
    """Unit direction of every true feature at every snapshot."""
    magnitudes: Float[torch.Tensor, "n_features n_snapshots"]
    """Scale of each feature at each snapshot; 0 where it is absent."""
    firing_probs: Float[torch.Tensor, " n_features"]
    """Per-token firing probability of each feature."""
    emergence: Int[torch.Tensor, " n_features"]
    """Planted emergence snapshot (0 = from initialization)."""
    fade: Int[torch.Tensor, " n_features"]
    """Planted fade snapshot, ``NO_STEP`` when the feature never fades."""
    steps: list[int] = field(default_factory=list)
    """Training step of each snapshot."""
    pairs: list[tuple[int, int]] = field(default_factory=list)
    """Correlated pairs (a, b): b copies a's firing on its share of tokens (:attr:`pair_shares`)."""
    norm_factors: Float[torch.Tensor, " n_snapshots"] | None = None
    """Per-snapshot factor applied to activations and noise (None: 1, no normalisation)."""
    event_truth: EventTruth | None = None
    """Where the planted events are (None: the config plants none)."""

    @classmethod
    def build(cls, config: PlantedConfig | None = None) -> PlantedEvolution:
        config = config or PlantedConfig()
        gen = torch.Generator().manual_seed(config.seed)
        n_feat, n_snap = config.n_features, config.n_snapshots
        emergence, fade = plant_schedules(config, gen)

        start_FD = spread_directions(n_feat, config.d_in, gen)
        directions_FSD = drift(start_FD, n_snap, config.adjacent_cosine, gen)

        snapshot_1S = torch.arange(n_snap)[None, :]
        present_FS = (snapshot_1S >= emergence[:, None]) & ((fade[:, None] == NO_STEP) | (snapshot_1S < fade[:, None]))
        scale_FS = config.magnitude_min + (config.magnitude_max - config.magnitude_min) * torch.rand(
            n_feat, n_snap, generator=gen
        )
        firing = firing_probabilities(config, torch.rand(n_feat, generator=gen))
        steps = list(config.steps) if config.steps is not None else [0] + [2**k for k in range(n_snap - 1)]
        # The optional draws come after the base ones above, so a config that leaves an
        # option off draws the same set as one that never had it.
        if config.feature_scale_max > config.feature_scale_min:
            log_lo, log_hi = math.log(config.feature_scale_min), math.log(config.feature_scale_max)
            feature_scale_F = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n_feat, generator=gen))
            scale_FS = scale_FS * feature_scale_F[:, None]
        pairs: list[tuple[int, int]] = []
        if config.n_correlated_pairs:
            order = torch.randperm(n_feat, generator=gen).tolist()
            pairs = [(order[2 * k], order[2 * k + 1]) for k in range(config.n_correlated_pairs)]
        if config.transient_firing is not None or config.persistent_firing is not None:
            firing = class_firing(config, emergence, fade, firing, gen)
        for a, b in pairs:
            firing[b] = firing[a]
        planted = cls(
            config=config,
            directions=directions_FSD,
            magnitudes=scale_FS * present_FS,
            firing_probs=firing,
            emergence=emergence,
            fade=fade,
            steps=steps,
            pairs=pairs,
        )
        if config.events is not None:
            planted.event_truth = plant_events(planted, config.events, gen)
        if config.normalize:
            # Measured on a sample from a generator of its own, so sampling later is unaffected.
            acts_NSD, _ = planted.sample(20_000, torch.Generator().manual_seed(config.seed + 7919))
            planted.norm_factors = math.sqrt(config.d_in) / acts_NSD.norm(dim=-1).mean(dim=0)
        return planted

    # -- ground truth ----------------------------------------------------------
    @property
    def present(self) -> torch.Tensor:
        """Boolean ``[n_features, n_snapshots]``: where each feature exists."""
        return self.magnitudes > 0

    @property
    def mean_l0(self) -> float:
        """Expected planted features firing per token: the sum of their firing probabilities,
        the second feature of a correlated pair taking the first one's firing on the copied
        share of tokens."""
        probs_F = self.firing_probs.double().clone()
        for (first, second), share in zip(self.pairs, self.pair_shares.tolist()):
            probs_F[second] = share * probs_F[first] + (1 - share) * probs_F[second]
        return float(probs_F.sum())

    @property
    def pair_shares(self) -> Float[torch.Tensor, " n_pairs"]:
        """Share of tokens on which each pair's second feature copies the first's firing."""
        shares = self.config.pair_correlations or (self.config.pair_correlation,)
        return torch.tensor([shares[k % len(shares)] for k in range(len(self.pairs))])

    @property
    def classes(self) -> list[str]:
        """Planted class per feature, with the same definitions as the analysis."""
        out = []
        for e, f in zip(self.emergence.tolist(), self.fade.tolist()):
            out.append("initialization" if e == 0 else ("persistent" if f == NO_STEP else "transient"))
        return out

    @property
    def decoder(self) -> Float[torch.Tensor, "n_features n_snapshots d_in"]:
        """The ideal crosscoder decoder: direction times magnitude at every snapshot (times
        the snapshot's normalisation factor when the config normalises)."""
        decoder_FSD = self.directions * self.magnitudes[..., None]
        if self.norm_factors is not None:
            decoder_FSD = decoder_FSD * self.norm_factors[None, :, None]
        return decoder_FSD

    # -- sampling ------------------------------------------------------------------
    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Float[torch.Tensor, "n n_snapshots d_in"], Float[torch.Tensor, "n n_features"]]:
        """``n`` tokens: activations at every snapshot and the true feature coefficients."""
        if n < 0:
            raise ValueError(f"n={n}: sample 0 tokens or more")
        cfg = self.config
        fires_NF = torch.rand(n, cfg.n_features, generator=generator) < self.firing_probs
        coeff_NF = cfg.coefficient_min + (cfg.coefficient_max - cfg.coefficient_min) * torch.rand(
            n, cfg.n_features, generator=generator
        )
        if self.pairs:
            copy_NP = torch.rand(n, len(self.pairs), generator=generator) < self.pair_shares
            first = [a for a, _ in self.pairs]
            second = [b for _, b in self.pairs]
            fires_NF[:, second] = torch.where(copy_NP, fires_NF[:, first], fires_NF[:, second])
        coeff_NF = coeff_NF * fires_NF
        acts_NSD = torch.einsum("nf,fsd->nsd", coeff_NF, self.decoder)
        if cfg.noise_std > 0:
            noise_NSD = cfg.noise_std * torch.randn(acts_NSD.shape, generator=generator)
            if self.norm_factors is not None:
                noise_NSD = noise_NSD * self.norm_factors[None, :, None]
            acts_NSD = acts_NSD + noise_NSD
        return acts_NSD, coeff_NF

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[Float[torch.Tensor, "batch n_snapshots d_in"]]:
        """Endless iterator of activation batches ``[batch, n_snapshots, d_in]`` for a trainer."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: a batch holds 1 token or more")
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield self.sample(batch_size, gen)[0]
