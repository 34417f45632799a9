"""A planted generator that shares no sampling code with crosslens's, for checking that
defaults transfer to data they were not tuned on.

:class:`crosslens.analysis.PlantedEvolution` draws every preset
(``scripts/planted_generators.py``) from one model of the data: Bernoulli firing, correlated
pairs by copying, per-snapshot magnitudes drawn independently. This one is written apart
from it and varies what that model holds fixed:

- firing probabilities log-normal around 2% (sd 0.7 in log space, clipped to 0.3%-12%);
- correlations from a Gaussian copula: 24 of the 48 features in groups of three whose
  latent Gaussians share a factor (correlation 0.6 between them), so a group's features
  co-fire more often than chance without copying one another;
- decoder norms that ramp up after emergence (half, then three quarters, then full) and
  then drift as a log-normal random walk (sd 0.15 per snapshot), times a per-feature scale
  log-uniform in 0.5-2;
- directions that drift by cosine 0.93 per snapshot; coefficients 0.5 + Exp(2);
- 8 snapshots, d_in 64: 12 initialization features, 8 that fade, 14 that emerge and stay,
  14 transients of 2-3 snapshots.

Batches are normalised per snapshot to mean norm sqrt(d_in), as the activation store does.
The object has what :func:`crosslens.training.planted.train_planted` and
``scripts/planted_benchmark.py``'s ``score`` read; ``scripts/planted_generators.py
--generator independent`` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from crosslens.analysis.synthetic import NO_STEP


@dataclass(frozen=True)
class IndependentConfig:
    """The independent generator's settings (defaults: the set described above)."""

    seed: int = 0
    n_snapshots: int = 8
    d_in: int = 64
    n_features: int = 48
    group_correlation: float = 0.6
    """Correlation of the latent Gaussians within a group."""
    n_grouped: int = 24
    group_size: int = 3
    median_firing: float = 0.02
    firing_log_sd: float = 0.7
    norm_walk_sd: float = 0.15
    scale_min: float = 0.5
    scale_max: float = 2.0
    adjacent_cosine: float = 0.93
    noise_std: float = 0.05


class IndependentPlanted:
    """A planted set drawn by :class:`IndependentConfig` (see the module docstring)."""

    def __init__(self, config: IndependentConfig) -> None:
        self.config = config
        g = torch.Generator().manual_seed(10_000 + config.seed)
        S, D, F = config.n_snapshots, config.d_in, config.n_features
        emergence = [0] * 12 + [0] * 8 + [1 + i % (S - 1) for i in range(14)] + [1 + i % (S - 3) for i in range(14)]
        fade = [NO_STEP] * 12 + [2 + i % (S - 2) for i in range(8)] + [NO_STEP] * 14
        fade += [min(1 + i % (S - 3) + 2 + i % 2, S - 1) for i in range(14)]
        order = torch.randperm(F, generator=g)
        self.emergence = torch.tensor(emergence)[order]
        self.fade = torch.tensor(fade)[order]
        snapshot_1S = torch.arange(S)[None]
        present_FS = (snapshot_1S >= self.emergence[:, None]) & (
            (self.fade[:, None] == NO_STEP) | (snapshot_1S < self.fade[:, None])
        )
        log_span = math.log(config.scale_max / config.scale_min)
        scale_F = config.scale_min * torch.exp(log_span * torch.rand(F, generator=g))
        walk_FS = torch.exp(config.norm_walk_sd * torch.randn(F, S, generator=g)).cumprod(1)
        ramp_FS = torch.ones(F, S)
        for f, e in enumerate(self.emergence.tolist()):
            if e > 0:
                ramp_FS[f, e : e + 2] = torch.tensor([0.5, 0.75])[: S - e]
        self.magnitudes = scale_F[:, None] * walk_FS * ramp_FS * present_FS
        directions = [_unit(torch.randn(F, D, generator=g))]
        for _ in range(S - 1):
            fresh = _unit(torch.randn(F, D, generator=g))
            c = config.adjacent_cosine
            directions.append(_unit(c * directions[-1] + math.sqrt(1 - c * c) * fresh))
        self.directions = torch.stack(directions, 1)
        log_p = math.log(config.median_firing) + config.firing_log_sd * torch.randn(F, generator=g)
        self.firing_probs = log_p.exp().clamp(0.003, 0.12)
        self.group_of = torch.full((F,), -1)
        grouped = torch.randperm(F, generator=g)[: config.n_grouped]
        self.group_of[grouped] = torch.arange(config.n_grouped) // config.group_size
        self.steps = [0] + [2**k for k in range(S - 1)]
        self.norm_factors: torch.Tensor | None = None
        acts_NSD, _ = self.sample(20_000, torch.Generator().manual_seed(config.seed + 7))
        self.norm_factors = math.sqrt(D) / acts_NSD.norm(dim=-1).mean(0)
        _, coefficients_NF = self.sample(20_000, torch.Generator().manual_seed(config.seed + 8))
        self.mean_l0 = float((coefficients_NF != 0).sum(-1).float().mean())
        """Planted features firing per token, measured on a sample."""

    @property
    def present(self) -> torch.Tensor:
        return self.magnitudes > 0

    @property
    def classes(self) -> list[str]:
        return [
            "initialization" if e == 0 else ("persistent" if f == NO_STEP else "transient")
            for e, f in zip(self.emergence.tolist(), self.fade.tolist())
        ]

    @property
    def decoder(self) -> torch.Tensor:
        decoder_FSD = self.directions * self.magnitudes[..., None]
        return decoder_FSD if self.norm_factors is None else decoder_FSD * self.norm_factors[None, :, None]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` tokens' activations ``[n, S, D]`` and true coefficients ``[n, F]``."""
        cfg = self.config
        z_NF = torch.randn(n, cfg.n_features, generator=generator)
        grouped = self.group_of >= 0
        common_NG = torch.randn(n, int(self.group_of.max()) + 1, generator=generator)
        rho = cfg.group_correlation
        z_NF[:, grouped] = math.sqrt(rho) * common_NG[:, self.group_of[grouped]] + math.sqrt(1 - rho) * z_NF[:, grouped]
        fires_NF = z_NF < torch.distributions.Normal(0.0, 1.0).icdf(self.firing_probs)
        exponential_NF = -torch.log(torch.rand(n, cfg.n_features, generator=generator).clamp_min(1e-12)) / 2.0
        coefficients_NF = (0.5 + exponential_NF) * fires_NF
        acts_NSD = torch.einsum("nf,fsd->nsd", coefficients_NF, self.decoder)
        noise_NSD = cfg.noise_std * torch.randn(acts_NSD.shape, generator=generator)
        if self.norm_factors is not None:
            noise_NSD = noise_NSD * self.norm_factors[None, :, None]
        return acts_NSD + noise_NSD, coefficients_NF

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield self.sample(batch_size, gen)[0]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
