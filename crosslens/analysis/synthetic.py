"""Planted multi-snapshot data: activations whose feature timeline is known exactly.

Each true feature ``i`` has a unit direction per snapshot ``d[i, s]`` (drifting a little
between snapshots), a magnitude per snapshot ``m[i, s]`` (zero where the feature does not
exist yet or any more) and a firing probability. A token "has" a feature at every snapshot
with the same coefficient, as a token's meaning does not depend on the checkpoint, so the
activation of snapshot ``s`` is ``sum_i c_i m[i, s] d[i, s] + noise``.

A crosscoder trained on these batches should find one latent per true feature whose
decoder norm is ~0 exactly where ``m[i, s] = 0``. :func:`match_planted` and
:func:`planted_recovery` check that, which is how the analysis is validated;
:func:`planted_scores` adds SAELens's synthetic-data metrics next to them.

:meth:`PlantedConfig.hard` is a harder set: 8 snapshots, d_in 64, 48
features firing on 0.5-5% of tokens, per-feature scales 0.5-2 and per-snapshot scale
changes 0.6-1.4, correlated pairs, short transients, batches normalised like an
activation store's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int

from crosslens.analysis.absorption import ABSORBING_SHARE, absorbed_shares
from crosslens.analysis.evolution import NO_STEP
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.planted_draws import (
    class_firing,
    drift,
    firing_probabilities,
    plant_schedules,
    spread_directions,
)
from crosslens.analysis.planted_events import EventTruth, PlantedEvents, plant_events

_EPS = 1e-12


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


# ---------------------------------------------------------------------------
# Comparing a learned decoder with the planted truth
# ---------------------------------------------------------------------------
def _cosines_per_snapshot(learned_FSD: torch.Tensor, planted_PSD: torch.Tensor) -> torch.Tensor:
    """``[S, F_learned, F_planted]`` cosines; zero-norm rows give 0."""
    learned_unit = learned_FSD / learned_FSD.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    planted_unit = planted_PSD / planted_PSD.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return torch.einsum("fsd,psd->sfp", learned_unit, planted_unit)


def planted_mmcs(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    planted: PlantedEvolution,
) -> Float[torch.Tensor, " n_snapshots"]:
    """Mean max-cosine per snapshot: for each planted feature present at ``s``, the best
    cosine with any learned decoder row at ``s``, averaged over those features."""
    cos_SFP = _cosines_per_snapshot(W_dec.detach().float(), planted.directions)
    best_SP = cos_SFP.amax(dim=1)
    present_SP = planted.present.T
    return (best_SP * present_SP).sum(1) / present_SP.sum(1).clamp_min(1)


@dataclass(frozen=True)
class PlantedMatch:
    """One-to-one matching of learned features to planted ones."""

    learned: list[int]
    """Learned feature index of each matched pair."""
    planted: list[int]
    """Planted feature index of each matched pair."""
    cosine: list[float]
    """Cosine between the two decoders over the planted feature's present snapshots, each
    snapshot's row with its norm (the rows concatenated)."""
    min_cosine: float
    """Pairs at or above this cosine count as recovered."""

    @property
    def recovered(self) -> list[tuple[int, int]]:
        """(learned, planted) pairs with cosine >= ``min_cosine``."""
        return [(j, i) for j, i, c in zip(self.learned, self.planted, self.cosine) if c >= self.min_cosine]


def _decoder_cosines(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"], planted: PlantedEvolution
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[F_learned, F_planted]`` cosines between learned and planted decoders, each
    snapshot's row kept with its norm and the rows concatenated: over every snapshot (the
    whole timeline, where a planted row is zero while the feature is absent) and over the
    planted feature's present snapshots only."""
    if not isinstance(W_dec, torch.Tensor):
        raise TypeError(
            f"the learned decoder is {type(W_dec).__name__}, not a tensor; pass W_dec [d_sae, n_snapshots, d_in] "
            "(crosscoder.W_dec)"
        )
    if W_dec.ndim != 3 or W_dec.shape[1:] != planted.decoder.shape[1:]:
        S, D = planted.decoder.shape[1:]
        raise ValueError(
            f"the learned decoder has shape {tuple(W_dec.shape)}, the planted features [..., n_snapshots={S}, "
            f"d_in={D}]; pass the decoder of a crosscoder trained on these planted activations"
        )
    learned_FSD = W_dec.detach().float()
    planted_PSD = planted.decoder.float()
    present_PS = planted.present.float()
    dots_FPS = torch.einsum("fsd,psd->fps", learned_FSD, planted_PSD)
    learned_sq_FS = learned_FSD.square().sum(-1)
    planted_sq_PS = planted_PSD.square().sum(-1)
    timeline_FP = dots_FPS.sum(-1) / (
        learned_sq_FS.sum(-1).sqrt()[:, None] * planted_sq_PS.sum(-1).sqrt()[None, :]
    ).clamp_min(_EPS)
    present_FP = (dots_FPS * present_PS[None]).sum(-1) / (
        (learned_sq_FS @ present_PS.T).sqrt() * (planted_sq_PS * present_PS).sum(-1).sqrt()[None, :]
    ).clamp_min(_EPS)
    return timeline_FP, present_FP


