"""What the stages need from a crosscoder, as a structural type.

Analysis, the causal stage and the pretrained loader read a crosscoder's weights and call
its ``encode``/``decode``; they never need the SAELens class behind it. Typing those
arguments with :class:`Crosscoder` says exactly that, and any object with these members
(every crosslens architecture, a sharded copy, a test double) fits.

Shapes: ``S`` snapshots, ``D`` = ``d_in`` per snapshot, ``F`` = ``d_sae`` features.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float


@runtime_checkable
class CrosscoderCfg(Protocol):
    """The config fields every crosscoder carries (SAELens's ``SAEConfig`` plus ``n_snapshots``)."""

    n_snapshots: int
    """Number of training snapshots S read per token."""
    d_in: int
    """Width D of one snapshot's activation."""
    d_sae: int
    """Number of shared features F."""
    metadata: Any
    """SAELens ``SAEMetadata``: hook_name, suite provenance, activation_norm_factors."""


@runtime_checkable
class Crosscoder(Protocol):
    """A multi-snapshot crosscoder: one shared code, one decoder per snapshot.

    ``W_enc [S, D, F]``, ``b_enc [F]``, ``W_dec [F, S, D]``, ``b_dec [S, D]``.
    """

    cfg: CrosscoderCfg
    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor

    def encode(self, x: Float[torch.Tensor, "... n_snapshots d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """The shared sparse code of activations stacked over snapshots."""
        ...

    def decode(self, feature_acts: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... n_snapshots d_in"]:
        """Every snapshot's reconstruction from the shared code."""
        ...


__all__ = ["Crosscoder", "CrosscoderCfg"]
