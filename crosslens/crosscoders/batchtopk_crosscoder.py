"""BatchTopK crosscoder (architecture ``"batchtopk_crosscoder"``).

Training keeps the ``k * batch`` largest scores ``ReLU(h_i) * sum_s ||W_dec[i, s]||``
over the whole batch (k features per token on average) and tracks a running threshold:
an exponential moving average (rate ``topk_threshold_lr``) of the smallest positive
score that was kept. Loss, L1 term and auxiliary-k loss are those of the TopK crosscoder.

For inference the running threshold becomes a fixed one, so a token's code no longer
depends on its batch: ``f_i = ReLU(h_i) * [ReLU(h_i) * sum_s ||W_dec[i, s]|| > t]``.
``save_inference_model`` writes it as the per-feature ``threshold`` of the inference
class :class:`BatchTopKCrosscoder` (same architecture name, SAELens layout).

With n_snapshots = 1 and ``l1_coefficient = 0`` this matches SAELens's ``batchtopk`` SAE with
``rescale_acts_by_decoder_norm=True`` (which saves as a JumpReLU SAE): same selection,
threshold, reconstruction and losses; our code is ``ReLU(h)``, SAELens's is
``ReLU(h) * ||W_dec||``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAE
from torch import nn

from crosslens.architectures import DEFAULT_K
from crosslens.crosscoders.base import CrosscoderMixin, CrosscoderPass
from crosslens.crosscoders.config import CrosscoderConfig, saved_for_inference_error
from crosslens.crosscoders.per_snapshot_sae import divide_or_inf, non_negative_threshold
from crosslens.crosscoders.topk_crosscoder import (
    TopKTrainingCrosscoder,
    TopKTrainingCrosscoderConfig,
)
from crosslens.kernels.active_pairs import run_starts

ARCHITECTURE = "batchtopk_crosscoder"


@dataclass(kw_only=True)
class BatchTopKCrosscoderConfig(CrosscoderConfig, architecture=ARCHITECTURE):
    """Inference config of the BatchTopK crosscoder (fixed threshold)."""


@dataclass(kw_only=True)
class BatchTopKTrainingCrosscoderConfig(TopKTrainingCrosscoderConfig, architecture=ARCHITECTURE):
    """Training config of the BatchTopK crosscoder."""

    k: float = DEFAULT_K  # type: ignore[assignment]
    """Features kept per token on average over the batch."""
    topk_threshold_lr: float = 0.01
    """Rate of the moving average that turns the batch top-k cut-off into a fixed threshold."""

    def __post_init__(self) -> None:
        if not 0 < self.topk_threshold_lr <= 1:
            raise ValueError(f"topk_threshold_lr must be in (0, 1], got {self.topk_threshold_lr}.")
        super().__post_init__()


def _threshold_code(self: Any, x: torch.Tensor, t_F: torch.Tensor) -> torch.Tensor:
    """``f_i = ReLU(h_i) * [ReLU(h_i) * sum_s ||W_dec[i, s]|| > t_i]``: a token's code on its own."""
    relu_h = self.hidden_pre(x).relu()
    keep = relu_h * self.snapshot_norms().sum(dim=1) > t_F
    return self.hook_sae_acts_post(relu_h * keep)


@torch.no_grad()
def _snapshot_gate(
    self: Any, s: int, state: dict[str, torch.Tensor], common: dict[str, Any]
) -> tuple[Any, dict[str, torch.Tensor]]:
    """A ``JumpReLUSAE`` with threshold ``t_i / w_i`` (``w_i = sum_s n_is``), as SAELens itself
    saves BatchTopK SAEs for inference: the inference class's fixed threshold, or the training
    class's one running threshold for every feature. Codes equal."""
    dtype = self.W_dec.dtype
    if "threshold" in dict(self.named_parameters()):
        t_F = self.threshold.detach().to(dtype)
    else:
        t_F = self.topk_threshold.detach().to(dtype).expand(self.cfg.d_sae)
    state["threshold"] = divide_or_inf(
        non_negative_threshold(t_F, ARCHITECTURE), self.snapshot_norms().detach().sum(dim=1)
    )
    return JumpReLUSAE(JumpReLUSAEConfig(**common)), state


