"""Shared math for multi-snapshot crosscoders built as SAELens architectures.

A crosscoder reads the activations of one token at every training snapshot,
``x[..., s, :]`` for ``s < n_snapshots``, encodes them into one shared sparse code
and decodes with one decoder per snapshot:

    h = sum_s x_s @ W_enc[s] + b_enc              W_enc [S, D, F], b_enc [F]
    x_hat_s = f @ W_dec[:, s] + b_dec[s]           W_dec [F, S, D], b_dec [S, D]

``||W_dec[i, s]||`` is the strength of feature ``i`` at snapshot ``s``. Encoding and
dense decoding are each one matmul on the flattened ``[S * D]`` axis, because
``W_enc [S, D, F]`` is contiguous as ``[S * D, F]`` and ``W_dec [F, S, D]`` as
``[F, S * D]``.

Activation normalisation is handled outside SAELens (``normalize_activations`` must
stay ``"none"``): the activation store multiplies snapshot ``s`` by ``factor_s``, and
``fold_activation_norm_scaling_factors(factors_S)`` moves those factors into the
weights so the crosscoder reads raw activations. The folded factors are remembered in
the ``folded_norm_factors`` buffer, and :meth:`CrosscoderMixin.decoder_norms` reports
norms in the normalised space the model was trained in (raw norm times the folded
factor). Every gate, top-k score and sparsity penalty reads those norms, so folding
changes no feature activation, only the scale of the reconstruction.

Decoder initialisation: every ``(feature, snapshot)`` row ``W_dec[i, s]`` starts with
norm ``decoder_init_norm`` (0.08, Bayazit et al.), so all snapshots start with equal
strength; ``W_enc[s] = W_dec[:, s].T``; biases start at zero.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from torch import nn

from crosslens.architectures import DEFAULT_DECODER_INIT_NORM
from crosslens.core.tensors import HostListing
from crosslens.crosscoders.collectives import LocalCollectives
from crosslens.crosscoders.folding import is_folded
from crosslens.crosscoders.per_snapshot_sae import snapshot_sae
from crosslens.kernels.compiled import compiled
from crosslens.kernels.plan import KernelPlan, plan_for
from crosslens.kernels.step_weights import StepWeights
from crosslens.kernels.weight_grads import WeightBlock, weight_matmul, weight_row_norms

SNAPSHOT_AXES = {"W_enc": 0, "W_dec": 1, "b_dec": 0, "folded_norm_factors": 0}
"""State-dict entries with a snapshot axis, and which axis it is. A snapshot-parallel
rank holds a contiguous block of that axis; every other entry is replicated."""

_LOCAL = LocalCollectives()


@dataclass
class MicroBatchStep:
    """A training step whose batch comes in micro-batches (see
    :meth:`CrosscoderTrainingMixin.begin_micro_batches`): the whole-batch numbers its losses read,
    and the extras each micro-batch's pass leaves for the once-per-step update."""

    whole: dict[str, Any]
    held: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CrosscoderStepInput(TrainStepInput):
    """SAELens's step input, with the dead features' listing where the trainer started it
    before the step."""

    dead_rows: HostListing | None = None
    """A listing of ``dead_neuron_mask`` (the same tensor) started before the step, so that
    reading it waits for none of the step's work; None: the pass starts one where it reads
    them (:meth:`CrosscoderTrainingMixin.training_pass`)."""


@dataclass
class CrosscoderPass:
    """Intermediate tensors of one training forward pass (leading axes flattened to N)."""

    x_NSD: torch.Tensor
    hidden_pre_NF: torch.Tensor
    feature_acts_NF: torch.Tensor
    recon_NSD: torch.Tensor = None  # type: ignore[assignment]  # set by training_pass
    dead_neuron_mask_F: torch.Tensor | None = None
    """The step's dead features (SAELens's ``dead_neuron_mask``), where the step has them."""
    dead_rows: HostListing | None = None
    """Their indices, listed on the host from a copy queued before the encode at the latest,
    where the architecture reads them (:meth:`CrosscoderMixin.reads_dead_rows`)."""
    extras: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


