"""Does the decoder norm track the feature? Linear-probe validation (Ge et al. 2025).

For a sample of features and every snapshot, a linear probe reads that snapshot's
activations and predicts whether the feature fires (``f_i > 0``, labels from the
crosscoder, which sees all snapshots at once). If the decoder norm measures how much the
snapshot holds the feature, probes fail where the norm is ~0 and succeed where it is large:
probe error and decoder norm are strongly negatively correlated across (feature, snapshot)
pairs.

Probes are closed-form ridge regressions on +-1 labels (one Gram matrix per snapshot shared
by all features, so this stays cheap for wide models), thresholded midway between the two
classes' mean scores on the training split; that makes the rule insensitive to how rarely a
feature fires. Error is the balanced error on a held-out split (chance = 0.5).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from crosslens.core.errors import check_store_given
from crosslens.core.hooks import resolve_hook
from crosslens.core.progress import progress_bar
from crosslens.core.tensors import feature_index
from crosslens.crosscoders.folding import is_folded

FREQUENCY_TOKENS = 16384
"""Tokens a feature's firing frequency is read on, where no count is given."""

PROBE_TOKENS = 8192
"""Tokens the probe validation reads, where no count is given."""

PROBE_FEATURES = 32
"""Features the probe validation checks, where none are named."""

if TYPE_CHECKING:
    from crosslens.crosscoders.protocol import Crosscoder


