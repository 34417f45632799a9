"""Is this emergence real? The decoder-norm emergence beside the latent-scaled one, and where they disagree.

From :mod:`crosslens.analysis.scaling`, each live latent gets a **latent-scaled
presence** per snapshot: its amplitude there over its largest amplitude at any snapshot
(negative amplitudes count as 0), counted only where the activation fit stands
:attr:`EmergenceCheckConfig.min_t` standard errors above 0. The amplitude is the one in the
snapshot's activations where another latent present there points the latent's way (cosine
:attr:`EmergenceCheckConfig.carrier_cosine` or more), and the one in the reconstruction error
without the latent elsewhere: what unrelated latents that fire on the same tokens reconstruct is
not the latent's presence. The evolution analysis's
hysteresis reads it like a decoder-norm timeline, in the analysis's presence mode (present from
:attr:`EmergenceCheckConfig.presence_threshold`, faded under
:attr:`EmergenceCheckConfig.fade_threshold`), giving a **latent-scaled emergence**.

A latent is **contested** when the two emergences differ by at least
:attr:`EmergenceCheckConfig.contested_margin` snapshots: *earlier* where the activations hold
it before its decoder norm says so (Complete Shrinkage, or another latent that carries its
early part), *later* where the decoder carries it before the activations do. Where an earlier
presence lives says which: in the reconstruction error without the latent (its decoder shrank,
``error``) or in what other latents reconstruct (``reconstruction``, Latent Decoupling). The
emergence crosslens reports is the latent-scaled one where contested, the decoder norm's
elsewhere. Latents firing on fewer than :attr:`EmergenceCheckConfig.min_fire` sampled tokens
are not measured and never contested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from crosslens.analysis.evolution import NO_STEP, EvolutionConfig, Lifetimes, feature_lifetimes
from crosslens.analysis.scaling import LatentScaling
from crosslens.core.errors import CrosslensError

CONTESTED_KINDS: tuple[str, ...] = ("earlier", "later")
"""Which way a contested latent's latent-scaled emergence lies from its decoder-norm one."""

EARLY_PRESENCE: tuple[str, ...] = ("error", "reconstruction")
"""Where an earlier latent-scaled presence lives: the reconstruction error without the latent, or
other latents' reconstruction."""


@dataclass(frozen=True)
class EmergenceCheckConfig:
    """When latent scaling calls a latent present, and when it contests the decoder norm."""

    presence_threshold: float = 0.1
    """A latent is present by latent scaling where its amplitude is at least this share of its
    largest amplitude. Below the decoder norm's 0.3: the amplitude is measured on the activations,
    so a weak early presence the decoder shrank away still shows (see benchmarks/README.md,
    "Is an emergence real?", for the planted noise floor this stands above)."""
    fade_threshold: float = 0.05
    """It turns off where it falls below this share (<= ``presence_threshold``), and has faded there
    where it does not climb back to ``presence_threshold`` before the end."""
    min_t: float = 4.0
    """An amplitude counts only this many standard errors above 0: a latent firing on few tokens
    gives noisy amplitudes."""
    contested_margin: int = 2
    """Snapshots between the two emergences from which a latent is contested."""
    carrier_cosine: float = 0.5
    """What other latents reconstruct along a latent's direction counts toward its presence at a
    snapshot only where another latent present there has its row at this cosine or more with
    that direction (a partner carrying the concept, Latent Decoupling); elsewhere the presence is
    read from the reconstruction error without the latent alone. Features that merely fire
    together otherwise lend each other early presence (see benchmarks/README.md, "Is an
    emergence real?"). -1 counts every other latent's reconstruction."""
    min_fire: int = 10
    """Latents firing on fewer sampled tokens are not measured."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fade_threshold <= self.presence_threshold <= 1.0:
            raise ValueError(
                f"fade_threshold={self.fade_threshold}, presence_threshold={self.presence_threshold}: "
                "need 0 < fade <= presence <= 1 (shares of the latent's largest amplitude)."
            )
        if self.min_t < 0 or self.contested_margin < 1 or self.min_fire < 2:
            raise ValueError("min_t >= 0, contested_margin >= 1 snapshot and min_fire >= 2 tokens.")
        if not -1.0 <= self.carrier_cosine <= 1.0:
            raise ValueError(f"carrier_cosine={self.carrier_cosine} is a cosine: pick [-1, 1], e.g. 0.5.")


def carried(scaling: LatentScaling, config: EmergenceCheckConfig) -> torch.Tensor:
    """Boolean ``[d_sae, n_snapshots]``: where another latent present carries each latent's direction
    (its row at ``carrier_cosine`` or more), so that what other latents reconstruct counts toward the
    latent's presence there."""
    return scaling.carrier_cosine >= config.carrier_cosine


