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

from crosslens.core.tensors import one_vs_all_share

RELIE_CLASSES: tuple[str, str, str] = ("other", "shared", "specific")
BELOW_FLOOR = "below_floor"
"""Label of a (feature, snapshot) whose effect is too small to class: RelIE is a ratio,
and the ratio of noise is noise (see :func:`classify_relie`)."""


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
                f"RelIE thresholds need 0 <= other < specific <= 1, got other={self.other}, specific={self.specific}"
            )


def relie(ie: Float[torch.Tensor, "n_features n_snapshots"]) -> Float[torch.Tensor, "n_features n_snapshots"]:
    """One-vs-all RelIE along the last axis; rows of all-zero IE get ``1 / n_snapshots``."""
    return one_vs_all_share(ie)


def relie_pairwise(
    ie_from: Float[torch.Tensor, " n_features"], ie_to: Float[torch.Tensor, " n_features"]
) -> Float[torch.Tensor, " n_features"]:
    """``|IE(to)| / (|IE(from)| + |IE(to)|)``; 0.5 where both are zero."""
    ie_from, ie_to = torch.as_tensor(ie_from), torch.as_tensor(ie_to)
    if ie_from.shape != ie_to.shape:
        raise ValueError(f"pairwise RelIE needs equal shapes, got {tuple(ie_from.shape)} and {tuple(ie_to.shape)}")
    return relie(torch.stack([ie_from, ie_to], dim=-1))[..., 1]


def reldec(norms: Float[torch.Tensor, "n_features n_snapshots"]) -> Float[torch.Tensor, "n_features n_snapshots"]:
    """Relative decoder norm: the one-vs-all ratio of ``||W_dec[i, s]||`` across snapshots.

    Pass ``crosscoder.decoder_norms()`` (the training space, unchanged by folding);
    :func:`crosslens.analysis.rel_dec` computes the same from a crosscoder or ``W_dec``.
    """
    return one_vs_all_share(norms)


def classify_relie(
    values: Float[torch.Tensor, "..."],
    thresholds: RelIEThresholds = RelIEThresholds(),
    classed: torch.Tensor | None = None,
) -> np.ndarray:
    """An array of ``"specific"`` / ``"shared"`` / ``"other"`` with the shape of ``values``;
    entries where the boolean ``classed`` (same shape, optional) is False are
    :data:`BELOW_FLOOR` instead (build it with :func:`relie_floor_mask`)."""
    array = torch.as_tensor(values).detach().cpu().numpy()
    labels = np.full(array.shape, "shared", dtype=object)
    labels[array > thresholds.specific] = "specific"
    labels[array < thresholds.other] = "other"
    if classed is not None:
        if tuple(classed.shape) != tuple(values.shape):
            raise ValueError(f"classed has shape {tuple(classed.shape)}; it must match values {tuple(values.shape)}")
        labels[~classed.detach().cpu().numpy().astype(bool)] = BELOW_FLOOR
    return labels


def bootstrap_ie_ci(
    per_example: Float[torch.Tensor, "n_examples ..."],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[Float[torch.Tensor, "..."], Float[torch.Tensor, "..."]]:
    """Percentile bootstrap confidence interval of the mean IE over examples.

    ``per_example`` holds each example's IE on its first axis (``IETable.ie_per_example``,
    ``[n_examples, d_sae, n_snapshots]``, or a selection of its features). Examples are
    resampled with replacement ``n_boot`` times (seeded); returns the ``(1 - level) / 2``
    and ``(1 + level) / 2`` quantiles of the resampled means.
    """
    if per_example.ndim < 1 or per_example.shape[0] < 2:
        raise ValueError(f"need at least 2 examples on the first axis, got shape {tuple(per_example.shape)}")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    n = per_example.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx_BN = torch.randint(0, n, (n_boot, n), generator=gen)
    values = per_example.detach().double().cpu()
    flat = values.reshape(n, -1)
    # counts of each example in each resample: means are one matmul, not n_boot gathers
    counts_BN = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx_BN, torch.ones(n_boot, n, dtype=torch.float64)
    )
    means = (counts_BN @ flat) / n
    low, high = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64), dim=0)
    shape = values.shape[1:]
    return low.reshape(shape).float(), high.reshape(shape).float()


def relie_floor_mask(
    ie: Float[torch.Tensor, "n_features n_snapshots"],
    floor: float,
    ci_low: Float[torch.Tensor, "n_features n_snapshots"] | None = None,
    ci_high: Float[torch.Tensor, "n_features n_snapshots"] | None = None,
) -> torch.Tensor:
    """Boolean ``[n_features, n_snapshots]``: where a RelIE class means something.

    A (feature, snapshot) is classed when the feature's total effect ``sum_c |IE(c)|`` (the
    denominator of RelIE) is at least ``floor`` and, given a confidence interval, the
    feature's effect is distinguishable from zero somewhere (some snapshot's interval
    excludes 0). Otherwise its RelIE is a ratio of noise and gets no class.
    """
    total_F = ie.abs().sum(dim=-1)
    keep_F = total_F >= floor
    if ci_low is not None and ci_high is not None:
        keep_F &= ((ci_low > 0) | (ci_high < 0)).any(dim=-1)
    return keep_F[:, None].expand_as(ie).clone()


def class_counts(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per snapshot (last axis), how many features fall in each class."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "UO":
        raise TypeError(f"class_counts counts the labels classify_relie returns; got {type(labels).__name__}")
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