@dataclass(frozen=True)
class ProbeValidation:
    """Probe error and decoder norm for every probed (feature, snapshot) pair."""

    features: list[int]
    """Probed crosscoder features (rows of the tensors below)."""
    probe_error: Float[torch.Tensor, "n_probed n_snapshots"]
    """Held-out balanced error of each probe (0 = perfect, 0.5 = chance)."""
    decoder_norm: Float[torch.Tensor, "n_probed n_snapshots"]
    """``||W_dec[i, s]||`` of the probed features."""
    firing_rate: Float[torch.Tensor, " n_probed"]
    """Fraction of sampled tokens on which each probed feature fires."""
    n_tokens: int
    """Tokens used (train + held-out)."""

    @property
    def normalized_norm(self) -> Float[torch.Tensor, "n_probed n_snapshots"]:
        """Decoder norms divided by each feature's peak, comparable across features."""
        peak = self.decoder_norm.amax(dim=1, keepdim=True).clamp_min(1e-12)
        return self.decoder_norm / peak

    @property
    def pearson_r(self) -> float:
        """Pearson correlation of probe error with normalised decoder norm over all pairs."""
        return pearson(self.probe_error.flatten(), self.normalized_norm.flatten())

    @property
    def pearson_r_raw(self) -> float:
        """Same, with raw decoder norms."""
        return pearson(self.probe_error.flatten(), self.decoder_norm.flatten())

    def rows(self) -> list[dict[str, Any]]:
        """One row per (feature, snapshot) pair, for tables and CSV."""
        return [
            {
                "feature": f,
                "snapshot": s,
                "probe_error": round(float(self.probe_error[k, s]), 4),
                "decoder_norm": round(float(self.decoder_norm[k, s]), 4),
            }
            for k, f in enumerate(self.features)
            for s in range(self.probe_error.shape[1])
        ]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two 1-d tensors; NaN when either is constant."""
    x = x.double() - x.double().mean()
    y = y.double() - y.double().mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else float("nan")


def probe_validation(
    source: Any,
    crosscoder: Crosscoder,
    features: Sequence[int] | None = None,
    *,
    hook: str | None = None,
    n_tokens: int = PROBE_TOKENS,
    n_features: int = PROBE_FEATURES,
    min_positives: int = 20,
    train_fraction: float = 0.7,
    ridge: float = 1e-3,
    batch_size: int = 2048,
    seed: int = 0,
    progress: bool = False,
) -> ProbeValidation:
    """Fit a probe per (feature, snapshot) and compare probe error with decoder norm.

    Args:
        source: activations ``[n_tokens, n_snapshots, d_in]`` in the scale the crosscoder
            reads, or an activation store, from which ``n_tokens`` tokens are sampled (read
            normalised, or raw once the crosscoder has its normalisation factors folded in).
        crosscoder: anything with ``encode(x_BSD) -> f_BF`` and ``W_dec [F, S, D]``.
        features: features to probe; default: ``n_features`` random features among those
            firing on at least ``min_positives`` sampled tokens.
        hook: store hook (default: the store's only hook).
        ridge: ridge penalty, relative to the mean eigenvalue of the Gram matrix.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction={train_fraction} must be in (0, 1), e.g. 0.7.")
    gen = torch.Generator().manual_seed(seed)
    acts_NSD = _load_activations(source, hook, n_tokens, gen, reads_normalized(crosscoder))
    n = acts_NSD.shape[0]
    fires_NF = encode_in_batches(crosscoder, acts_NSD, batch_size) > 0

    counts_F = fires_NF.sum(0)
    if features is None:
        eligible = torch.nonzero((counts_F >= min_positives) & (counts_F <= n - min_positives)).flatten()
        if len(eligible) == 0:
            raise ValueError(
                f"no feature fires on at least {min_positives} of {n} sampled tokens; "
                "sample more tokens (n_tokens) or lower min_positives."
            )
        pick = torch.randperm(len(eligible), generator=gen)[:n_features]
        features = sorted(eligible[pick].tolist())
    features = feature_index(features, len(counts_F)).tolist()
    rare = [f for f in features if counts_F[f] < 2 or counts_F[f] > n - 2]
    if rare:
        warnings.warn(
            f"features {rare} fire on almost none or almost all of the {n} sampled tokens; "
            "their probe errors are meaningless. Sample more tokens or probe other features.",
            stacklevel=2,
        )
    labels_NK = fires_NF[:, features]

    order = torch.randperm(n, generator=gen)
    n_train = int(round(train_fraction * n))
    train, test = order[:n_train], order[n_train:]

    n_snapshots = acts_NSD.shape[1]
    errors_KS = torch.zeros(len(features), n_snapshots)
    for s in progress_bar(range(n_snapshots), desc="probes", show=progress):
        errors_KS[:, s] = _probe_errors(acts_NSD[:, s].double(), labels_NK, train, test, ridge)

    W_dec = crosscoder.W_dec.detach().float().cpu()
    return ProbeValidation(
        features=features,
        probe_error=errors_KS,
        decoder_norm=W_dec[features].norm(dim=-1),
        firing_rate=labels_NK.float().mean(0),
        n_tokens=n,
    )


@torch.no_grad()
def firing_frequency(
    source: Any,
    crosscoder: Crosscoder,
    *,
    per_snapshot: bool = False,
    hook: str | None = None,
    n_tokens: int = FREQUENCY_TOKENS,
    batch_size: int = 2048,
    seed: int = 0,
) -> Float[torch.Tensor, " d_sae"] | Float[torch.Tensor, "d_sae n_snapshots"]:
    """Fraction of sampled tokens on which each feature fires (``f_i > 0``), ``[d_sae]``; with
    ``per_snapshot``, on which it contributes to each snapshot, ``[d_sae, n_snapshots]``.

    ``source`` is an activation tensor ``[n, S, D]`` or an activation store, as in
    :func:`probe_validation`. Pass the overall rate to ``EvolutionAnalysis(frequency=...)`` so
    latents that never fire are classed ``dead``, and the per-snapshot one to
    ``EvolutionAnalysis(snapshot_frequency=...)`` for robust presence (a row behind a gate
    that never opens is not present). A JumpReLU crosscoder gates every snapshot separately
    (``encode_per_snapshot``); for the other architectures the code is shared, so every
    snapshot gets the feature's overall firing rate.
    """
    if n_tokens < 1 or batch_size < 1:
        raise ValueError(f"n_tokens={n_tokens}, batch_size={batch_size}: both are at least 1")
    acts_NSD = _seeded_sample(source, crosscoder, hook, n_tokens, seed)
    if len(acts_NSD) == 0:  # a rate of nothing is no rate, at one snapshot or all
        raise ValueError("no activations to count firing on; pass a non-empty source.")
    if per_snapshot and hasattr(crosscoder, "encode_per_snapshot"):
        counts_SF = _firing_counts(crosscoder, crosscoder.encode_per_snapshot, acts_NSD, batch_size)
        return (counts_SF.float().cpu() / len(acts_NSD)).T.contiguous()
    fired_F = _firing_counts(crosscoder, crosscoder.encode, acts_NSD, batch_size)
    rate_F = (fired_F.double() / len(acts_NSD)).float().cpu()
    return rate_F[:, None].expand(-1, acts_NSD.shape[1]).clone() if per_snapshot else rate_F


def _probe_errors(
    x_ND: torch.Tensor, labels_NK: torch.Tensor, train: torch.Tensor, test: torch.Tensor, ridge: float
) -> torch.Tensor:
    """Balanced held-out error of one ridge probe per label column, all sharing ``x_ND``."""
    x_ND = torch.cat([x_ND, torch.ones(len(x_ND), 1, dtype=x_ND.dtype)], dim=1)
    x_train, x_test = x_ND[train], x_ND[test]
    y_train_NK = labels_NK[train].double() * 2 - 1
    gram_DD = x_train.T @ x_train
    penalty = ridge * gram_DD.diagonal().mean().clamp_min(1e-12)
    weights_DK = torch.linalg.solve(
        gram_DD + penalty * torch.eye(len(gram_DD), dtype=gram_DD.dtype), x_train.T @ y_train_NK
    )

    pos_train = labels_NK[train]
    score_train = x_train @ weights_DK
    mean_pos = (score_train * pos_train).sum(0) / pos_train.sum(0).clamp_min(1)
    mean_neg = (score_train * ~pos_train).sum(0) / (~pos_train).sum(0).clamp_min(1)
    threshold_K = (mean_pos + mean_neg) / 2

    predict_NK = (x_test @ weights_DK) > threshold_K
    pos_test = labels_NK[test]
    miss = (~predict_NK & pos_test).sum(0) / pos_test.sum(0).clamp_min(1)
    false_alarm = (predict_NK & ~pos_test).sum(0) / (~pos_test).sum(0).clamp_min(1)
    return ((miss + false_alarm) / 2).float()


def reads_normalized(crosscoder: Crosscoder) -> bool:
    """Whether the crosscoder expects normalised activations (``store.read(normalize=True)``):
    true until normalisation factors are folded into its weights."""
    return not is_folded(crosscoder)


def _seeded_sample(source: Any, crosscoder: Crosscoder, hook: str | None, n_tokens: int, seed: int) -> torch.Tensor:
    """``n_tokens`` activations ``[n, S, D]`` drawn with ``seed``, as the crosscoder reads them."""
    return _load_activations(source, hook, n_tokens, torch.Generator().manual_seed(seed), reads_normalized(crosscoder))


def _load_activations(
    source: Any, hook: str | None, n_tokens: int, gen: torch.Generator, normalize: bool = True
) -> torch.Tensor:
    check_store_given(source)
    if isinstance(source, torch.Tensor):
        if source.ndim != 3:
            raise ValueError(f"activations have shape {tuple(source.shape)}; expected [n_tokens, n_snapshots, d_in].")
        if len(source) > n_tokens:
            source = source[torch.randperm(len(source), generator=gen)[:n_tokens]]
        return source.detach().float().cpu()
    if not hasattr(source, "read"):
        raise ValueError(
            f"source is a {type(source).__name__}; pass a [n_tokens, n_snapshots, d_in] tensor or an ActivationStore."
        )
    hook = resolve_hook(source, hook)
    idx = sample_index(int(source.n_tokens), n_tokens, gen)
    return source.read(hook, idx, normalize=normalize).float()


def sample_index(total: int, n_tokens: int, gen: torch.Generator) -> torch.Tensor:
    """The rows of a seeded sample of ``n_tokens`` of ``total`` tokens (all where fewer), in
    ascending order, so that a store reads them in order."""
    return torch.randperm(total, generator=gen)[: min(n_tokens, total)].sort().values


@torch.no_grad()
def device_and_dtype(crosscoder: Crosscoder) -> tuple[torch.device, torch.dtype]:
    """Where the crosscoder's parameters live (CPU float32 for an object without any)."""
    param = next(iter(crosscoder.parameters()), None) if hasattr(crosscoder, "parameters") else None
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


@torch.no_grad()
def _firing_counts(crosscoder: Crosscoder, encode: Any, acts_NSD: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Tokens on which each code entry of ``encode`` is positive, summed over ``acts_NSD`` (one
    token or more) batch by batch on the crosscoder's device (only the counts come back)."""
    device, dtype = device_and_dtype(crosscoder)
    counts = [(encode(x.to(device, dtype)) > 0).sum(0) for x in acts_NSD.split(batch_size)]
    return torch.stack(counts).sum(0)


def encode_in_batches(
    crosscoder: Crosscoder, acts_NSD: torch.Tensor, batch_size: int, columns: torch.Tensor | None = None
) -> torch.Tensor:
    """Codes of ``acts_NSD`` on the CPU, computed batch by batch where the crosscoder lives;
    ``columns`` picks features on that device first (moving ``[N, d_sae]`` off a GPU is
    the expensive part)."""
    device, dtype = device_and_dtype(crosscoder)
    columns = None if columns is None else columns.to(device)
    out = []
    for i in range(0, len(acts_NSD), batch_size):
        f_BF = crosscoder.encode(acts_NSD[i : i + batch_size].to(device, dtype))
        out.append((f_BF if columns is None else f_BF[:, columns]).float().cpu())
    return torch.cat(out)