def scaled_presence(
    scaling: LatentScaling, config: EmergenceCheckConfig | None = None
) -> Float[torch.Tensor, "d_sae n_snapshots"]:
    """Each latent's amplitude over its largest, 0 where negative or within ``min_t`` standard
    errors of 0. The amplitude is the activation target's where a partner carries the latent's
    direction (:func:`carried`), the error target's elsewhere; its significance is the
    activation fit's."""
    config = config or EmergenceCheckConfig()
    amplitude_FS = torch.where(carried(scaling, config), scaling.amplitude, scaling.error_amplitude).clamp_min(0.0)
    amplitude_FS = torch.where(scaling.t_value >= config.min_t, amplitude_FS, 0.0)
    peak_F1 = amplitude_FS.amax(dim=1, keepdim=True)
    return torch.where(peak_F1 > 0, amplitude_FS / peak_F1.clamp_min(1e-12), 0.0)


@dataclass(frozen=True)
class EmergenceCheck:
    """The decoder-norm and latent-scaled emergence of every latent, and the verdict (:func:`check_emergence`)."""

    steps: list[int]
    """Training step of each snapshot."""
    config: EmergenceCheckConfig
    presence: Float[torch.Tensor, "d_sae n_snapshots"]
    """Latent-scaled presence (:func:`scaled_presence`)."""
    decoder_emergence: Int[torch.Tensor, " d_sae"]
    """The evolution analysis's emergence snapshot (``NO_STEP``: dead)."""
    scaled: Lifetimes
    """Lifetimes read from the latent-scaled presence (``NO_STEP`` where never present or not measured)."""
    measured: torch.Tensor
    """Boolean: live latents that fire on at least ``min_fire`` sampled tokens."""
    contested: torch.Tensor
    """Boolean: measured latents whose two emergences differ by ``contested_margin`` or more."""
    early_presence: list[str | None]
    """For latents contested earlier, where the early presence lives (:data:`EARLY_PRESENCE`)."""

    @property
    def d_sae(self) -> int:
        return self.presence.shape[0]

    @property
    def scaled_emergence(self) -> Int[torch.Tensor, " d_sae"]:
        return self.scaled.emergence

    @property
    def disagreement(self) -> Int[torch.Tensor, " d_sae"]:
        """Decoder-norm emergence less the latent-scaled one, in snapshots (> 0: latent scaling
        sees it earlier); 0 where either is missing."""
        both = (self.decoder_emergence != NO_STEP) & (self.scaled_emergence != NO_STEP)
        return torch.where(both, self.decoder_emergence - self.scaled_emergence, 0)

    def direction(self, latent: int) -> str | None:
        """``earlier``/``later`` for a contested latent, else None."""
        if not bool(self.contested[latent]):
            return None
        return "earlier" if int(self.disagreement[latent]) > 0 else "later"

    @property
    def present(self) -> torch.Tensor:
        """Boolean ``[d_sae, n_snapshots]``: where latent scaling calls a latent present, its
        presence at ``presence_threshold`` or more (an amplitude ``min_t`` standard errors above 0).
        Unlike the emergences it holds latents that fire on fewer than ``min_fire`` sampled tokens
        too: their amplitude's standard error already says how far it can be read."""
        return self.presence >= self.config.presence_threshold

    @property
    def reported_emergence(self) -> Int[torch.Tensor, " d_sae"]:
        """The emergence crosslens reports: latent-scaled where contested, the decoder norm's elsewhere."""
        return torch.where(self.contested, self.scaled_emergence, self.decoder_emergence)

    def counts(self) -> dict[str, int]:
        live = int((self.decoder_emergence != NO_STEP).sum())
        earlier = int((self.contested & (self.disagreement > 0)).sum())
        return {
            "live": live,
            "measured": int(self.measured.sum()),
            "contested": int(self.contested.sum()),
            "earlier": earlier,
            "later": int(self.contested.sum()) - earlier,
            "in_error": sum(p == "error" for p in self.early_presence),
            "in_reconstruction": sum(p == "reconstruction" for p in self.early_presence),
        }

    def contested_features(self) -> list[int]:
        return [int(i) for i in torch.nonzero(self.contested).flatten()]

    def feature_rows(self, features: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One row per latent: both emergences as steps, the verdict and where an early presence lives."""
        out = []
        for i in range(self.d_sae) if features is None else features:
            decoder, scaled = int(self.decoder_emergence[i]), int(self.scaled_emergence[i])
            out.append(
                {
                    "feature": int(i),
                    "decoder_norm_emergence": None if decoder == NO_STEP else self.steps[decoder],
                    "latent_scaled_emergence": None if scaled == NO_STEP else self.steps[scaled],
                    "contested": self.direction(int(i)) or ("no" if bool(self.measured[i]) else "not measured"),
                    "early_presence_in": self.early_presence[i],
                }
            )
        return out


def _where_early(
    scaling: LatentScaling, config: EmergenceCheckConfig, first_FS: torch.Tensor, contested_earlier: torch.Tensor
) -> list[str | None]:
    """For each latent contested earlier: ``error`` where its error-target amplitude over the
    snapshots before its decoder-norm emergence is at least what other latents reconstruct there.
    That counts only where a partner carries the latent's direction (:func:`carried`), as in its
    presence: elsewhere the presence was read from the error alone, whatever co-firing latents
    reconstruct."""
    error_F = (scaling.error_amplitude * first_FS).sum(1)
    other_F = (scaling.reconstruction_amplitude * first_FS * carried(scaling, config)).sum(1)
    return [
        (
            ("error" if float(error_F[i]) >= float(other_F[i]) else "reconstruction")
            if bool(contested_earlier[i])
            else None
        )
        for i in range(len(error_F))
    ]


def _refuse_another_crosscoder(analysis: Any, scaling: LatentScaling) -> None:
    """Refuse a latent scaling of another crosscoder than ``analysis``'s: both hold the
    training-space decoder norm of every latent at every snapshot (``own_norm``, ``norms``)."""
    if scaling.amplitude.shape != analysis.norms.shape:
        raise CrosslensError(
            f"the latent scaling has shape {list(scaling.amplitude.shape)} and the evolution analysis "
            f"{list(analysis.norms.shape)}: compute both from the same crosscoder."
        )
    own_FS, norms_FS = scaling.own_norm.float().cpu(), analysis.norms.float().cpu()
    if not torch.allclose(own_FS, norms_FS, rtol=1e-4, atol=1e-6):
        worst = float((own_FS - norms_FS).abs().max())
        raise CrosslensError(
            f"the latent scaling was computed on other decoder rows than the evolution analysis read (decoder "
            f"norms differ by up to {worst:.3g}): compute both from the same crosscoder."
        )


def check_emergence(
    analysis: Any, scaling: LatentScaling, config: EmergenceCheckConfig | None = None
) -> EmergenceCheck:
    """Compare ``analysis``'s decoder-norm emergence (an
    :class:`~crosslens.analysis.evolution_analysis.EvolutionAnalysis`) with ``scaling``'s, latent
    by latent (vectorised), reading the latent-scaled timeline in the analysis's presence mode
    (``EvolutionConfig.presence``). Both must describe the same crosscoder: a latent scaling whose
    decoder norms (``own_norm``) are not the analysis's (``norms``) is refused."""
    if not hasattr(analysis, "lifetimes") or not isinstance(scaling, LatentScaling):
        raise TypeError(
            f"check_emergence(analysis, scaling) takes an EvolutionAnalysis and what latent_scaling returns; got "
            f"({type(analysis).__name__}, {type(scaling).__name__})"
        )
    config = config or EmergenceCheckConfig()
    _refuse_another_crosscoder(analysis, scaling)
    presence_FS = scaled_presence(scaling, config)
    dead_F = analysis.lifetimes.dead
    measured_F = ~dead_F & (scaling.n_fire >= config.min_fire)
    # the same presence mode as the decoder-norm reading, so that a timeline both readings share
    # dates the same on-period (the first in robust mode, the last in decoder_norm mode)
    reading = EvolutionConfig(
        emergence_threshold=config.presence_threshold,
        fade_threshold=config.fade_threshold,
        dead_threshold=0.0,
        untouched_rtol=0.0,
        presence=analysis.config.presence,
    )
    scaled = feature_lifetimes(torch.where(measured_F[:, None], presence_FS, 0.0), reading)
    decoder_F = analysis.lifetimes.emergence
    both_F = measured_F & (scaled.emergence != NO_STEP) & (decoder_F != NO_STEP)
    contested_F = both_F & ((decoder_F - scaled.emergence).abs() >= config.contested_margin)
    S = presence_FS.shape[1]
    idx_1S = torch.arange(S)[None, :]
    early_FS = ((idx_1S >= scaled.emergence[:, None]) & (idx_1S < decoder_F[:, None])).float()
    return EmergenceCheck(
        steps=list(analysis.steps),
        config=config,
        presence=presence_FS,
        decoder_emergence=decoder_F,
        scaled=scaled,
        measured=measured_F,
        contested=contested_F,
        early_presence=_where_early(scaling, config, early_FS, contested_F & (decoder_F > scaled.emergence)),
    )