def match_planted(
    W_dec: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    planted: PlantedEvolution,
    min_cosine: float = 0.9,
) -> PlantedMatch:
    """Pair each planted feature with one learned latent, then judge the pair where the
    planted feature exists.

    The pairing (Hungarian, one-to-one) maximises the decoders' cosine over the whole
    timeline, so that of two latents alike where a feature is present, the one that is
    also silent where the feature is absent is its partner: a crosscoder can learn a
    latent for two features that fire on the same tokens but live at different snapshots
    beside latents for each, and the merged one is neither. A pair is recovered when the
    decoders' cosine over the planted feature's present snapshots is >= ``min_cosine``;
    rows keep their norms in both cosines, so a latent whose decoder is near zero at
    some of those snapshots does not pass on its direction there. Where the paired
    latent's decoder leaks into absent snapshots is the emergence and fade checks' to judge.
    """
    from scipy.optimize import linear_sum_assignment

    timeline_FP, present_FP = _decoder_cosines(W_dec, planted)
    rows, cols = linear_sum_assignment(timeline_FP.numpy(), maximize=True)
    return PlantedMatch(
        learned=[int(r) for r in rows],
        planted=[int(c) for c in cols],
        cosine=[float(present_FP[r, c]) for r, c in zip(rows, cols)],
        min_cosine=min_cosine,
    )


def planted_recovery(analysis: EvolutionAnalysis, planted: PlantedEvolution, min_cosine: float = 0.9) -> dict[str, Any]:
    """How well an analysis of a learned decoder recovers the planted timeline.

    Returns mean max-cosine per snapshot, the number of recovered features, and over those
    the fraction whose emergence snapshot, fade snapshot and class match exactly.
    """
    match = match_planted(analysis.W_dec, planted, min_cosine)
    pairs = match.recovered
    planted_classes = planted.classes
    lt = analysis.lifetimes

    def frac(hits: list[bool]) -> float:
        return sum(hits) / len(hits) if hits else 0.0

    return {
        "mmcs_per_snapshot": planted_mmcs(analysis.W_dec, planted).tolist(),
        "n_planted": planted.config.n_features,
        "n_recovered": len(pairs),
        "emergence_accuracy": frac([int(lt.emergence[j]) == int(planted.emergence[i]) for j, i in pairs]),
        "fade_accuracy": frac([int(lt.fade[j]) == int(planted.fade[i]) for j, i in pairs]),
        "class_accuracy": frac([analysis.classes[j] == planted_classes[i] for j, i in pairs]),
        "mismatches": [
            {
                "learned": j,
                "planted": i,
                "learned_emergence": int(lt.emergence[j]),
                "planted_emergence": int(planted.emergence[i]),
                "learned_class": analysis.classes[j],
                "planted_class": planted_classes[i],
                "normalized_norms": [round(x, 3) for x in analysis.normalized[j].tolist()],
            }
            for j, i in pairs
            if int(lt.emergence[j]) != int(planted.emergence[i]) or analysis.classes[j] != planted_classes[i]
        ],
    }


def _leakage_scores(
    analysis: EvolutionAnalysis, planted: PlantedEvolution, recovered: list[tuple[int, int]]
) -> dict[str, float]:
    """``planted_scores``' leakage keys, from the recovered ``(learned, planted)`` pairs'
    normalised decoder norms where the planted feature is absent and where it is present."""
    line = analysis.config.emergence_threshold

    def norms(present: bool) -> torch.Tensor:
        rows = [analysis.normalized[j][planted.present[i] == present] for j, i in recovered]
        return torch.cat(rows) if rows else torch.zeros(0)

    def mean(values: torch.Tensor) -> float:
        return float(values.float().mean()) if values.numel() else 0.0

    absent_FS, present_FS = norms(False), norms(True)
    return {
        "absent_norm": mean(absent_FS),
        "absent_above_threshold": mean(absent_FS >= line),
        "present_below_threshold": mean(present_FS < line),
    }