class CrosscoderMixin:
    """Weights, encode/decode plumbing, decoder norms and folding shared by every
    crosscoder class. Put it before ``SAE``/``TrainingSAE`` in the bases so its
    overrides of SAELens's 2-D assumptions win."""

    cfg: Any
    dtype: torch.dtype
    device: torch.device
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    folded_norm_factors: torch.Tensor
    collectives: LocalCollectives = _LOCAL
    """How snapshots and tokens held by other processes are reached; a plain process holds
    them all. ``crosslens.distributed.shard_crosscoder`` sets a mesh's collectives."""
    _kernel_plan: KernelPlan | None = None
    step_weights: StepWeights | None = None
    """What the optimizer wrote for the training step running (the weights rounded for autocast's
    matmuls, the decoder's row norms), which its kernels take by argument rather than read each
    weight again: handed over by the trainer for the length of a step
    (:meth:`~crosslens.kernels.step_weights.StepWeights.reading`); None outside one."""
    weight_block: WeightBlock | None = None
    """The micro-batched step's block, which sums the weights' gradients over its micro-batches
    and writes each once at its end, and which its kernels take by argument (``block=``): held
    for the length of the block (:func:`~crosslens.kernels.weight_grads.deferred_weight_grads`
    given this crosscoder); None outside one."""

    def use_kernel_plan(self, plan: KernelPlan | None) -> None:
        """Run the training step's kernels as ``plan`` says (the trainer hands over its run's
        plan); None: the device's default plan."""
        self._kernel_plan = plan

    @property
    def kernel_plan(self) -> KernelPlan:
        """The plan this crosscoder's kernels follow: the one handed over, else the default plan
        of the device its weights are on."""
        return plan_for(self.W_dec.device, self._kernel_plan)

    @property
    def n_snapshots(self) -> int:
        return self.cfg.n_snapshots

    @property
    def total_snapshots(self) -> int:
        """Snapshots of the whole crosscoder (``cfg.n_snapshots`` holds this rank's block)."""
        return self.collectives.n_snapshots_total or self.cfg.n_snapshots

    # ------------------------------------------------------------------ weights
    def initialize_weights(self) -> None:
        S, D, F_ = self.cfg.n_snapshots, self.cfg.d_in, self.cfg.d_sae
        # inference configs have no decoder_init_norm; their weights get loaded anyway
        init_norm = getattr(self.cfg, "decoder_init_norm", DEFAULT_DECODER_INIT_NORM)
        W_dec_FSD = torch.randn(F_, S, D, dtype=self.dtype, device=self.device)
        W_dec_FSD = W_dec_FSD / W_dec_FSD.norm(dim=-1, keepdim=True) * init_norm
        self.W_dec = nn.Parameter(W_dec_FSD)
        self.W_enc = nn.Parameter(W_dec_FSD.permute(1, 2, 0).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(F_, dtype=self.dtype, device=self.device))
        self.b_dec = nn.Parameter(torch.zeros(S, D, dtype=self.dtype, device=self.device))
        self.register_buffer(  # type: ignore[attr-defined]
            "folded_norm_factors", torch.ones(S, dtype=self.dtype, device=self.device)
        )

    # ----------------------------------------------------------- encode/decode
    def check_input_shape(self, x: torch.Tensor) -> None:
        S, D = self.cfg.n_snapshots, self.cfg.d_in
        if x.ndim < 2 or tuple(x.shape[-2:]) != (S, D):
            raise ValueError(
                f"crosscoder expects activations shaped [..., n_snapshots={S}, "
                f"d_in={D}], got {tuple(x.shape)}; stack the snapshots' "
                "activations on the second-to-last axis (ActivationProvider yields "
                "[batch, n_snapshots, d_in])."
            )

    def check_code_shape(self, feature_acts: torch.Tensor) -> None:
        """Refuse codes that are not ``[..., d_sae]``, what :meth:`encode` returns."""
        if feature_acts.shape[-1:] != (self.cfg.d_sae,):
            raise ValueError(
                f"codes shaped {tuple(feature_acts.shape)} given to decode; the crosscoder's are "
                f"[..., d_sae={self.cfg.d_sae}] (what encode returns)"
            )

    def process_sae_in(
        self, sae_in: Float[torch.Tensor, "... n_snapshots d_in"]
    ) -> Float[torch.Tensor, "... n_snapshots d_in"]:
        self.check_input_shape(sae_in)
        x = self.hook_sae_input(sae_in.to(self.dtype))  # type: ignore[attr-defined]
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x

    def hidden_pre(
        self, x: Float[torch.Tensor, "... n_snapshots d_in"], *, feature_major: bool = False
    ) -> Float[torch.Tensor, "... d_sae"]:
        """Shared pre-activation ``h = sum_s x_s W_enc[s] + b_enc`` (hooked).

        With ``feature_major`` (2-D input only) the ``[N, F]`` result is the transpose of a
        contiguous ``[F, N]`` tensor, for kernels that read each feature's tokens as a row
        (the JumpReLU crosscoder's training step); the matmul writes it in that layout."""
        x = self.process_sae_in(x)
        lead = x.shape[:-2]
        S, D, F_ = self.cfg.n_snapshots, self.cfg.d_in, self.cfg.d_sae
        x_flat, W_enc_flat = x.reshape(-1, S * D), self.W_enc.reshape(S * D, F_)
        feature_major = feature_major and len(lead) == 1
        read = {"feature_major": feature_major, "step_weights": self.step_weights, "block": self.weight_block}
        if self.collectives.snapshot_size == 1:
            h = weight_matmul(x_flat, W_enc_flat, self.b_enc, **read)
        else:  # this rank's snapshots' share of h, summed over the snapshot axis
            h = self.collectives.snapshot_sum(weight_matmul(x_flat, W_enc_flat, **read))
            h = h + (self.b_enc[:, None] if feature_major else self.b_enc)
        if feature_major:
            return self.hook_sae_acts_pre(h.T)  # type: ignore[attr-defined]
        return self.hook_sae_acts_pre(h.reshape(*lead, F_))  # type: ignore[attr-defined]

    def decode_dense(
        self, feature_acts: Float[torch.Tensor, "... d_sae"]
    ) -> Float[torch.Tensor, "... n_snapshots d_in"]:
        """Linear decode ``x_hat_s = f W_dec[:, s] + b_dec[s]`` without hooks."""
        S, D, F_ = self.cfg.n_snapshots, self.cfg.d_in, self.cfg.d_sae
        self.check_code_shape(feature_acts)
        lead = feature_acts.shape[:-1]
        f_NF = feature_acts.to(self.dtype).reshape(-1, F_)
        W_dec_flat = self.W_dec.reshape(F_, S * D)
        reads = {"step_weights": self.step_weights, "block": self.weight_block}
        out_N = weight_matmul(f_NF, W_dec_flat, self.b_dec.reshape(S * D), **reads)
        return out_N.reshape(*lead, S, D)

    def decode_active(
        self,
        indices: Int[torch.Tensor, "n k"] | Int[torch.Tensor, " pairs"],
        values: Float[torch.Tensor, "n k"] | Float[torch.Tensor, " pairs"],
        *,
        offsets: Int[torch.Tensor, " n"] | None = None,
        add_bias: bool = True,
    ) -> Float[torch.Tensor, "n n_snapshots d_in"]:
        """Decode only the active features (sparse gather) instead of a dense matmul.

        ``indices``/``values`` are either ``[n, k]`` (k features per row) or flat with
        ``offsets [n]`` giving where each row's features start (BatchTopK).
        """
        S, D, F_ = self.cfg.n_snapshots, self.cfg.d_in, self.cfg.d_sae
        out = F.embedding_bag(
            indices,
            self.W_dec.reshape(F_, S * D),
            offsets=offsets,
            mode="sum",
            per_sample_weights=values.to(self.W_dec.dtype),
        )
        if add_bias:
            out = out + self.b_dec.reshape(S * D)
        return out.reshape(-1, S, D)

    def _finish_decode(self, recon: torch.Tensor) -> torch.Tensor:
        recon = self.hook_sae_recons(recon)  # type: ignore[attr-defined]
        return self.run_time_activation_norm_fn_out(recon)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ decoder norms
    def snapshot_norms(self, raw_FS: torch.Tensor | None = None) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """Differentiable decoder norms in the normalised (training) space; ``raw_FS``:
        ``||W_dec[i, s]||`` where a step has them already, and then differentiable only as
        far as they are."""
        if raw_FS is None:
            raw_FS = weight_row_norms(self.W_dec, step_weights=self.step_weights, block=self.weight_block)
        return raw_FS * self.folded_norm_factors

    def snapshot_norm_sums(self, raw_FS: torch.Tensor | None = None) -> Float[torch.Tensor, " d_sae"]:
        """Differentiable ``sum_s ||W_dec[i, s]||`` over every snapshot (normalised space),
        from ``raw_FS`` where given (:meth:`snapshot_norms`)."""
        return self.collectives.snapshot_sum(self.snapshot_norms(raw_FS).sum(dim=1))

    @torch.no_grad()
    def decoder_norms(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """Strength of feature i at snapshot s, ``||W_dec[i, s]||``, measured in the
        normalised space the crosscoder was trained in, so folding the normalisation
        factors into the weights does not change it. See :meth:`raw_decoder_norms`."""
        return self.snapshot_norms().detach().clone()

    @torch.no_grad()
    def raw_decoder_norms(self) -> Float[torch.Tensor, "d_sae n_snapshots"]:
        """``||W_dec[i, s]||`` of the stored weights (raw activation units once folded)."""
        return self.W_dec.norm(dim=-1).detach().clone()

    # ------------------------------------------------------------------ folding
    @torch.no_grad()
    def fold_activation_norm_scaling_factors(self, factors_S: Sequence[float] | torch.Tensor | None = None) -> None:
        """Fold per-snapshot normalisation factors into the weights.

        The crosscoder was trained on ``factor_s * a_s``. Afterwards it reads raw
        ``a_s`` and returns raw-scale reconstructions: ``W_enc[s] *= factor_s``,
        ``W_dec[:, s] /= factor_s``, ``b_dec[s] /= factor_s``. Codes are unchanged.
        Without ``factors_S``, ``cfg.metadata.activation_norm_factors`` is used.
        """
        if factors_S is None:
            factors_S = self.cfg.metadata.get("activation_norm_factors")
            if factors_S is None:
                raise ValueError(
                    "no factors given and cfg.metadata has no activation_norm_factors; "
                    "pass factors_S=store.norm_factors(hook)."
                )
            if is_folded(self):
                raise ValueError(
                    "the metadata's activation_norm_factors are already folded into "
                    "this crosscoder (folded_norm_factors is not all ones); pass "
                    "factors_S explicitly to fold further factors."
                )
        factors = torch.as_tensor(factors_S, dtype=torch.float64).flatten()
        if factors.shape != (self.cfg.n_snapshots,):
            raise ValueError(
                f"need one factor per snapshot ({self.cfg.n_snapshots}), got shape {tuple(factors.shape)}."
            )
        if not bool(torch.all(torch.isfinite(factors) & (factors > 0))):
            raise ValueError(f"normalisation factors must be finite and > 0, got {factors.tolist()}.")
        factors = factors.to(self.device, self.dtype)
        self.W_enc.mul_(factors[:, None, None])
        self.W_dec.div_(factors[None, :, None])
        self.b_dec.div_(factors[:, None])
        self.folded_norm_factors.mul_(factors)
        self.cfg.metadata.activation_norm_factors_folded = True

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """SAELens's scalar version: the same factor for every snapshot."""
        self.fold_activation_norm_scaling_factors([float(scaling_factor)] * self.cfg.n_snapshots)

    def fold_activation_whitening(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "crosscoders do not support covariance whitening; normalise each snapshot "
            "by a scalar and use fold_activation_norm_scaling_factors."
        )

    @torch.no_grad()
    def get_W_dec_norm(self) -> Float[torch.Tensor, " d_sae"]:
        """Norm of each feature's decoder concatenated over snapshots."""
        S, D, F_ = self.cfg.n_snapshots, self.cfg.d_in, self.cfg.d_sae
        return self.W_dec.reshape(F_, S * D).norm(dim=-1).clamp(min=1e-8)

    @torch.no_grad()
    def fold_and_get_W_dec_norm(self) -> torch.Tensor:
        """Scale each feature so its concatenated decoder row has unit norm.

        ``h_i`` grows by ``c_i`` while every ``||W_dec[i, s]||`` shrinks by it, so
        gates, top-k scores and reconstructions are unchanged; the code f_i scales by c_i.
        """
        norms_F = self.get_W_dec_norm()
        self.W_dec.div_(norms_F[:, None, None])
        self.W_enc.mul_(norms_F[None, None, :])
        self.b_enc.mul_(norms_F)
        return norms_F

    def fold_W_dec_norm(self) -> None:
        self.fold_and_get_W_dec_norm()

    # ------------------------------------------------------------------ logging
    @torch.no_grad()
    def log_histograms(self) -> dict[str, np.ndarray]:
        norms_FS = self.decoder_norms().float().cpu().numpy()
        return {f"weights/decoder_norms/snapshot_{s}": norms_FS[:, s] for s in range(norms_FS.shape[1])}

    # ---------------------------------------------------------------- sharing
    def snapshot_gate(
        self, s: int, state: dict[str, torch.Tensor], common: dict[str, Any]
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """The SAELens SAE whose gate is this architecture's snapshot-``s`` gate in per-snapshot
        mode, and its weights: ``state`` holds the snapshot's raw-scale weights
        (``SnapshotCodec.raw_weights``), ``common`` the fields every SAE config of the view shares
        (see :mod:`crosslens.crosscoders.per_snapshot_sae`). Each architecture defines its own."""
        raise NotImplementedError(
            f"{type(self).__name__} defines no snapshot_gate: snapshot_sae cannot translate its gate"
        )

    def snapshot_sae(self, s: int, **kwargs: Any) -> Any:
        """Snapshot ``s`` as a plain SAELens SAE on the raw activation scale, for
        ``HookedSAETransformer.add_sae`` and any SAE tool; see
        :func:`crosslens.crosscoders.per_snapshot_sae.snapshot_sae`."""
        return snapshot_sae(self, s, **kwargs)

    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        weights_path, cfg_path = super().save_model(path)  # type: ignore[misc]
        sort_json_keys(cfg_path)
        return weights_path, cfg_path


def squared_errors(
    recon_NSD: Float[torch.Tensor, "n n_snapshots d_in"],
    x_NSD: Float[torch.Tensor, "n n_snapshots d_in"],
    aux_recon_NSD: Float[torch.Tensor, "n n_snapshots d_in"] | None = None,
) -> tuple[Float[torch.Tensor, " n"], Float[torch.Tensor, " n"] | None]:
    """``(sum_s ||x_hat_s - x_s||^2, sum_s ||a_s - (x_s - x_hat_s)||^2)`` per token: the
    reconstruction's squared error and, given an auxiliary reconstruction ``a`` (TopK's
    dead features), its squared error against the residual ``x - x_hat``, which is detached
    (the auxiliary loss trains the dead features alone). ``x`` is compared in ``x_hat``'s dtype."""
    error_NSD = recon_NSD - x_NSD.to(recon_NSD.dtype)
    sq_err_N = error_NSD.pow(2).sum(dim=(-2, -1))
    if aux_recon_NSD is None:
        return sq_err_N, None
    # a - (x - x_hat) is a + (x_hat - x) exactly: negating a difference rounds nothing
    return sq_err_N, (aux_recon_NSD + error_NSD.detach()).pow(2).sum(dim=(-2, -1))


def reconstruction_errors(
    recon_NSD: Float[torch.Tensor, "n n_snapshots d_in"],
    x_NSD: Float[torch.Tensor, "n n_snapshots d_in"],
    aux_recon_NSD: Float[torch.Tensor, "n n_snapshots d_in"] | None = None,
    plan: KernelPlan | None = None,
) -> tuple[Float[torch.Tensor, " n"], Float[torch.Tensor, " n"] | None]:
    """:func:`squared_errors`, compiled where the plan says (``compile``: CUDA by default). Op by
    op, the two errors take about ten passes over ``[N, S, D]`` tensors forward and backward
    (the cast of ``x``, the differences, their squares, the squares' gradients); compiled, one
    read of the inputs forward, and one read of them and one write of the two gradients
    backward."""
    if plan_for(recon_NSD.device, plan).compile:
        return compiled(squared_errors)(recon_NSD, x_NSD, aux_recon_NSD)
    return squared_errors(recon_NSD, x_NSD, aux_recon_NSD)


class CrosscoderTrainingMixin(CrosscoderMixin):
    """Training loss plumbing. Each architecture implements ``_training_encode``
    (fills a :class:`CrosscoderPass` up to the code), ``_training_decode`` and
    ``_sparsity_losses``; the reconstruction loss is shared:
    ``mse_loss = mean over batch of sum_s ||x_hat_s - x_s||^2``."""

    def _training_encode(self, x_NSD: torch.Tensor) -> CrosscoderPass:
        raise NotImplementedError

    def _training_decode(self, fwd: CrosscoderPass) -> torch.Tensor:
        return self.decode_dense(fwd.feature_acts_NF)

    def _sparsity_losses(self, step_input: TrainStepInput, fwd: CrosscoderPass) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _after_training_pass(self, fwd: CrosscoderPass) -> None:
        """Hook for state updated once per step (BatchTopK's running threshold)."""

    step_update_extras: tuple[str, ...] = ()
    """Keys of ``CrosscoderPass.extras`` that :meth:`_after_training_pass` reads (where set)."""

    micro_step: MicroBatchStep | None = None
    """Set while a step's batch is trained in micro-batches (:meth:`begin_micro_batches`)."""

    def _whole_batch_numbers(self, chunks_NSD: Sequence[torch.Tensor]) -> dict[str, Any]:
        """What a micro-batch's loss needs from the whole batch before any backward (no grad)."""
        return {}

    def begin_micro_batches(self, chunks_NSD: Sequence[torch.Tensor]) -> None:
        """Start a training step whose batch is ``chunks_NSD``, each chunk one
        ``training_forward_pass`` whose loss the caller weights by its share of the batch.
        Whole-batch numbers a loss is not linear in come first, from a gradient-free pass over
        every chunk; the once-per-step update waits for :meth:`finish_micro_batches`, which
        ends the step (as does setting ``micro_step`` to None, on an error)."""
        with torch.no_grad():
            self.micro_step = MicroBatchStep(whole=self._whole_batch_numbers(chunks_NSD))

    def finish_micro_batches(
        self, x_NSD: torch.Tensor, hidden_pre_NF: torch.Tensor, feature_acts_NF: torch.Tensor
    ) -> dict[str, Any]:
        """The once-per-step update from the whole batch (its micro-batches' results joined);
        returns the metrics it sets."""
        assert self.micro_step is not None, "finish_micro_batches ends a step begin_micro_batches started"
        extras: dict[str, Any] = {}
        for key in self.micro_step.held[0]:
            values = [held[key] for held in self.micro_step.held]
            extras[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else values[0]
        fwd = CrosscoderPass(x_NSD=x_NSD, hidden_pre_NF=hidden_pre_NF, feature_acts_NF=feature_acts_NF, extras=extras)
        self.micro_step = None
        self._after_training_pass(fwd)
        return fwd.metrics

    def latent_rows(self) -> list[tuple[nn.Parameter, int]]:
        """Each parameter that holds one slice per latent, with the axis the latents lie along:
        what resampling a latent rewrites, and whose optimizer state it clears."""
        return [(self.W_enc, 2), (self.W_dec, 0), (self.b_enc, 0)]  # type: ignore[attr-defined]

    def reset_latent_state(self, idx_L: torch.Tensor) -> None:
        """Return the training state the latents ``idx_L`` hold beside their weights to its
        initial value (none here; JumpReLU's thresholds)."""

    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam param groups; JumpReLU gives its threshold a smaller learning rate."""
        params = [p for p in self.parameters() if p.requires_grad]  # type: ignore[attr-defined]
        return [{"params": params, "lr": lr}]

    def training_pass(
        self,
        sae_in: Float[torch.Tensor, "... n_snapshots d_in"],
        dead_neuron_mask: Bool[torch.Tensor, " d_sae"] | None = None,
        dead_rows: HostListing | None = None,
    ) -> CrosscoderPass:
        """The step's encode and decode; ``dead_rows``: a listing of ``dead_neuron_mask``
        already started (:class:`CrosscoderStepInput`), else one is started here."""
        self.check_input_shape(sae_in)
        x_NSD = sae_in.reshape(-1, self.cfg.n_snapshots, self.cfg.d_in)
        listing = None
        if dead_neuron_mask is not None and self.reads_dead_rows():
            if dead_rows is not None and dead_rows.mask is not dead_neuron_mask:
                raise ValueError(
                    "dead_rows lists another tensor than dead_neuron_mask; start it with "
                    "HostListing.start(dead_neuron_mask), or pass dead_rows=None."
                )
            # queued ahead of the encode, so that reading the list waits for the mask alone
            listing = dead_rows or HostListing.start(dead_neuron_mask.to(torch.bool))
        fwd = self._training_encode(x_NSD)
        fwd.dead_neuron_mask_F, fwd.dead_rows = dead_neuron_mask, listing
        fwd.recon_NSD = self._finish_decode(self._training_decode(fwd))
        return fwd

    def reads_dead_rows(self) -> bool:
        """Whether the training pass reads the indices of the dead features (to size work by
        their count), so that :meth:`training_pass` lists them (``fwd.dead_rows``)."""
        return False

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        dead_rows = step_input.dead_rows if isinstance(step_input, CrosscoderStepInput) else None
        fwd = self.training_pass(step_input.sae_in, step_input.dead_neuron_mask, dead_rows)
        sq_err_N, aux_sq_err_N = reconstruction_errors(
            fwd.recon_NSD, fwd.x_NSD, fwd.extras.get("aux_recon_NSD"), self.kernel_plan
        )
        if aux_sq_err_N is not None:
            fwd.extras["aux_sq_err_N"] = aux_sq_err_N
        mse_loss = self.collectives.token_mean(sq_err_N)
        losses = {"mse_loss": mse_loss, **self._sparsity_losses(step_input, fwd)}
        loss = torch.stack(list(losses.values())).sum()
        if self.micro_step is None:
            self._after_training_pass(fwd)
        else:  # the update waits for the whole batch
            held = {key: fwd.extras[key] for key in self.step_update_extras if key in fwd.extras}
            self.micro_step.held.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in held.items()})
        return TrainStepOutput(
            sae_in=fwd.x_NSD,
            sae_out=fwd.recon_NSD,
            feature_acts=fwd.feature_acts_NF,
            hidden_pre=fwd.hidden_pre_NF,
            loss=loss,
            losses=losses,
            metrics=fwd.metrics,
        )

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_input_shape(x)
        lead = x.shape[:-2]
        fwd = self._training_encode(x.reshape(-1, self.cfg.n_snapshots, self.cfg.d_in))
        F_ = self.cfg.d_sae
        return fwd.feature_acts_NF.reshape(*lead, F_), fwd.hidden_pre_NF.reshape(*lead, F_)

    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        weights_path, cfg_path = super().save_inference_model(path)  # type: ignore[misc]
        sort_json_keys(cfg_path)
        return weights_path, cfg_path

    def calculate_aux_loss(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError("crosscoders compute all loss terms in training_forward_pass; call that instead.")


def sort_json_keys(path: Path) -> None:
    """Rewrite the JSON file at ``path`` with sorted keys: SAELens writes a cfg.json in the order its
    dicts were filled, which differs between processes, and the same seed must give the same bytes."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json.loads(path.read_text()), sort_keys=True))
    os.replace(tmp, path)


def set_crosscoder_metadata(
    cfg: Any,
    *,
    provenance: Mapping[str, Any] | None = None,
    hook_name: str | None = None,
    activation_norm_factors: Sequence[float] | torch.Tensor | None = None,
) -> None:
    """Record where the training activations came from in ``cfg.metadata`` (saved in cfg.json).

    ``provenance`` is ``CheckpointSuite.provenance()`` (family, model_id, snapshots with
    revision, step, tokens_seen, weights_sha256); ``activation_norm_factors`` are the
    per-snapshot factors the activations were multiplied by (``store.norm_factors(hook)``).
    """
    S = cfg.n_snapshots
    if provenance is not None:
        snapshots = provenance.get("snapshots")
        if snapshots is not None and len(snapshots) != S:
            raise ValueError(
                f"provenance lists {len(snapshots)} snapshots but the crosscoder has "
                f"n_snapshots={S}; pass the provenance of the suite the activations came from."
            )
        cfg.metadata.suite = dict(provenance)
        if provenance.get("model_id") is not None:
            cfg.metadata.model_name = provenance["model_id"]
    if hook_name is not None:
        cfg.metadata.hook_name = hook_name
    if activation_norm_factors is not None:
        factors = [float(v) for v in torch.as_tensor(activation_norm_factors).flatten().tolist()]
        if len(factors) != S or not all(math.isfinite(v) and v > 0 for v in factors):
            raise ValueError(f"activation_norm_factors must be {S} finite positive numbers, got {factors}.")
        cfg.metadata.activation_norm_factors = factors