class BatchTopKCrosscoder(CrosscoderMixin, SAE[BatchTopKCrosscoderConfig]):
    """Inference BatchTopK crosscoder with a fixed threshold per feature."""

    threshold: nn.Parameter
    snapshot_gate = _snapshot_gate

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.threshold = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        # a training checkpoint (save_model of the training class) carries the
        # running threshold instead; read it as the fixed one
        if "topk_threshold" in state_dict and "threshold" not in state_dict:
            threshold = state_dict.pop("topk_threshold").item()
            state_dict["threshold"] = torch.full_like(state_dict["b_enc"], threshold)

    def encode(self, x: Float[torch.Tensor, "... n_snapshots d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        return _threshold_code(self, x, self.threshold)

    def decode(self, feature_acts: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... n_snapshots d_in"]:
        return self._finish_decode(self.decode_dense(feature_acts))


class BatchTopKTrainingCrosscoder(TopKTrainingCrosscoder):
    """Training BatchTopK crosscoder; saves for inference as :class:`BatchTopKCrosscoder`."""

    cfg: BatchTopKTrainingCrosscoderConfig  # type: ignore[assignment]
    snapshot_gate = _snapshot_gate
    topk_threshold: torch.Tensor

    def __init__(self, cfg: BatchTopKTrainingCrosscoderConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        # float64: the moving average takes many tiny steps
        self.register_buffer("topk_threshold", torch.zeros((), dtype=torch.float64, device=self.device))

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        if "threshold" in state_dict and "topk_threshold" not in state_dict:
            # weights of the inference form (a run's final/) without its cfg.json: a fixed threshold
            # per feature where training keeps one running threshold
            raise saved_for_inference_error(ARCHITECTURE, ["topk_threshold"])

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._apply(*args, **kwargs)
        # .to(dtype) casts every float buffer (the load paths call it); keep float64
        threshold = self._buffers.get("topk_threshold")
        if threshold is not None and threshold.dtype != torch.float64:
            self._buffers["topk_threshold"] = threshold.double()
        return out

    def encode(self, x: Float[torch.Tensor, "... n_snapshots d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """Batch top-k code (depends on the batch, as in training)."""
        lead = x.shape[:-2]
        fwd = self._training_encode(x.reshape(-1, self.cfg.n_snapshots, self.cfg.d_in))
        return fwd.feature_acts_NF.reshape(*lead, self.cfg.d_sae)

    def inference_encode(self, x: Float[torch.Tensor, "... n_snapshots d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        """The code :meth:`save_inference_model`'s crosscoder gives: the running threshold as every
        feature's fixed one, so a token's code does not depend on its batch (as :func:`snapshot_sae`)."""
        return _threshold_code(self, x, self.topk_threshold.to(self.W_dec.dtype))

    def _training_encode(self, x_NSD: torch.Tensor) -> CrosscoderPass:
        h_NF = self.hidden_pre(x_NSD)
        raw_FS, norm_sums_F = self.step_norms()
        scores_NF = self.selection_scores(h_NF, norm_sums_F)
        # sorted flat indices run row by row, as embedding_bag's offsets need
        flat_idx = self._batch_top_indices(scores_NF).sort().values
        rows, cols = flat_idx // self.cfg.d_sae, flat_idx % self.cfg.d_sae
        vals = h_NF.flatten()[flat_idx].relu()  # relu of the kept values, not of all of h
        kept_scores = scores_NF.flatten()[flat_idx]
        f_NF = torch.zeros_like(h_NF).flatten().index_put((flat_idx,), vals).view_as(h_NF)
        return CrosscoderPass(
            x_NSD=x_NSD,
            hidden_pre_NF=h_NF,
            feature_acts_NF=self.hook_sae_acts_post(f_NF),
            extras={
                "rows": rows,
                "cols": cols,
                "vals": vals,
                "kept_scores": kept_scores,
                "raw_norms_FS": raw_FS,
                "norm_sums_F": norm_sums_F,
            },
        )

    @torch.no_grad()
    def _batch_top_indices(self, scores_NF: torch.Tensor) -> torch.Tensor:
        """Flat indices of the ``k * global batch`` largest scores of the global batch.

        With the batch split over data ranks, each rank offers its own largest
        ``n_keep`` scores (the global top ``n_keep`` are among them), all ranks find the
        ``n_keep``-th largest of the offers, and each keeps its positive scores at or above
        it. Zero scores, which top-k may also pick when fewer than ``n_keep`` are positive,
        change neither the code nor the reconstruction, so they are left out.
        """
        flat = scores_NF.flatten()
        cutoff = None if self.micro_step is None else self.micro_step.whole.get("cutoff")
        if cutoff is None:
            n_keep = self._n_keep(scores_NF.shape[0])
            if self.collectives.data_size == 1:
                return flat.topk(n_keep, sorted=False).indices
            cutoff = self._cutoff(_offer(flat, n_keep), n_keep)
        # a data rank's (or a micro-batch's) share of the whole batch's top scores
        return torch.nonzero((flat >= cutoff) & (flat > 0)).flatten()

    def _n_keep(self, n_local: int) -> int:
        """Codes the whole batch keeps: ``k`` per token of every data rank's ``n_local`` tokens."""
        c = self.collectives
        return min(int(self.cfg.k * c.global_batch(n_local)), n_local * self.cfg.d_sae * c.data_size)

    def _cutoff(self, offers: torch.Tensor, n_keep: int) -> torch.Tensor:
        """The ``n_keep``-th largest of every data rank's ``offers`` (:func:`_offer`)."""
        return self.collectives.data_gather(offers).topk(n_keep, sorted=False).values.min()

    step_update_extras = ("kept_scores",)

    def _whole_batch_numbers(self, chunks_NSD: Sequence[torch.Tensor]) -> dict[str, Any]:
        """The ``k * batch``-th largest score of the whole batch (every data rank's), from each
        micro-batch's largest ``k * batch`` scores, as data ranks find it (ties at the cut-off
        are all kept, where one batch keeps exactly ``k * batch``)."""
        S, D = self.cfg.n_snapshots, self.cfg.d_in
        chunks = [x.reshape(-1, S, D) for x in chunks_NSD]
        n_keep = self._n_keep(sum(x.shape[0] for x in chunks))
        # one micro-batch's scores at a time, each reduced to its offer before the next
        offers = torch.cat([_offer(self.selection_scores(self.hidden_pre(x)).flatten(), n_keep) for x in chunks])
        return {"cutoff": self._cutoff(offers, n_keep)}

    def _kept(self, fwd: CrosscoderPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        offsets_N = run_starts(fwd.extras["rows"], fwd.hidden_pre_NF.shape[0])[:-1]  # rows ascend
        return fwd.extras["cols"], fwd.extras["vals"], offsets_N

    def kept_l1_per_token(self, fwd: CrosscoderPass) -> torch.Tensor:
        rows, cols, vals = fwd.extras["rows"], fwd.extras["cols"], fwd.extras["vals"]
        per_pair = vals * fwd.extras["norm_sums_F"][cols]
        return per_pair.new_zeros(fwd.hidden_pre_NF.shape[0]).index_add(0, rows, per_pair)

    @torch.no_grad()
    def _after_training_pass(self, fwd: CrosscoderPass) -> None:
        kept = fwd.extras["kept_scores"]
        # the smallest positive kept score (inf where none), found without a device sync
        positive = kept.masked_fill(kept <= 0, torch.inf)
        smallest = positive.min() if positive.numel() else kept.new_tensor(torch.inf)
        smallest = self.collectives.data_min(smallest.to(torch.float64))
        lr = self.cfg.topk_threshold_lr
        moved = (1 - lr) * self.topk_threshold + lr * smallest
        self.topk_threshold.copy_(torch.where(torch.isfinite(smallest), moved, self.topk_threshold))
        fwd.metrics["topk_threshold"] = self.topk_threshold.detach().clone()

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        threshold = state_dict.pop("topk_threshold").item()
        state_dict["threshold"] = torch.full_like(state_dict["b_enc"], threshold)


def _offer(flat_scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """A part's largest ``n_keep`` scores: the whole batch's top ``n_keep`` are among its parts' offers."""
    return flat_scores.topk(min(n_keep, flat_scores.numel()), sorted=False).values


CLASSES = (
    BatchTopKCrosscoder,
    BatchTopKCrosscoderConfig,
    BatchTopKTrainingCrosscoder,
    BatchTopKTrainingCrosscoderConfig,
)
"""What :mod:`crosslens.crosscoders` registers with SAELens under ``batchtopk_crosscoder``: (inference class,
inference config, training class, training config)."""
