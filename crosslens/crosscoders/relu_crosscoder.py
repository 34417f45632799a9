"""ReLU crosscoder (architecture ``"crosscoder"``): Anthropic's crosscoder, as used by
Bayazit et al.

    f = ReLU(h)
    loss = mean_batch sum_s ||x_hat_s - x_s||^2
         + lambda * mean_batch sum_i f_i * sum_s ||W_dec[i, s]||

lambda is the ``"l1"`` coefficient, warmed up linearly over ``l1_warm_up_steps``.
With n_snapshots = 1 this is SAELens's ``standard`` SAE with ``apply_b_dec_to_input=False``
(its L1 term is weighted by the decoder norm in the same way).

What the L1 term costs: a latent that writes ``d_i + a d_p`` pays ``||d_i + a d_p||`` where
two latents pay ``||d_i|| + a ||d_p||``, so where two features fire together on most tokens
the cheaper code absorbs part of one into the other's latent; the planted benchmark measures
it (:mod:`crosslens.analysis.absorption`). With more latents than features, the spare ones
also fit such pairs, and the absorbed code ends at a lower objective than training started
from the planted features (``scripts/planted_objective.py``): a better optimiser does not
undo it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from sae_lens.saes.sae import SAE, TrainCoefficientConfig, TrainingSAE, TrainStepInput
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

from crosslens.architectures import TRAINING_DEFAULTS
from crosslens.crosscoders.base import CrosscoderMixin, CrosscoderPass, CrosscoderTrainingMixin
from crosslens.crosscoders.config import (
    CrosscoderConfig,
    CrosscoderTrainingConfig,
    check_coefficient,
    coefficient_schedule,
)

ARCHITECTURE = "crosscoder"


@dataclass(kw_only=True)
class ReLUCrosscoderConfig(CrosscoderConfig, architecture=ARCHITECTURE):
    """Inference config of the ReLU crosscoder."""


@dataclass(kw_only=True)
class ReLUTrainingCrosscoderConfig(CrosscoderTrainingConfig, architecture=ARCHITECTURE):
    """Training config of the ReLU crosscoder."""

    l1_coefficient: float = TRAINING_DEFAULTS[ARCHITECTURE].sparsity_coefficient  # type: ignore[assignment]
    """lambda, weight of the decoder-norm-weighted L1 penalty (Bayazit et al.: 2; crosslens:
    1, ``crosslens.architectures.RELU_L1``)."""
    l1_warm_up_steps: int | None = None
    """Steps over which lambda rises linearly from 0; None: the architecture's share of the run
    (Bayazit et al.: 5%), set by the trainer."""

    def __post_init__(self) -> None:
        check_coefficient(self, "l1_coefficient", "l1_warm_up_steps")
        super().__post_init__()


class _ReLUCrosscoderMath(CrosscoderMixin):
    def encode(self, x: Float[torch.Tensor, "... n_snapshots d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        return self.hook_sae_acts_post(self.hidden_pre(x).relu())  # type: ignore[attr-defined]

    def decode(self, feature_acts: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... n_snapshots d_in"]:
        return self._finish_decode(self.decode_dense(feature_acts))

    def snapshot_gate(
        self, s: int, state: dict[str, torch.Tensor], common: dict[str, Any]
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """``f = ReLU(h)``: a ``StandardSAE``, codes equal."""
        return StandardSAE(StandardSAEConfig(**common)), state


class ReLUCrosscoder(_ReLUCrosscoderMath, SAE[ReLUCrosscoderConfig]):
    """Inference ReLU crosscoder: ``forward(x [..., S, D]) -> x_hat [..., S, D]``."""


class ReLUTrainingCrosscoder(_ReLUCrosscoderMath, CrosscoderTrainingMixin, TrainingSAE[ReLUTrainingCrosscoderConfig]):
    """Training ReLU crosscoder."""

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l1": coefficient_schedule(self.cfg, "l1_coefficient", "l1_warm_up_steps")}

    def _training_encode(self, x_NSD: torch.Tensor) -> CrosscoderPass:
        h_NF = self.hidden_pre(x_NSD)
        f_NF = self.hook_sae_acts_post(h_NF.relu())
        return CrosscoderPass(x_NSD=x_NSD, hidden_pre_NF=h_NF, feature_acts_NF=f_NF)

    def _sparsity_losses(self, step_input: TrainStepInput, fwd: CrosscoderPass) -> dict[str, torch.Tensor]:
        per_token_N = fwd.feature_acts_NF @ self.snapshot_norm_sums()
        l1 = self.collectives.token_mean_replicated(per_token_N)
        return {"l1_loss": step_input.coefficients["l1"] * l1}


CLASSES = (ReLUCrosscoder, ReLUCrosscoderConfig, ReLUTrainingCrosscoder, ReLUTrainingCrosscoderConfig)
"""What :mod:`crosslens.crosscoders` registers with SAELens under ``crosscoder``: (inference class,
inference config, training class, training config)."""