def planted_scores(
    analysis: EvolutionAnalysis,
    planted: PlantedEvolution,
    min_cosine: float = 0.9,
    codes: Float[torch.Tensor, "n d_sae"] | None = None,
    coefficients: Float[torch.Tensor, "n n_features"] | None = None,
) -> dict[str, Any]:
    """:func:`planted_recovery` plus its headline numbers and SAELens's
    synthetic-data metrics beside them.

    Added keys: ``recovered_fraction`` (planted features matched one-to-one at cosine
    >= ``min_cosine``), ``min_mmcs`` (worst snapshot's mean max-cosine), ``timeline_accuracy``
    (recovered features whose emergence snapshot *and* class are exact), and from
    ``sae_lens.synthetic``: ``sae_lens_mcc`` (mean correlation coefficient between the
    planted and learned decoders, each feature's snapshots concatenated),
    ``sae_lens_mcc_per_snapshot`` (the same per snapshot, over the planted features present
    there) and ``sae_lens_uniqueness`` (share of live learned latents whose best planted
    match is their own). Leakage: ``absent_norm`` (mean normalised decoder norm of the
    recovered latents at snapshots where their planted feature is absent) and
    ``absent_above_threshold`` (share of those at or above the emergence threshold), and
    ``present_below_threshold`` (share of their norms where the feature is present that fall
    under it): the two errors the threshold trades.
    Absorption (:mod:`crosslens.analysis.absorption`): ``absorbing_fraction`` (matched
    latents that carry other planted features at >= ``ABSORBING_SHARE`` of their own) and
    ``absorbed_share_median`` (the median of that share over matched latents). With
    ``codes`` (the crosscoder's ``[n, d_sae]`` codes of sampled tokens) and the tokens' true
    ``coefficients`` (from :meth:`PlantedEvolution.sample`), also SAELens's firing
    precision/recall/F1 of the recovered latents as detectors of their planted feature
    (``sae_lens_precision``, ``sae_lens_recall``, ``sae_lens_f1``)."""
    from sae_lens.synthetic import feature_uniqueness, mean_correlation_coefficient

    result = planted_recovery(analysis, planted, min_cosine)
    match = match_planted(analysis.W_dec, planted, min_cosine)
    lt, classes = analysis.lifetimes, analysis.classes
    planted_classes = planted.classes
    exact = [
        int(lt.emergence[j]) == int(planted.emergence[i]) and classes[j] == planted_classes[i]
        for j, i in match.recovered
    ]
    W_FSD = analysis.W_dec.float()
    truth_PSD = planted.decoder.float()
    live = ~lt.dead
    flat_learned = W_FSD[live].flatten(1) if bool(live.any()) else W_FSD.flatten(1)
    per_snapshot = []
    for s in range(planted.config.n_snapshots):
        present = planted.present[:, s]
        per_snapshot.append(
            mean_correlation_coefficient(truth_PSD[present, s], W_FSD[:, s]) if bool(present.any()) else float("nan")
        )
    if codes is not None and coefficients is not None and match.recovered:
        from sae_lens.synthetic import compute_classification_metrics

        learned = [j for j, _ in match.recovered]
        metrics = compute_classification_metrics(
            codes[:, learned].float(), coefficients.float(), W_FSD[learned].flatten(1), truth_PSD.flatten(1)
        )
        result.update(
            sae_lens_precision=metrics.precision, sae_lens_recall=metrics.recall, sae_lens_f1=metrics.f1_score
        )
    mmcs = result["mmcs_per_snapshot"]
    shares = absorbed_shares(W_FSD, truth_PSD, list(zip(match.learned, match.planted)))
    result.update(
        absorbing_fraction=sum(s >= ABSORBING_SHARE for s in shares) / len(shares) if shares else 0.0,
        absorbed_share_median=statistics.median(shares) if shares else 0.0,
    )
    result.update(
        **_leakage_scores(analysis, planted, match.recovered),
        recovered_fraction=result["n_recovered"] / result["n_planted"],
        min_mmcs=min(mmcs),
        timeline_accuracy=sum(exact) / len(exact) if exact else 0.0,
        sae_lens_mcc=mean_correlation_coefficient(truth_PSD.flatten(1), flat_learned),
        sae_lens_mcc_per_snapshot=per_snapshot,
        sae_lens_uniqueness=feature_uniqueness(flat_learned, truth_PSD.flatten(1)),
    )
    return result
