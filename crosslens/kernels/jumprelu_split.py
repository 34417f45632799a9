"""The JumpReLU step while its code is dense, split by where each entry's gate stands.

An entry (token n, feature i) whose gate is open at every snapshot, and whose contribution
``h * ||W_dec[i, s]|| - t`` is at least half the threshold's window at every snapshot, has the
code ``h`` at each snapshot and gives the threshold no gradient: its decode is the shared
code's, one ``[N, F] @ [F, S*D]`` matmul as in a plain crosscoder, and its scores are ``sum_s
tanh(c * h * ||W_dec[i, s]||)``. Such entries are most of a young crosscoder's open entries
(on the pico demo's store, about five in six from its tenth step until fewer than 1/32 of all
entries were open): its norms start equal at every snapshot and part slowly while the code is
dense.

:func:`split_gated_decode` decodes those entries with the matmul and scores them with
:class:`EverywhereScores` (fused reductions over the snapshots where the plan compiles), and
hands every other active entry (open at some snapshots only, or inside the window at some) to
the step from the pairs (:func:`~crosslens.kernels.jumprelu_pairs.sparse_gated_decode`). It
computes the values and gradients of the per-snapshot reference
(:func:`~crosslens.kernels.jumprelu_dense.snapshot_gate_and_score` and its batched decode)
to the order of float sums, without its ``[S, N, F]`` code. The plan's ``jumprelu_split`` turns
it on; :func:`~crosslens.crosscoders.jumprelu_crosscoder.snapshot_gated_decode` takes it where the
step from all the pairs does not pay but the rest are few (:func:`split_step_pays`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Bool, Float

from crosslens.core.tensors import host_ints
from crosslens.kernels.jumprelu_dense import block_function
from crosslens.kernels.jumprelu_ops import everywhere_score_block, everywhere_score_grad_block
from crosslens.kernels.jumprelu_pairs import ActiveEntries, sparse_gated_decode
from crosslens.kernels.plan import KernelPlan, plan_for
from crosslens.kernels.step_weights import StepWeights
from crosslens.kernels.weight_grads import WeightBlock, weight_matmul


def everywhere_and_rest(
    h_NF: torch.Tensor, norms_FS: torch.Tensor, threshold_F: torch.Tensor, half_width: float, entries: ActiveEntries
) -> tuple[Bool[torch.Tensor, "n d_sae"], ActiveEntries, Bool[torch.Tensor, "n d_sae"]]:
    """``(everywhere_NF, rest, open_NF)``: the entries open at every snapshot and outside the
    window at every one, the other active ``entries``, counted (one more wait for the device),
    and ``entries``' own mask of those open at some snapshot (both parts together).
    ``h * norm - t`` grows with the norm for ``h > 0`` (the same two roundings as the
    per-snapshot gate), so it is at least ``half_width`` everywhere where it is at the smallest
    norm; for ``h <= 0`` it is at most ``-t <= 0`` there."""
    with torch.no_grad():
        distance_NF = (h_NF * norms_FS.min(dim=1).values).sub_(threshold_F)
        everywhere_NF = distance_NF >= half_width
        del distance_NF
        (n_everywhere,) = host_ints(torch.count_nonzero(everywhere_NF))
        elsewhere_NF = ~everywhere_NF
        rest = replace(
            entries,
            active_NF=entries.active_NF & elsewhere_NF,
            open_NF=entries.open_NF & elsewhere_NF,
            n_open=entries.n_open - n_everywhere,
        )
    return everywhere_NF, rest, entries.open_NF


def split_step_pays(rest: ActiveEntries, plan: KernelPlan) -> bool:
    """Whether the entries the split step reads from pairs (``rest`` of
    :func:`everywhere_and_rest`) are few enough: open at most the plan's ``split_rest_share`` of
    them."""
    return rest.n_open <= plan.split_rest_share * rest.active_NF.numel()


class EverywhereScores(torch.autograd.Function):
    """``score_sum_F``, float32: the sum over the ``everywhere_NF`` entries and every snapshot
    of ``tanh(c * h * norm_s)``, with its gradients to ``h`` and to the norms (the gates of these
    entries are open everywhere and outside the window: none to the threshold). Token blocks
    of :func:`~crosslens.kernels.jumprelu_dense.block_function`'s size, compiled where the
    plan says, so that no ``[S, N, F]`` tensor is made."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h_NF: torch.Tensor,
        norms_FS: torch.Tensor,
        everywhere_NF: torch.Tensor,
        tanh_scale: float,
        plan: KernelPlan | None,
    ) -> torch.Tensor:
        N, F_ = h_NF.shape
        S = norms_FS.shape[1]
        scale_S1F = (tanh_scale * norms_FS.float().T).contiguous()[:, None, :]
        run_block, block = block_function(everywhere_score_block, N, S, F_, h_NF.device, plan)
        score_sum_F = h_NF.new_zeros(F_, dtype=torch.float32)
        for a in range(0, N, block):
            score_sum_F += run_block(h_NF[a : a + block], everywhere_NF[a : a + block], scale_S1F)
        ctx.save_for_backward(h_NF, norms_FS, everywhere_NF)
        ctx.tanh_scale, ctx.plan = tanh_scale, plan
        return score_sum_F

    @staticmethod
    def backward(ctx: Any, grad_score_F: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        h_NF, norms_FS, everywhere_NF = ctx.saved_tensors
        N, F_ = h_NF.shape
        S = norms_FS.shape[1]
        scale_S1F = (ctx.tanh_scale * norms_FS.float().T).contiguous()[:, None, :]
        run_block, block = block_function(everywhere_score_grad_block, N, S, F_, h_NF.device, ctx.plan)
        grad_h_NF = torch.empty_like(h_NF)
        grad_norms_SF = h_NF.new_zeros(S, F_, dtype=torch.float32)
        for a in range(0, N, block):
            grad_h_BF, part_SF = run_block(
                h_NF[a : a + block], everywhere_NF[a : a + block], scale_S1F, grad_score_F.float()
            )
            grad_h_NF[a : a + block] = grad_h_BF
            grad_norms_SF += part_SF
        grad_norms_FS = (grad_norms_SF * ctx.tanh_scale).T.to(norms_FS.dtype)
        return grad_h_NF, grad_norms_FS, None, None, None


def split_gated_decode(
    h_NF: Float[torch.Tensor, "n d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    norms: tuple[Float[torch.Tensor, "d_sae n_snapshots"], Float[torch.Tensor, " n_snapshots"]],
    split: tuple[Bool[torch.Tensor, "n d_sae"], ActiveEntries, Bool[torch.Tensor, "n d_sae"]],
    gate: tuple[float, float],
    plan: KernelPlan | None = None,
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(recon_NSD, score_sum_F, open_anywhere_NF, shared_code_NF)`` of
    :func:`~crosslens.crosscoders.jumprelu_crosscoder.snapshot_gated_decode`, for ``split =
    (everywhere_NF, rest, open_anywhere_NF)`` from :func:`everywhere_and_rest`: the entries of ``everywhere_NF``
    through the shared code's matmul and :class:`EverywhereScores`, ``rest`` through
    :func:`~crosslens.kernels.jumprelu_pairs.sparse_gated_decode` (which also sums the
    window of the entries shut everywhere). ``norms = (raw_FS, norm_factors_S)`` as there, and
    ``gate = (bandwidth, tanh_scale)``; ``step_weights`` and ``block`` are handed on to both."""
    everywhere_NF, rest, open_anywhere_NF = split
    plan = plan_for(h_NF.device, plan)
    F_, S, D = W_dec_FSD.shape
    # its norms come differentiable from the decode's node: their gradient from the scores below
    # joins that node's one pass over W
    recon_NSD, score_sum_F, _, _, norms_FS = sparse_gated_decode(
        h_NF, W_dec_FSD, threshold_F, norms, rest, gate, plan, step_weights, block
    )
    shared_NF = h_NF * everywhere_NF
    recon_NX = weight_matmul(shared_NF, W_dec_FSD.reshape(F_, S * D), step_weights=step_weights, block=block)
    everywhere_F = EverywhereScores.apply(h_NF, norms_FS, everywhere_NF, gate[1], plan)
    with torch.no_grad():
        shared_code_NF = h_NF * open_anywhere_NF
    score_sum_F = (score_sum_F.float() + everywhere_F).to(h_NF.dtype)
    return recon_NSD + recon_NX.view(-1, S, D), score_sum_F, open_anywhere_NF, shared_code_NF
