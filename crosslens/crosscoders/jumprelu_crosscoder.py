"""JumpReLU crosscoder (architecture ``"jumprelu_crosscoder"``), after Ge et al. 2025.

One learned threshold ``t_i`` per feature, shared by all snapshots (kept in float32).
The gate of feature i at snapshot s compares the feature's contribution there with it:

    gate_{i,s} = [h_i * ||W_dec[i, s]|| > t_i]

so a feature can be on at one snapshot and off at another. The code feeding snapshot
s's reconstruction is ``h_i * gate_{i,s}`` (Ge et al.'s per-snapshot activation).

The shared code and how decode reads it. ``encode`` returns the shared code
``f_i = h_i * any_s gate_{i,s}``: the pre-activation where the feature is on at any
snapshot, else 0. ``decode(f)`` re-applies the per-snapshot gate to the code it is
given, ``f_i * [f_i * ||W_dec[i, s]|| > t_i]``. For a code from ``encode`` this
recovers every gate exactly, so ``decode(encode(x)) == forward(x)``. Decoding an edited
code (scaled, interpolated, patched) re-gates it: a feature pushed below a snapshot's
threshold stops contributing there, as it would inside the model. Use
``encode_per_snapshot``/``decode_per_snapshot`` for the ``[..., S, F]`` code with no
re-gating. Training reconstructs from the per-snapshot code computed from ``h``
(``hook_sae_acts_post`` there sees the shared code but cannot edit the reconstruction).

The training step's gate, scores and decode (:func:`snapshot_gated_decode`). Their reference
is the per-snapshot code ``[S, N, F]`` itself, O(batch * S * d_sae) elementwise work a step
that the other architectures do not do. The run's plan names the faster paths a step may take
(:meth:`~crosslens.kernels.plan.KernelPlan.jumprelu_paths`), each computing the reference's
values and gradients to the order of float sums: while few entries are open (a trained code),
only the entries open or inside the threshold's window at some snapshot, as (token, feature)
pairs; while the code is young, the entries open at every snapshot through the shared code's
one matmul and the rest from pairs; on a CPU, the entries sorted by whether their gate is the
same at every snapshot. ``benchmarks/train.py`` and ``benchmarks/gpu.py`` measure them.

Straight-through estimator: the gate passes gradient to ``h`` where open and, through a
rectangle kernel of width ``jumprelu_bandwidth`` around the threshold, to ``t_i``:
``d/dt_i = -(t_i / (||W_dec[i, s]|| * eps)) * [|h_i ||W_dec[i,s]|| - t_i| < eps/2]``
times the upstream gradient, summed over tokens and snapshots. This is the JumpReLU
estimator of Rajamanoharan et al. (SAELens's) applied to ``h * ||W_dec[i, s]||`` and divided
back by the norm, so with one snapshot and unit decoder norms it equals SAELens's JumpReLU
gradient. Ge et al. do not spell out their estimator (a stored version of Llamascopium's
code, their library, learns a log-threshold and does not scale the window's gradient by the
upstream one), so this is SAELens's choice, not a reproduction of theirs.

Sparsity loss (Ge et al.):

    score_{i,s} = tanh(c * f_{i,s} * ||W_dec[i, s]||)
    p_i = mean over tokens and snapshots of score_{i,s}
    L_s = lambda * sum_i p_i * (1 + p_i / q)        (c = 4, q = 0.01 by default)

With ``sparsity_target=None`` the quadratic term is dropped and, for n_snapshots = 1,
this equals SAELens's JumpReLU ``tanh`` sparsity loss. The threshold trains at
``threshold_lr_scale`` (0.1) times the learning rate, through its own param group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAE, TrainCoefficientConfig, TrainingSAE, TrainStepInput, TrainStepOutput
from torch import nn

from crosslens.architectures import sparsity_coefficient_for
from crosslens.crosscoders.base import CrosscoderMixin, CrosscoderPass, CrosscoderTrainingMixin
from crosslens.crosscoders.config import (
    CrosscoderConfig,
    CrosscoderTrainingConfig,
    check_coefficient,
    coefficient_schedule,
)
from crosslens.crosscoders.per_snapshot_sae import divide_or_inf, non_negative_threshold
from crosslens.kernels.jumprelu_dense import per_snapshot_gated_decode, snapshot_gate_and_score
from crosslens.kernels.jumprelu_entry_classes import entry_classes_gated_decode
from crosslens.kernels.jumprelu_pairs import active_entries, snapshot_score_sums, sparse_gated_decode, sparse_step_pays
from crosslens.kernels.jumprelu_split import everywhere_and_rest, split_gated_decode, split_step_pays
from crosslens.kernels.plan import KernelPlan, plan_for
from crosslens.kernels.regated_decode import shared_code_decode
from crosslens.kernels.step_weights import StepWeights
from crosslens.kernels.weight_grads import WeightBlock, row_norms_now

ARCHITECTURE = "jumprelu_crosscoder"


@dataclass(kw_only=True)
class JumpReLUCrosscoderConfig(CrosscoderConfig, architecture=ARCHITECTURE):
    """Inference config of the JumpReLU crosscoder."""


@dataclass(kw_only=True)
class JumpReLUTrainingCrosscoderConfig(CrosscoderTrainingConfig, architecture=ARCHITECTURE):
    """Training config of the JumpReLU crosscoder (Ge et al.)."""

    jumprelu_init_threshold: float = 0.01
    """Initial threshold t_i of every feature (compared with h_i * ||W_dec[i, s]||)."""
    jumprelu_bandwidth: float = 0.05
    """Width eps of the rectangle kernel in the threshold's straight-through gradient."""
    l0_coefficient: float = None  # type: ignore[assignment]
    """lambda, weight of the tanh sparsity loss; None takes the shape-scaled default of
    :func:`crosslens.architectures.sparsity_coefficient_for`."""
    l0_warm_up_steps: int | None = None
    """Steps over which lambda rises linearly from 0; None: the architecture's share of the run
    (Ge et al.: 10%), set by the trainer."""
    jumprelu_tanh_scale: float = 4.0
    """c in tanh(c * f * ||W_dec||) (SAELens's name and default)."""
    sparsity_target: float | None = 0.01
    """q in sum_i p_i (1 + p_i / q); None drops the quadratic term (SAELens's tanh loss)."""
    threshold_lr_scale: float = 0.1
    """The threshold's learning rate as a fraction of the main learning rate."""
    target_l0: float | None = None
    """Active features per token to steer lambda to; None keeps lambda fixed. After the
    warm-up, every step multiplies lambda by ``(L0 / target_l0) ** l0_controller_gain``,
    with L0 the batch's mean active features per token, so the sparsity reached does not
    depend on the data's scale, width or frequency spectrum. ``l0_coefficient`` is the
    starting lambda; the running factor is a buffer saved with the weights, so a resumed
    run continues it exactly."""
    l0_controller_gain: float = 0.01
    """Exponent of the per-step lambda update of ``target_l0`` (0.01: lambda moves by at
    most about 1% per step while L0 is within a factor e of the target)."""
    closed_gate_decoder_grad: bool = False
    """Give decoder rows behind a closed gate the reconstruction gradient they would get if
    the gate were open; the forward pass is unchanged. Without it a row W_dec[i, s] whose
    gate is shut gets no gradient at all (the gate zeroes both its reconstruction and its
    tanh sparsity term) and keeps the norm it had when the gate closed. It gives every
    row a gradient but does not lower the norm left at absent snapshots (that follows
    excess firing, set by the sparsity coefficient), so it is off by default."""

    def __post_init__(self) -> None:
        if self.l0_coefficient is None:
            self.l0_coefficient = sparsity_coefficient_for(
                ARCHITECTURE, n_snapshots=self.n_snapshots, d_in=self.d_in, d_sae=self.d_sae
            )
        for name in ("jumprelu_bandwidth", "jumprelu_tanh_scale", "threshold_lr_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.jumprelu_init_threshold < 0:
            raise ValueError(f"jumprelu_init_threshold must be >= 0, got {self.jumprelu_init_threshold}.")
        if self.sparsity_target is not None and not self.sparsity_target > 0:
            raise ValueError(f"sparsity_target must be > 0 or None, got {self.sparsity_target}; Ge et al. use 0.01.")
        check_coefficient(self, "l0_coefficient", "l0_warm_up_steps")
        if self.target_l0 is not None and not self.target_l0 > 0:
            raise ValueError(f"target_l0 must be > 0 or None, got {self.target_l0}.")
        if not self.l0_controller_gain > 0:
            raise ValueError(f"l0_controller_gain must be > 0, got {self.l0_controller_gain}.")
        super().__post_init__()


class _JumpReLUCrosscoderMath(CrosscoderMixin):
    threshold: nn.Parameter

    def _add_threshold(self, init: float) -> None:
        # float32 whatever the weights' dtype: Adam's small steps on the threshold
        # would round away in bfloat16.
        self.threshold = nn.Parameter(
            torch.full((self.cfg.d_sae,), float(init), dtype=torch.float32, device=self.device)
        )

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._apply(*args, **kwargs)  # type: ignore[misc]
        threshold = self._parameters.get("threshold")  # type: ignore[attr-defined]
        if threshold is not None and threshold.dtype != torch.float32:
            threshold.data = threshold.data.float()
        # .to(dtype) casts every float buffer; the controller's many small steps need float64
        scale = self._buffers.get("l0_scale")  # type: ignore[attr-defined]
        if scale is not None and scale.dtype != torch.float64:
            self._buffers["l0_scale"] = scale.double()  # type: ignore[attr-defined]
        return out

    def _gates(self, code: torch.Tensor) -> torch.Tensor:
        """Per-snapshot gates [..., S, F] of a pre-activation or shared code."""
        contribution = code[..., None, :] * self.snapshot_norms().T.contiguous()
        return contribution > self.threshold.to(code.dtype)

    def encode_per_snapshot(
        self, x: Float[torch.Tensor, "... n_snapshots d_in"]
    ) -> Float[torch.Tensor, "... n_snapshots d_sae"]:
        """Per-snapshot code ``h_i * gate_{i,s}``."""
        h = self.hidden_pre(x)
        return torch.where(self._gates(h), h[..., None, :], 0.0)

    def encode(self, x: Float[torch.Tensor, "... n_snapshots d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """Shared code ``h_i * any_s gate_{i,s}``."""
        h = self.hidden_pre(x)
        f = torch.where(self._gates(h).any(dim=-2), h, 0.0)
        return self.hook_sae_acts_post(f)  # type: ignore[attr-defined]

    def decode_per_snapshot(
        self, feature_acts: Float[torch.Tensor, "... n_snapshots d_sae"]
    ) -> Float[torch.Tensor, "... n_snapshots d_in"]:
        """Linear decode of a per-snapshot code: ``x_hat_s = f_s W_dec[:, s] + b_dec[s]``."""
        f = feature_acts.to(self.dtype)
        recon = torch.einsum("...sf,fsd->...sd", f, self.W_dec) + self.b_dec
        return self._finish_decode(recon)

    def decode(self, feature_acts: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... n_snapshots d_in"]:
        """Decode a shared code, re-applying each snapshot's gate to it."""
        self.check_code_shape(feature_acts)
        f = feature_acts.to(self.dtype)
        return self.decode_per_snapshot(torch.where(self._gates(f), f[..., None, :], 0.0))

    @torch.no_grad()
    def snapshot_gate(
        self, s: int, state: dict[str, torch.Tensor], common: dict[str, Any]
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """A ``JumpReLUSAE``: feature i opens at snapshot s when ``h_i n_is > t_i``, i.e. when
        ``h_i > t_i / n_is`` (infinite where ``n_is = 0``: such a feature never reaches s). Codes
        equal."""
        t_F = non_negative_threshold(self.threshold.detach().to(self.W_dec.dtype), ARCHITECTURE)
        state["threshold"] = divide_or_inf(t_F, self.snapshot_norms().detach()[:, s])
        return JumpReLUSAE(JumpReLUSAEConfig(**common)), state


class JumpReLUCrosscoder(_JumpReLUCrosscoderMath, SAE[JumpReLUCrosscoderConfig]):
    """Inference JumpReLU crosscoder."""

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self._add_threshold(0.0)

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        # a training checkpoint also carries the lambda controller's factor, unused here
        state_dict.pop("l0_scale", None)


class JumpReLUTrainingCrosscoder(
    _JumpReLUCrosscoderMath,
    CrosscoderTrainingMixin,
    TrainingSAE[JumpReLUTrainingCrosscoderConfig],
):
    """Training JumpReLU crosscoder."""

    l0_scale: torch.Tensor

    def __init__(self, cfg: JumpReLUTrainingCrosscoderConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        # lambda = the scheduled l0 coefficient times this factor (1 without target_l0)
        self.register_buffer("l0_scale", torch.ones((), dtype=torch.float64, device=self.device))
        # training passes since the crosscoder was made, by the implementation that gated and
        # decoded them (plan.JUMPRELU_PATHS): what a benchmark or a test reads of the plan's choice
        self.pass_paths: Counter[str] = Counter()

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self._add_threshold(self.cfg.jumprelu_init_threshold)

    @property
    def controlled_coefficient(self) -> float:
        """The controller's factor times ``l0_coefficient``: lambda once warmed up."""
        return float(self.l0_scale) * self.cfg.l0_coefficient

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        state_dict.pop("l0_scale", None)
        # every training pass reads the threshold projected to >= 0; the last step's update,
        # which no pass followed, can leave a threshold held at 0 a rounding error below it
        state_dict["threshold"] = state_dict["threshold"].clamp(min=0.0)

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        # checkpoints written before the controller existed trained with a factor of 1
        state_dict.setdefault("l0_scale", torch.ones((), dtype=torch.float64))

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l0": coefficient_schedule(self.cfg, "l0_coefficient", "l0_warm_up_steps")}

    def latent_rows(self) -> list[tuple[nn.Parameter, int]]:
        return [*super().latent_rows(), (self.threshold, 0)]

    def reset_latent_state(self, idx_L: torch.Tensor) -> None:
        self.threshold.data[idx_L] = self.cfg.jumprelu_init_threshold

    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        others = [p for name, p in self.named_parameters() if name != "threshold" and p.requires_grad]
        return [
            {"params": others, "lr": lr},
            {"params": [self.threshold], "lr": lr * self.cfg.threshold_lr_scale},
        ]

    step_update_extras = ("warmed_up",)

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        # A negative threshold would open the gate for negative contributions;
        # project rather than clamp in the graph so the gradient still flows at 0.
        with torch.no_grad():
            self.threshold.data.clamp_(min=0.0)
        return super().training_forward_pass(step_input)

    def _whole_batch_numbers(self, chunks_NSD: Sequence[torch.Tensor]) -> dict[str, Any]:
        """The whole batch's ``p_F``: the quadratic sparsity term is not a mean over tokens, so a
        micro-batch's gradient of it needs the whole batch's ``p``; its scores alone, without
        the decode."""
        if self.cfg.sparsity_target is None:
            return {}
        self.threshold.data.clamp_(min=0.0)  # as training_forward_pass will
        chunks = [x.reshape(-1, self.cfg.n_snapshots, self.cfg.d_in) for x in chunks_NSD]
        norms_FS = self.snapshot_norms()
        score_sum_F = torch.zeros_like(self.threshold, dtype=torch.float32)
        for x in chunks:
            # in the training pass's layout: a micro-batched step's passes share the product
            h_NF = self.hidden_pre(x, feature_major=not self.cfg.closed_gate_decoder_grad)
            threshold_F = self.threshold.to(h_NF.dtype)  # as _training_encode compares it
            score_sum_F += snapshot_score_sums(
                h_NF, norms_FS, threshold_F, tanh_scale=self.cfg.jumprelu_tanh_scale, plan=self.kernel_plan
            )
        n_tokens = self.collectives.global_batch(sum(x.shape[0] for x in chunks))
        return {"p_F": self.collectives.world_sum(score_sum_F) / (n_tokens * self.total_snapshots)}

    def _training_encode(self, x_NSD: torch.Tensor) -> CrosscoderPass:
        h_NF = self.hidden_pre(x_NSD, feature_major=not self.cfg.closed_gate_decoder_grad)
        threshold_F = self.threshold.to(h_NF.dtype)
        kernel_args = {
            "bandwidth": self.cfg.jumprelu_bandwidth,
            "tanh_scale": self.cfg.jumprelu_tanh_scale,
            "plan": self.kernel_plan,
        }
        shared_NF = None
        if self.cfg.closed_gate_decoder_grad:  # its decode reads the per-snapshot code
            f_SNF, score_sum_F, open_anywhere_NF = snapshot_gate_and_score(
                h_NF, self.snapshot_norms(), threshold_F, **kernel_args
            )
            self.pass_paths["per snapshot"] += 1
            extras = {"f_SNF": f_SNF, "score_sum_F": score_sum_F}
        else:  # decoded with the gates, without an [S, N, F] code; the norms are its own
            recon_NSD, score_sum_F, open_anywhere_NF, shared_NF, path = snapshot_gated_decode(
                h_NF,
                self.W_dec,
                threshold_F,
                norm_factors_S=self.folded_norm_factors,
                step_weights=self.step_weights,
                block=self.weight_block,
                **kernel_args,
            )
            self.pass_paths[path] += 1
            extras = {"recon_NSD": recon_NSD, "score_sum_F": score_sum_F}
        if shared_NF is None or self.collectives.snapshot_size > 1:  # other ranks' gates count too
            with torch.no_grad():  # (a product with the mask: several times faster than torch.where on a CPU)
                shared_NF = h_NF * self.collectives.snapshot_any(open_anywhere_NF)
        f_NF = self.hook_sae_acts_post(shared_NF)
        return CrosscoderPass(x_NSD=x_NSD, hidden_pre_NF=h_NF, feature_acts_NF=f_NF, extras=extras)

    def _training_decode(self, fwd: CrosscoderPass) -> torch.Tensor:
        if "recon_NSD" in fwd.extras:
            return fwd.extras["recon_NSD"] + self.b_dec
        f_SNF = fwd.extras["f_SNF"]
        if self.cfg.closed_gate_decoder_grad:
            # the decoder learns from the shared code at every snapshot, closed gates included;
            # the forward is the per-snapshot code's
            recon_SND = shared_code_decode(f_SNF, self.W_dec, fwd.feature_acts_NF, self.step_weights, self.weight_block)
        else:
            recon_SND = torch.bmm(f_SNF, self.W_dec.transpose(0, 1))
        return recon_SND.transpose(0, 1) + self.b_dec

    def _sparsity_losses(self, step_input: TrainStepInput, fwd: CrosscoderPass) -> dict[str, torch.Tensor]:
        # p_i: the tanh scores' mean over every token and snapshot (of every rank)
        n_scores = self.collectives.global_batch(fwd.x_NSD.shape[0]) * self.total_snapshots
        p_F = self.collectives.world_sum(fwd.extras["score_sum_F"]) / n_scores
        q = self.cfg.sparsity_target
        whole_p_F = None if self.micro_step is None else self.micro_step.whole.get("p_F")
        if q is None:
            per_feature_F = p_F
        elif whole_p_F is None:
            per_feature_F = p_F * (1 + p_F / q)
        else:  # linearised at the whole batch's p: the micro-batches' weighted sum is its
            # value p (1 + p / q), and its gradient (1 + 2 p / q) dp the whole batch's
            whole_p_F = whole_p_F.to(p_F.dtype)
            per_feature_F = p_F + (2 * p_F - whole_p_F) * whole_p_F / q
        penalty = self.collectives.replicated_share(per_feature_F.sum())
        coefficient = step_input.coefficients["l0"] * self.l0_scale.to(penalty.dtype)
        if self.cfg.target_l0 is not None:
            fwd.extras["warmed_up"] = step_input.n_training_steps >= (self.cfg.l0_warm_up_steps or 0)
        return {"l0_loss": coefficient * penalty}

    @torch.no_grad()
    def _after_training_pass(self, fwd: CrosscoderPass) -> None:
        if self.cfg.target_l0 is None:
            return
        if fwd.extras["warmed_up"]:
            n_tokens = self.collectives.global_batch(fwd.x_NSD.shape[0])
            active = self.collectives.data_sum((fwd.feature_acts_NF != 0).sum().to(torch.float64))
            l0 = (active / n_tokens).clamp_min(1e-3)
            self.l0_scale.mul_((l0 / self.cfg.target_l0) ** self.cfg.l0_controller_gain)
        fwd.metrics["l0_scale"] = self.l0_scale.detach().clone()


def snapshot_gated_decode(
    h_NF: Float[torch.Tensor, "n d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    *,
    norm_factors_S: Float[torch.Tensor, " n_snapshots"],
    bandwidth: float,
    tanh_scale: float,
    plan: KernelPlan | None = None,
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """``(recon_NSD, score_sum_F, open_anywhere_NF, shared_code_NF, path)``: the decode of the
    per-snapshot gated code (no bias), the summed tanh scores, the any-snapshot gate, the shared
    code ``h * open_anywhere`` (no gradient), for decoder norms ``||W_dec[i, s]|| *
    norm_factors_S[s]`` (the training space's, as ``CrosscoderMixin.snapshot_norms``), and which of
    the plan's paths computed them (:data:`~crosslens.kernels.plan.JUMPRELU_PATHS`), the first in
    the plan's order (:meth:`~crosslens.kernels.plan.KernelPlan.jumprelu_paths`) that pays for this
    batch: from the pairs where few entries are open (``sparse_step_pays``), or always where the
    plan says; split where the rest are few (``split_step_pays``); by entry classes where few
    gates are mixed; else the per-snapshot reference. ``step_weights``: what the optimizer wrote
    for the step (the decoder rounded, its row norms), where the trainer hands it over; ``block``:
    the micro-batched step's :func:`~crosslens.kernels.weight_grads.deferred_weight_grads` block,
    where the crosscoder holds one."""
    plan = plan_for(h_NF.device, plan)
    paths = plan.jumprelu_paths(h_NF.device.type, torch.is_autocast_enabled(h_NF.device.type))
    gate, raw_FS = (bandwidth, tanh_scale), None  # the decoder norms without gradient, once computed
    if "pairs" in paths:
        raw_FS = row_norms_now(W_dec_FSD, step_weights, block)
        with torch.no_grad():
            args = (h_NF.detach(), raw_FS * norm_factors_S, threshold_F.detach(), bandwidth / 2)
            entries = active_entries(*args, plan)
        norms = (raw_FS, norm_factors_S)
        if paths == ("pairs",) or sparse_step_pays(entries, plan):
            *decoded, _ = sparse_gated_decode(
                h_NF, W_dec_FSD, threshold_F, norms, entries, gate, plan, step_weights, block
            )
            return (*decoded, "pairs")
        if "split" in paths:
            split = everywhere_and_rest(*args, entries)
            if split_step_pays(split[1], plan):
                decoded = split_gated_decode(
                    h_NF, W_dec_FSD, threshold_F, norms, split, gate, plan, step_weights, block
                )
                return (*decoded, "split")
    if "entry classes" in paths:
        classed_FS = row_norms_now(W_dec_FSD, step_weights, block) if raw_FS is None else raw_FS
        classed = (classed_FS, norm_factors_S)
        decoded = entry_classes_gated_decode(h_NF, W_dec_FSD, threshold_F, classed, gate, plan, block)
        if decoded is not None:
            return (*decoded, "entry classes")
    norms = (raw_FS, norm_factors_S)  # the norms the pairs' paths took, if any
    decoded = per_snapshot_gated_decode(h_NF, W_dec_FSD, threshold_F, norms, gate, plan, step_weights, block)
    return (*decoded, "per snapshot")


CLASSES = (JumpReLUCrosscoder, JumpReLUCrosscoderConfig, JumpReLUTrainingCrosscoder, JumpReLUTrainingCrosscoderConfig)
"""What :mod:`crosslens.crosscoders` registers with SAELens under ``jumprelu_crosscoder``: (inference class,
inference config, training class, training config)."""
