"""TopK crosscoder (architecture ``"topk_crosscoder"``).

Each token keeps the k features with the largest ``ReLU(h_i) * sum_s ||W_dec[i, s]||``
(the feature's total contribution across snapshots); the code keeps ``ReLU(h_i)`` for
them. Loss: ``mean_batch sum_s ||x_hat_s - x_s||^2``, plus the ReLU crosscoder's L1 term on
the kept codes, ``l1_coefficient * mean_batch sum_i f_i * sum_s ||W_dec[i, s]||``, plus the
auxiliary-k loss on dead features: the ``aux_k`` dead features with the largest ``h_i * sum_s ||W_dec[i, s]||``
reconstruct the residual ``x - x_hat`` (detached, no decoder bias), scaled by
``aux_loss_coefficient * min(n_dead / aux_k, 1)``. ``aux_k`` defaults to half the input
width, ``n_snapshots * d_in // 2`` (the TopK SAE papers' heuristic).

Why an L1 term when k already sets the sparsity: k counts features per token, not the
snapshots a feature writes to. With nothing pricing a decoder row, a feature's row at a
snapshot where it is absent settles on whatever the tokens it fires on carry there (a
co-firing partner, or another feature whose lifetime does not overlap), so its decoder norms
date its emergence wrongly. The L1 term costs every row its norm, so a row stays near zero
where the feature does not help. ``l1_coefficient = 0`` gives the plain TopK loss.

What a fixed k costs: where two features fire together on most tokens, one latent that
writes both saves a slot on each of those tokens, so TopK absorbs one into the other more
than BatchTopK (whose budget is the batch's) or JumpReLU do; the planted benchmark measures
it (:mod:`crosslens.analysis.absorption`), and the absorbed code ends at a lower objective
than training started from the planted features (``scripts/planted_objective.py``).

With k much smaller than d_sae, training decodes only the active features instead of a
dense ``[N, F] @ [F, S*D]`` matmul: a gather of their decoder rows through
``embedding_bag`` on a CPU (``benchmarks/train.py`` measures the speed-up), and on CUDA the
Triton gather-sum kernels of :mod:`crosslens.kernels.sparse`, whose decoder
gradient is a sparse-transpose-dense matmul rather than ``embedding_bag``'s backward.

With n_snapshots = 1 and ``l1_coefficient = 0`` this is SAELens's ``topk`` SAE with
``rescale_acts_by_decoder_norm=True``: same selection, reconstruction and losses; our
code is ``ReLU(h)`` where SAELens's is ``ReLU(h) * ||W_dec||``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from sae_lens.saes.sae import SAE, TrainCoefficientConfig, TrainingSAE, TrainStepInput
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from crosslens.architectures import DEFAULT_K, TOPK_L1
from crosslens.crosscoders.base import CrosscoderMixin, CrosscoderPass, CrosscoderTrainingMixin
from crosslens.crosscoders.config import (
    CrosscoderConfig,
    CrosscoderTrainingConfig,
    check_coefficient,
    coefficient_schedule,
)
from crosslens.kernels.active_pairs import ActivePairs
from crosslens.kernels.plan import KernelPlan
from crosslens.kernels.sparse import (
    DenseRows,
    autocast_copy,
    dense_rows_decode,
    gather_decode_and_norms,
)
from crosslens.kernels.weight_grads import block_listing, row_norms_now

ARCHITECTURE = "topk_crosscoder"


@dataclass(kw_only=True)
class TopKCrosscoderConfig(CrosscoderConfig, architecture=ARCHITECTURE):
    """Inference config of the TopK crosscoder."""

    k: int = DEFAULT_K
    """Number of features kept per token."""

    def __post_init__(self) -> None:
        _check_k(self.k, self.d_sae)
        super().__post_init__()


@dataclass(kw_only=True)
class TopKTrainingCrosscoderConfig(CrosscoderTrainingConfig, architecture=ARCHITECTURE):
    """Training config of the TopK crosscoder."""

    k: int = DEFAULT_K
    """Number of features kept per token."""
    aux_loss_coefficient: float = 1.0
    """Weight of the auxiliary-k loss on dead features (SAELens's default; OpenAI used 1/32)."""
    aux_k: int | None = None
    """Dead features used by the auxiliary loss; None means n_snapshots * d_in // 2."""
    l1_coefficient: float = TOPK_L1
    """Weight of the L1 term on the kept codes, ``f_i * sum_s ||W_dec[i, s]||`` (the ReLU
    crosscoder's), which keeps decoder rows near zero at snapshots where their feature is
    absent (``crosslens.architectures.TOPK_L1``); 0: plain TopK."""
    l1_warm_up_steps: int | None = None
    """Steps over which ``l1_coefficient`` rises linearly from 0; None: the architecture's share
    of the run (none)."""

    def __post_init__(self) -> None:
        _check_k(self.k, self.d_sae)
        check_coefficient(self, "l1_coefficient", "l1_warm_up_steps")
        if self.aux_loss_coefficient < 0:
            raise ValueError(f"aux_loss_coefficient must be >= 0, got {self.aux_loss_coefficient}.")
        if self.aux_k is not None and self.aux_k < 1:
            raise ValueError(f"aux_k must be >= 1 or None, got {self.aux_k}.")
        super().__post_init__()


def _check_k(k: float, d_sae: int) -> None:
    if not 0 < k <= d_sae:
        raise ValueError(f"k must be in (0, d_sae={d_sae}], got {k}; lower k or raise d_sae.")


class _TopKCrosscoderMath(CrosscoderMixin):
    def selection_scores(self, h: torch.Tensor, norm_sums_F: torch.Tensor | None = None) -> torch.Tensor:
        """``ReLU(h_i) * sum_s ||W_dec[i, s]||``, the quantity top-k ranks (no gradient);
        ``norm_sums_F``: the step's :meth:`snapshot_norm_sums`, when it has them already."""
        with torch.no_grad():
            return h.relu() * (self.snapshot_norm_sums() if norm_sums_F is None else norm_sums_F)

    def encode(self, x: Float[torch.Tensor, "... n_snapshots d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        h = self.hidden_pre(x)
        idx = self.selection_scores(h).topk(self.cfg.k, dim=-1, sorted=False).indices
        f = torch.zeros_like(h).scatter(-1, idx, h.relu().gather(-1, idx))
        return self.hook_sae_acts_post(f)  # type: ignore[attr-defined]

    def decode(self, feature_acts: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... n_snapshots d_in"]:
        return self._finish_decode(self.decode_dense(feature_acts))

    @torch.no_grad()
    def snapshot_gate(
        self, s: int, state: dict[str, torch.Tensor], common: dict[str, Any]
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """A ``TopKSAE`` whose code is the score TopK ranks, ``ReLU(h_i) w_i`` with ``w_i = sum_s
        n_is``: its encoder and bias scaled by ``w_i`` and its decoder rows divided by it. Same
        active features, same reconstruction; the code is the crosscoder's times ``w_i``."""
        w_F = self.snapshot_norms().detach().sum(dim=1)
        state["W_enc"] = state["W_enc"] * w_F
        state["b_enc"] = state["b_enc"] * w_F
        # a feature with no decoder anywhere scores 0 and reconstructs nothing
        state["W_dec"] = torch.where(w_F[:, None] > 0, state["W_dec"] / w_F.clamp(min=1e-30)[:, None], 0.0)
        config = TopKSAEConfig(k=int(self.cfg.k), rescale_acts_by_decoder_norm=False, **common)
        return TopKSAE(config), state


class TopKCrosscoder(_TopKCrosscoderMath, SAE[TopKCrosscoderConfig]):
    """Inference TopK crosscoder."""


class TopKTrainingCrosscoder(_TopKCrosscoderMath, CrosscoderTrainingMixin, TrainingSAE[TopKTrainingCrosscoderConfig]):
    """Training TopK crosscoder."""

    @property
    def uses_sparse_decode(self) -> bool:
        """Whether the step decodes only the kept features, as the plan says (``topk_sparse_decode``;
        by default where ``k / d_sae`` is at most its ``topk_sparse_density``)."""
        plan = self.kernel_plan
        if plan.topk_sparse_decode is None:
            return self.cfg.k <= self.cfg.d_sae * plan.topk_sparse_density
        return plan.topk_sparse_decode

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l1": coefficient_schedule(self.cfg, "l1_coefficient", "l1_warm_up_steps")}

    def _kernels(self) -> KernelPlan | None:
        """The plan whose pairs' sums decode (``topk_pairs_kernels``: the Triton backend by
        default, and any micro-batched step); None where ``embedding_bag`` does."""
        plan = self.kernel_plan
        pairs = plan.backend != "eager" if plan.topk_pairs_kernels is None else plan.topk_pairs_kernels
        return plan if pairs or block_listing(self.weight_block, self.W_dec) is not None else None

    def _one_group(self, W_FSD: torch.Tensor | None) -> torch.Tensor | None:
        """``W_dec`` (or its rounded copy) as the kernels' one group, ``[F, 1, S * d_in]``."""
        return None if W_FSD is None else W_FSD.reshape(self.cfg.d_sae, 1, self.cfg.n_snapshots * self.cfg.d_in)

    def _pairs(self, indices: torch.Tensor, offsets: torch.Tensor | None) -> ActivePairs:
        if offsets is None:
            return ActivePairs.from_rows(indices, self.cfg.d_sae)
        return ActivePairs.from_offsets(indices, offsets, self.cfg.d_sae)

    def _with_bias(self, out: torch.Tensor) -> torch.Tensor:
        S, D = self.cfg.n_snapshots, self.cfg.d_in
        return (out + self.b_dec.reshape(S * D)).reshape(-1, S, D)

    def decode_kept(
        self, fwd: CrosscoderPass, indices: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The step's sparse decode of its kept pairs. Through the pairs' kernels (CUDA), the
        decode's node also differentiates the decoder norms and decodes the auxiliary code
        (:func:`~crosslens.kernels.sparse.gather_decode_and_norms`): the encode took
        the norms without gradient (:meth:`step_norms`), the differentiable sums left in
        ``fwd.extras["norm_sums_F"]`` are the L1 term's, and the auxiliary reconstruction is
        left in ``fwd.extras["aux_recon_NSD"]``, so that ``W_dec``'s gradient is written in one
        pass; under autocast they read a rounded copy of ``W_dec``
        (:func:`~crosslens.kernels.sparse.autocast_copy`). Through
        ``embedding_bag`` (:meth:`_kernels`), the norms stay the encode's."""
        raw_FS = fwd.extras["raw_norms_FS"]
        if raw_FS is None:
            return self.decode_active(indices, values, offsets=offsets)
        aux = fwd.extras["aux"]
        read = autocast_copy(
            self.W_dec, indices.numel(), self.kernel_plan, step_weights=self.step_weights, block=self.weight_block
        )
        out, raw_FS, aux_recon = gather_decode_and_norms(
            self._one_group(self.W_dec),
            values.reshape(-1, 1),
            self._pairs(indices, offsets),
            raw_FS,
            self._kernels(),
            self._one_group(read),
            None if aux is None else aux[0],
            self.weight_block,
        )
        fwd.extras["norm_sums_F"] = self.snapshot_norm_sums(raw_FS)
        if aux_recon is not None:
            fwd.extras["aux_recon_NSD"] = aux_recon.reshape(-1, self.cfg.n_snapshots, self.cfg.d_in)
        return self._with_bias(out)

    def step_norms(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(raw_norms_FS, norm_sums_F)`` for a training pass, one pass over ``W_dec`` for
        selection, L1 and aux-k: where the step decodes through the pairs' kernels, the norms
        without gradient (:meth:`decode_kept` differentiates them); else ``None`` and the
        differentiable sums."""
        if not (self.uses_sparse_decode and self._kernels()):
            return None, self.snapshot_norm_sums()
        raw_FS = row_norms_now(self.W_dec, self.step_weights, self.weight_block)
        with torch.no_grad():
            return raw_FS, self.snapshot_norm_sums(raw_FS)

    def _training_encode(self, x_NSD: torch.Tensor) -> CrosscoderPass:
        h_NF = self.hidden_pre(x_NSD)
        raw_FS, norm_sums_F = self.step_norms()
        idx_NK = self.selection_scores(h_NF, norm_sums_F).topk(self.cfg.k, dim=-1, sorted=False).indices
        idx_NK = idx_NK.sort(dim=-1).values  # canonical order for the sparse decode's sum
        vals_NK = h_NF.gather(-1, idx_NK).relu()  # relu of k values, not of all d_sae
        if self.uses_sparse_decode:
            with torch.no_grad():
                f_NF = torch.zeros_like(h_NF).scatter(-1, idx_NK, vals_NK)
        else:
            f_NF = torch.zeros_like(h_NF).scatter(-1, idx_NK, vals_NK)
        return CrosscoderPass(
            x_NSD=x_NSD,
            hidden_pre_NF=h_NF,
            feature_acts_NF=self.hook_sae_acts_post(f_NF),
            extras={"idx_NK": idx_NK, "vals_NK": vals_NK, "raw_norms_FS": raw_FS, "norm_sums_F": norm_sums_F},
        )

    def _training_decode(self, fwd: CrosscoderPass) -> torch.Tensor:
        """The step's decode, and the auxiliary code's in ``fwd.extras["aux_recon_NSD"]``
        (without the decoder bias), whose squared error the reconstruction's pass computes
        beside its own (:func:`~crosslens.crosscoders.base.reconstruction_errors`)."""
        aux = fwd.extras["aux"] = self.aux_rows(fwd)
        if not self.uses_sparse_decode:
            out = self.decode_dense(fwd.feature_acts_NF)
        else:
            out = self.decode_kept(fwd, *self._kept(fwd))
        if aux is not None and "aux_recon_NSD" not in fwd.extras:
            fwd.extras["aux_recon_NSD"] = dense_rows_decode(self.W_dec, aux[0], block=self.weight_block).reshape(
                -1, self.cfg.n_snapshots, self.cfg.d_in
            )
        return out

    def _kept(self, fwd: CrosscoderPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(indices, values, offsets)`` of the kept pairs, as :meth:`decode_kept` takes them."""
        return fwd.extras["idx_NK"], fwd.extras["vals_NK"], None

    def _sparsity_losses(self, step_input: TrainStepInput, fwd: CrosscoderPass) -> dict[str, torch.Tensor]:
        losses = {"auxiliary_reconstruction_loss": self.aux_k_loss(fwd)}
        if self.cfg.l1_coefficient > 0:
            l1 = self.collectives.token_mean_replicated(self.kept_l1_per_token(fwd))
            losses["l1_loss"] = step_input.coefficients["l1"] * l1
        return losses

    def kept_l1_per_token(self, fwd: CrosscoderPass) -> torch.Tensor:
        """``[N]``: ``sum_i f_ni * sum_s ||W_dec[i, s]||`` over each token's kept features."""
        idx_NK, vals_NK = fwd.extras["idx_NK"], fwd.extras["vals_NK"]
        return (vals_NK * fwd.extras["norm_sums_F"][idx_NK]).sum(dim=-1)

    def reads_dead_rows(self) -> bool:
        """The auxiliary loss decodes the dead features (:meth:`aux_rows`), where it is on."""
        return self.cfg.aux_loss_coefficient != 0

    def aux_rows(self, fwd: CrosscoderPass) -> tuple[DenseRows, float] | None:
        """The auxiliary code ``((dead_R, values_NR), scale)``: each token's ``aux_k`` dead
        features with the largest ``h_i * sum_s ||W_dec[i, s]||`` keep their ``h`` (the others
        0) over the dead features ``dead_R``, and the loss's scale ``min(n_dead / aux_k, 1)``;
        None where no feature is dead, or where the loss is off (``aux_loss_coefficient`` 0).
        Their count sizes the code: the step's one read of the device, listed from a copy
        queued before the encode at the latest (``fwd.dead_rows``; the trainer queues it
        during the step before). While no more are dead than ``aux_k``
        (``S * d_in / 2`` by default, so nearly always), every token keeps every dead feature:
        the code is dense over those rows, and its decode a matmul over them."""
        if fwd.dead_rows is None:  # no mask, or the loss is off (reads_dead_rows)
            return None
        dead_R, n_dead = fwd.dead_rows.rows()
        if n_dead == 0:
            return None
        aux_k = self.cfg.aux_k or self.total_snapshots * self.cfg.d_in // 2
        h_NR = fwd.hidden_pre_NF.index_select(1, dead_R)
        if n_dead > aux_k:
            with torch.no_grad():
                scores_NR = h_NR * fwd.extras["norm_sums_F"].index_select(0, dead_R)
                kept_NR = torch.zeros_like(h_NR, dtype=torch.bool)
                kept_NR.scatter_(1, scores_NR.topk(aux_k, dim=-1, sorted=False).indices, True)
            h_NR = h_NR.masked_fill(~kept_NR, 0.0)
        return (dead_R, h_NR), min(n_dead / aux_k, 1.0)

    def aux_k_loss(self, fwd: CrosscoderPass) -> torch.Tensor:
        """Auxiliary-k loss: the top dead features (:meth:`aux_rows`) reconstruct the live
        features' residual, without the decoder bias (their squared error per token is
        ``fwd.extras["aux_sq_err_N"]``)."""
        aux = fwd.extras["aux"]
        if aux is None:
            return fwd.recon_NSD.new_zeros(())
        aux_loss = self.collectives.token_mean(fwd.extras["aux_sq_err_N"])
        return self.cfg.aux_loss_coefficient * aux[1] * aux_loss


CLASSES = (TopKCrosscoder, TopKCrosscoderConfig, TopKTrainingCrosscoder, TopKTrainingCrosscoderConfig)
"""What :mod:`crosslens.crosscoders` registers with SAELens under ``topk_crosscoder``: (inference class,
inference config, training class, training config)."""
