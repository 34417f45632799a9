"""Relative indirect effects (RelIE): at which snapshots does a feature matter for a task?

For a feature i with indirect effects ``IE_i(c)`` at snapshots c in C::

    RelIE_i(c) = |IE_i(c)| / sum_{c'} |IE_i(c')|          (one-vs-all, any number of snapshots)
    RelIE_i(c1 -> c2) = |IE_i(c2)| / (|IE_i(c1)| + |IE_i(c2)|)   (pairwise)

A feature with no effect anywhere gets the uniform share (0.5 for a pair). Each
(feature, snapshot) entry is then ``specific`` (above ``specific``, default 0.7),
``other`` (below ``other``, default 0.3) or ``shared`` in between.

The same one-vs-all ratio applied to decoder norms gives RelDec, the structural
counterpart that RelIE is plotted against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int

RELIE_CLASSES: tuple[str, str, str] = ("other", "shared", "specific")


@dataclass(frozen=True)
class RelIEThresholds:
    """Cut-offs that turn RelIE values into classes."""

    specific: float = 0.7
    """RelIE above this: the feature's effect is specific to that snapshot."""
    other: float = 0.3
    """RelIE below this: the feature matters at other snapshots."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.other < self.specific <= 1.0:
            raise ValueError(
                f"RelIE thresholds need 0 <= other < specific <= 1, got other={self.other}, "
                f"specific={self.specific}"
            )


def relie(ie: Float[torch.Tensor, "n_features n_snapshots"]) -> Float[torch.Tensor, "n_features n_snapshots"]:
    """One-vs-all RelIE along the last axis; rows of all-zero IE get ``1 / n_snapshots``."""
    if ie.ndim < 1 or ie.shape[-1] < 2:
        raise ValueError(f"RelIE compares at least 2 snapshots along the last axis, got shape {tuple(ie.shape)}")
    magnitude = ie.abs().to(torch.float64)
    total = magnitude.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(magnitude, 1.0 / ie.shape[-1])
    share = torch.where(total > 0, magnitude / total.clamp_min(torch.finfo(torch.float64).tiny), uniform)
    return share.to(ie.dtype if ie.is_floating_point() else torch.float32)


def relie_pairwise(
    ie_from: Float[torch.Tensor, " n_features"], ie_to: Float[torch.Tensor, " n_features"]
) -> Float[torch.Tensor, " n_features"]:
    """``|IE(to)| / (|IE(from)| + |IE(to)|)``; 0.5 where both are zero."""
    if ie_from.shape != ie_to.shape:
        raise ValueError(f"pairwise RelIE needs equal shapes, got {tuple(ie_from.shape)} and {tuple(ie_to.shape)}")
    return relie(torch.stack([ie_from, ie_to], dim=-1))[..., 1]


def reldec(norms: Float[torch.Tensor, "n_features n_snapshots"]) -> Float[torch.Tensor, "n_features n_snapshots"]:
    """Relative decoder norm: the one-vs-all ratio of ``||W_dec[i, s]||`` across snapshots."""
    return relie(norms)


def classify_relie(
    values: Float[torch.Tensor, "..."], thresholds: RelIEThresholds = RelIEThresholds()
) -> np.ndarray:
    """An array of ``"specific"`` / ``"shared"`` / ``"other"`` with the shape of ``values``."""
    array = values.detach().cpu().numpy()
    labels = np.full(array.shape, "shared", dtype=object)
    labels[array > thresholds.specific] = "specific"
    labels[array < thresholds.other] = "other"
    return labels


def class_counts(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per snapshot (last axis), how many features fall in each class."""
    return {name: (labels == name).sum(axis=0) for name in RELIE_CLASSES}


def select_top_features(ie: Float[torch.Tensor, "n_features n_snapshots"], k: int) -> Int[torch.Tensor, " n_selected"]:
    """Sorted union over snapshots of each snapshot's top-``k`` features by ``|IE|`` (zero IE never selected)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if ie.ndim != 2:
        raise ValueError(f"expected an IE table of shape [n_features, n_snapshots], got {tuple(ie.shape)}")
    magnitude = ie.abs()
    k = min(k, magnitude.shape[0])
    values, indices = magnitude.topk(k, dim=0)
    chosen = indices[values > 0]
    return torch.unique(chosen)
