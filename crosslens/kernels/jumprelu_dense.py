"""The JumpReLU crosscoder's per-snapshot code itself, ``[S, N, F]``, a block of tokens at a time:
the reference every other implementation is held against, and CUDA's step while the code is
dense (compiled there).

:class:`SnapshotGateAndScore` gates, scores and differentiates the shared pre-activation at every
snapshot in cache-sized blocks of tokens, recomputing gates and scores in backward so that
nothing else of that size is kept; :func:`block_function` runs its block functions
(:mod:`crosslens.kernels.jumprelu_ops`) compiled where the plan says (``compile``). The
decoder is then a batched matmul over snapshots
(:func:`~crosslens.kernels.regated_decode.snapshot_decode`): the two together are
:func:`per_snapshot_gated_decode`, the step's "per snapshot" path.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float

from crosslens.kernels.compiled import compiled
from crosslens.kernels.jumprelu_ops import backward_block, forward_block, threshold_gradient
from crosslens.kernels.plan import KernelPlan, plan_for
from crosslens.kernels.regated_decode import snapshot_decode
from crosslens.kernels.step_weights import StepWeights
from crosslens.kernels.weight_grads import WeightBlock, weight_row_norms


def token_block(
    n_tokens: int, n_snapshots: int, n_features: int, device: torch.device, plan: KernelPlan | None = None
) -> int:
    """Tokens per ``[S, block, F]`` block: about the plan's block elements on ``device``."""
    elements = plan_for(device, plan).block_elements(device)
    return max(1, min(n_tokens, elements // max(1, n_snapshots * n_features)))


def block_function(
    function: Any,
    n_tokens: int,
    n_snapshots: int,
    n_features: int,
    device: torch.device,
    plan: KernelPlan | None = None,
) -> tuple[Any, int]:
    """``(function, tokens per block)`` for a block function of
    :mod:`~crosslens.kernels.jumprelu_ops` over ``[S, block, F]`` on ``device``: compiled or
    eager as the plan says (``compile``). Compiled on a CPU it takes the
    whole batch at once (its fused loops keep no ``[S, N, F]`` temporary but their outputs),
    compiled for its one shape; else in blocks of :func:`token_block`, whose last is shorter
    (compiled once more, for any shape).

    They are the dense JumpReLU step's elementwise work, which a step takes while the code is
    too dense for the step from the pairs (a fresh crosscoder, or the first batches of a run):
    half a dozen kernels over each ``[S, block, F]`` block forward and about fifteen backward
    when run op by op (at Ge et al.'s shape 1.6 G elements a pass), against a fused read of
    the inputs and one write of the outputs each way compiled. The gates are the eager ones to
    the bit (the same float32 product and comparison); the tanh sums differ in their order."""
    plan = plan_for(device, plan)
    if not plan.compile:
        return function, token_block(n_tokens, n_snapshots, n_features, device, plan)
    if device.type == "cpu":
        return compiled(function, dynamic=False), n_tokens
    return compiled(function), token_block(n_tokens, n_snapshots, n_features, device, plan)


class SnapshotGateAndScore(torch.autograd.Function):
    """Gated per-snapshot code, summed tanh scores and the any-snapshot gate of a batch.

    Inputs: ``h_NF`` (shared pre-activation), ``norms_FS`` (decoder norms in the training
    space), ``threshold_F``, ``bandwidth`` (eps) and ``tanh_scale`` (c). Outputs:

    * ``f_SNF = h * [h * norms_s > t]`` (snapshot-major, for one batched decoder matmul);
    * ``score_sum_F = sum over tokens and snapshots of tanh(c * f * norms_s)``;
    * ``open_anywhere_NF``: the gate is open at some snapshot (no gradient).

    Gradients: to ``h`` through open gates; to the norms through the scores only; to the
    threshold through the rectangle kernel, ``-(t / (norms_s * eps)) * [|h norms_s - t| <
    eps / 2]`` times the upstream gradient of ``f`` (which, from the scores, is ``c *
    norms_s`` where a gate is shut: the straight-through estimate of the L0 term).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h_NF: Float[torch.Tensor, "n d_sae"],
        norms_FS: Float[torch.Tensor, "d_sae n_snapshots"],
        threshold_F: Float[torch.Tensor, " d_sae"],
        bandwidth: float,
        tanh_scale: float,
        plan: KernelPlan | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N, F_ = h_NF.shape
        S = norms_FS.shape[1]
        norms_S1F = norms_FS.T.contiguous()[:, None, :]
        scale_S1F = (tanh_scale * norms_FS.T).contiguous()[:, None, :]
        run_block, block = block_function(forward_block, N, S, F_, h_NF.device, plan)
        if block >= N:
            f_SNF, open_anywhere_NF, score_sum_F = run_block(h_NF, norms_S1F, scale_S1F, threshold_F)
        else:
            f_SNF = h_NF.new_empty(S, N, F_)
            open_anywhere_NF = torch.empty(N, F_, dtype=torch.bool, device=h_NF.device)
            score_sum_F = h_NF.new_zeros(F_, dtype=torch.float32)
            for a in range(0, N, block):
                f_SNF[:, a : a + block], open_anywhere_NF[a : a + block], sums_F = run_block(
                    h_NF[a : a + block], norms_S1F, scale_S1F, threshold_F
                )
                score_sum_F += sums_F
        ctx.save_for_backward(h_NF, norms_S1F, threshold_F)
        ctx.bandwidth, ctx.tanh_scale, ctx.plan = bandwidth, tanh_scale, plan
        ctx.mark_non_differentiable(open_anywhere_NF)
        return f_SNF, score_sum_F.to(h_NF.dtype), open_anywhere_NF

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_f_SNF: torch.Tensor | None, grad_score_F: torch.Tensor | None, _grad_open: Any
    ) -> tuple[Any, ...]:
        h_NF, norms_S1F, threshold_F = ctx.saved_tensors
        N, F_ = h_NF.shape
        S = norms_S1F.shape[0]
        scale_S1F = ctx.tanh_scale * norms_S1F
        if grad_score_F is None:
            grad_score_F = h_NF.new_zeros(F_)
        run_block, block = block_function(backward_block, N, S, F_, h_NF.device, ctx.plan)
        grad_h_NF = torch.empty_like(h_NF)
        grad_norms_SF = norms_S1F.new_zeros(S, F_)
        window_grad_SF = norms_S1F.new_zeros(S, F_)
        for a in range(0, N, block):
            h_BF = h_NF[a : a + block]
            grad_h_NF[a : a + block], norms_part_SF, window_part_SF = run_block(
                h_BF,
                norms_S1F,
                scale_S1F,
                threshold_F,
                _grad_of_code(grad_f_SNF, a, block, h_BF, S),
                grad_score_F,
                ctx.bandwidth / 2,
            )
            grad_norms_SF += norms_part_SF
            window_grad_SF += window_part_SF
        grad_norms_FS = (grad_norms_SF * ctx.tanh_scale).T
        grad_threshold_F = threshold_gradient(window_grad_SF.T, norms_S1F[:, 0].T, threshold_F, ctx.bandwidth)
        return grad_h_NF, grad_norms_FS, grad_threshold_F, None, None, None


def _grad_of_code(
    grad_f_SNF: torch.Tensor | None, start: int, block: int, h_BF: torch.Tensor, n_snapshots: int
) -> Float[torch.Tensor, "n_snapshots block d_sae"]:
    """The upstream gradient of the code for one block (zeros when the code was unused)."""
    if grad_f_SNF is None:
        return h_BF.new_zeros(n_snapshots, *h_BF.shape)
    return grad_f_SNF[:, start : start + block]


def snapshot_gate_and_score(
    h_NF: Float[torch.Tensor, "n d_sae"],
    norms_FS: Float[torch.Tensor, "d_sae n_snapshots"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    *,
    bandwidth: float,
    tanh_scale: float,
    plan: KernelPlan | None = None,
) -> tuple[Float[torch.Tensor, "n_snapshots n d_sae"], Float[torch.Tensor, " d_sae"], Bool[torch.Tensor, "n d_sae"]]:
    """``(f_SNF, score_sum_F, open_anywhere_NF)``; see :class:`SnapshotGateAndScore`."""
    return SnapshotGateAndScore.apply(h_NF, norms_FS, threshold_F, bandwidth, tanh_scale, plan)


def per_snapshot_gated_decode(
    h_NF: Float[torch.Tensor, "n d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    norms: tuple[Float[torch.Tensor, "d_sae n_snapshots"] | None, Float[torch.Tensor, " n_snapshots"]],
    gate: tuple[float, float],
    plan: KernelPlan | None = None,
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(recon_NSD, score_sum_F, open_anywhere_NF, shared_code_NF)`` of the JumpReLU step from its
    per-snapshot code (:class:`SnapshotGateAndScore`) and its batched decode: the reference. ``norms
    = (raw_FS, norm_factors_S)``, ``raw_FS`` the decoder norms where a path tried before computed
    them (else None: computed here, differentiably), and ``gate = (bandwidth, tanh_scale)``;
    ``step_weights`` and ``block`` are handed on to the norms and the decode."""
    raw_FS, norm_factors_S = norms
    norms_FS = weight_row_norms(W_dec_FSD, known=raw_FS, step_weights=step_weights, block=block) * norm_factors_S
    h_NF = h_NF.contiguous()  # the blocks of the gate are token-major
    bandwidth, tanh_scale = gate
    f_SNF, score_sum_F, open_anywhere_NF = snapshot_gate_and_score(
        h_NF, norms_FS, threshold_F, bandwidth=bandwidth, tanh_scale=tanh_scale, plan=plan
    )
    recon_SND = snapshot_decode(f_SNF, W_dec_FSD, (h_NF, norms_FS, threshold_F), step_weights, block)
    with torch.no_grad():
        shared_NF = h_NF * open_anywhere_NF
    return recon_SND.transpose(0, 1), score_sum_F, open_anywhere_NF, shared_NF
