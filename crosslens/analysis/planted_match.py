"""A learned decoder against the planted truth of :mod:`crosslens.analysis.synthetic`.

:func:`match_planted` pairs each planted feature with one learned latent and judges the pair where
the feature exists; :func:`planted_recovery` reads emergence, class and fade from the pairs, which
is how the analysis is validated; :func:`planted_scores` adds SAELens's synthetic-data metrics
next to them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from crosslens.analysis.absorption import ABSORBING_SHARE, absorbed_shares
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.synthetic import PlantedEvolution

_EPS = 1e-12


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
