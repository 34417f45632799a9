"""The active (token, feature) pairs a sparse crosscoder step works from, shared by the eager
kernels (:mod:`crosslens.crosscoders.sparse_kernels`) and the Triton ones
(:mod:`crosslens.crosscoders.triton_kernels`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int


@dataclass
class ActivePairs:
    """Active (token, feature) pairs in token-major order (``token_A`` ascending)."""

    token_A: Int[torch.Tensor, " A"]
    feature_A: Int[torch.Tensor, " A"]
    n_tokens: int
    n_features: int

    @classmethod
    def from_mask(cls, active_NF: Bool[torch.Tensor, "n d_sae"]) -> ActivePairs:
        token_A, feature_A = active_NF.nonzero(as_tuple=True)
        return cls(token_A, feature_A, *active_NF.shape)

    @classmethod
    def from_rows(cls, features_NK: Int[torch.Tensor, "n k"], n_features: int) -> ActivePairs:
        """``k`` features per token, each token's in ascending order."""
        N, K = features_NK.shape
        token_A = torch.arange(N, device=features_NK.device).repeat_interleave(K)
        return cls(token_A, features_NK.reshape(-1), N, n_features)

    @classmethod
    def from_offsets(cls, feature_A: torch.Tensor, starts_N: torch.Tensor, n_features: int) -> ActivePairs:
        """Flat pairs with ``starts_N`` where each token's start (``embedding_bag``'s offsets)."""
        ends_N = torch.cat([starts_N[1:], starts_N.new_tensor([feature_A.shape[0]])])
        tokens = torch.arange(starts_N.shape[0], device=feature_A.device)
        return cls(tokens.repeat_interleave(ends_N - starts_N), feature_A, starts_N.shape[0], n_features)

    def token_starts(self) -> Int[torch.Tensor, " n_plus_1"]:
        """Where each token's pairs start, and the pair count last (CSR)."""
        return _starts(self.token_A, self.n_tokens)

    def feature_order(self) -> tuple[Int[torch.Tensor, " A"], Int[torch.Tensor, " d_sae_plus_1"]]:
        """The pairs sorted by feature (stable: tokens ascending within one) and where each
        feature's pairs start in that order."""
        order_A = torch.sort(self.feature_A, stable=True).indices
        return order_A, _starts(self.feature_A, self.n_features)


def _starts(sorted_or_counted: torch.Tensor, n: int) -> torch.Tensor:
    """Where each of ``n`` ids' run starts in id order, and the total last (CSR offsets)."""
    counts = torch.bincount(sorted_or_counted, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])
