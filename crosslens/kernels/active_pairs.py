"""The active (token, feature) pairs a sparse crosscoder step works from, shared by the eager
kernels (:mod:`crosslens.kernels.sparse`) and the Triton ones
(:mod:`crosslens.kernels.triton_sparse`).

Nothing here reads a device tensor back to the host: where each token's or feature's pairs
start is found by a binary search of the sorted ids (a CUDA ``bincount`` reads the largest id
first), and :meth:`ActivePairs.from_mask` takes the count the caller has already read, so that
a sparse step waits for the device once, where it decides to be sparse."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int


@dataclass
class ActivePairs:
    """Active (token, feature) pairs in token-major order (``token_A`` ascending, which
    :meth:`token_starts` needs)."""

    token_A: Int[torch.Tensor, " A"]
    feature_A: Int[torch.Tensor, " A"]
    n_tokens: int
    n_features: int

    @classmethod
    def from_mask(cls, active_NF: Bool[torch.Tensor, "n d_sae"], count: int | None = None) -> ActivePairs:
        """The set entries of ``active_NF``, row by row; ``count``: how many are set, when the
        caller knows (no device sync then)."""
        if count is None:
            token_A, feature_A = active_NF.nonzero(as_tuple=True)
        else:
            token_A, feature_A = torch.nonzero_static(active_NF, size=count).T.contiguous()
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
        n_pairs = feature_A.shape[0]
        # new_full, not new_tensor: a host list copied to a GPU waits for the device
        ends_N = torch.cat([starts_N[1:], starts_N.new_full((1,), n_pairs)])
        tokens = torch.arange(starts_N.shape[0], device=feature_A.device)
        token_A = tokens.repeat_interleave(ends_N - starts_N, output_size=n_pairs)
        return cls(token_A, feature_A, starts_N.shape[0], n_features)

    def token_starts(self) -> Int[torch.Tensor, " n_plus_1"]:
        """Where each token's pairs start, and the pair count last (CSR)."""
        return run_starts(self.token_A, self.n_tokens)

    def feature_order(self) -> tuple[Int[torch.Tensor, " A"], Int[torch.Tensor, " d_sae_plus_1"]]:
        """The pairs sorted by feature (stable: tokens ascending within one) and where each
        feature's pairs start in that order."""
        sorted_A, order_A = torch.sort(self.feature_A, stable=True)
        return order_A, run_starts(sorted_A, self.n_features)


def run_starts(sorted_ids: Int[torch.Tensor, " A"], n: int) -> Int[torch.Tensor, " n_plus_1"]:
    """Where the run of each id ``0 .. n-1`` starts in ``sorted_ids`` (ascending, all below
    ``n``), and their count last: CSR offsets, found without reading anything back."""
    ids = torch.arange(n + 1, device=sorted_ids.device, dtype=sorted_ids.dtype)
    return torch.searchsorted(sorted_ids, ids)
