"""The JumpReLU crosscoder's per-(snapshot, token, feature) gate and tanh sparsity score
as one autograd function that works on a block of tokens at a time.

Every gate ``[h_i * ||W_dec[i, s]|| > t_i]`` and every score ``tanh(c * f_{i,s} *
||W_dec[i, s]||)`` is a function of the shared pre-activation ``h [N, F]``, the decoder
norms ``[F, S]`` and the threshold ``[F]``, so nothing of size ``[S, N, F]`` needs to be
kept for the backward pass except the gated code itself (which the decoder reads anyway).
The backward pass recomputes gates and scores block by block. Written as a chain of
whole-batch PyTorch ops, the same math kept about a dozen ``[S, N, F]`` temporaries alive
and ran at a third of a plain crosscoder step. On a CPU, blocks of ``CPU_BLOCK_ELEMENTS``
keep each op's temporaries in the L3 cache; on an accelerator the whole batch is one block
(its memory is fast and each op a kernel launch). :func:`use_compiled_kernels` fuses each
block's ops into a few loops. Memory traffic over ``[S, N, F]`` still limits the step:
see docs/notes/issue-14-speed.md for what this reaches and what it does not.

The math is exactly the whole-batch version's, element by element (the same
multiplications in the same order); only the order of the sums over tokens differs, so
results agree to float rounding.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from jaxtyping import Bool, Float

CPU_BLOCK_ELEMENTS = 1 << 22
"""Elements of one ``[S, block, F]`` block on a CPU: 16 MiB in float32, about half of a
32 MiB L3 cache. On a shared 2-core EPYC, 2^22 was the best of 2^20, 2^22 and the whole
batch in one noisy run (docs/notes/issue-14-speed.md); smaller blocks pay per-op overhead."""


def token_block(n_tokens: int, n_snapshots: int, n_features: int, device: torch.device) -> int:
    """Tokens per block: every token at once off the CPU, else about ``CPU_BLOCK_ELEMENTS``."""
    if device.type != "cpu":
        return max(n_tokens, 1)
    return max(1, min(n_tokens, CPU_BLOCK_ELEMENTS // max(1, n_snapshots * n_features)))


def _forward_block(
    h_BF: torch.Tensor, norms_S1F: torch.Tensor, scale_S1F: torch.Tensor, threshold_F: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's gated code ``[S, B, F]``, any-snapshot gate ``[B, F]`` and score sums ``[F]``."""
    open_SBF = h_BF * norms_S1F > threshold_F
    f_SBF = torch.where(open_SBF, h_BF, 0.0)
    score_sum_F = torch.tanh(f_SBF * scale_S1F).sum(dim=(0, 1), dtype=torch.float32)
    return f_SBF, open_SBF.any(dim=0), score_sum_F


def _backward_block(
    h_BF: torch.Tensor,
    norms_S1F: torch.Tensor,
    scale_S1F: torch.Tensor,
    threshold_F: torch.Tensor,
    grad_SBF: torch.Tensor,
    grad_score_F: torch.Tensor,
    half_width: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's gradient to ``h`` ``[B, F]``, the score's gradient to the norms (before
    the factor c) ``[S, F]``, and the decoder-plus-score gradient inside the threshold's
    window summed over tokens ``[S, F]``."""
    distance_SBF = h_BF * norms_S1F - threshold_F
    open_SBF = distance_SBF > 0
    f_SBF = torch.where(open_SBF, h_BF, 0.0)
    score_SBF = torch.tanh(f_SBF * scale_S1F)
    # the scores' gradient: grad * sech^2, times c * norm for f and c * f for the norm
    sech_grad_SBF = torch.ops.aten.tanh_backward(grad_score_F.expand_as(score_SBF), score_SBF)
    grad_norms_SF = (sech_grad_SBF * f_SBF).sum(dim=1)
    grad_SBF = torch.addcmul(grad_SBF, sech_grad_SBF, scale_S1F)
    grad_h_BF = torch.where(open_SBF, grad_SBF, 0.0).sum(dim=0)
    window_grad_SF = torch.where(distance_SBF.abs() < half_width, grad_SBF, 0.0).sum(dim=1)
    return grad_h_BF, grad_norms_SF, window_grad_SF


_COMPILED: dict[str, Any] = {}


def use_compiled_kernels(enabled: bool = True) -> None:
    """Run the block functions through ``torch.compile`` (a few fused loops instead of a
    dozen elementwise ops each way; the first step of each shape then compiles, tens of
    seconds on a CPU). Off by default, on with ``CROSSLENS_COMPILE_KERNELS=1`` in the
    environment; ``benchmarks/train.py --compile`` measures both."""
    if not enabled:
        _COMPILED.clear()
    elif not _COMPILED:
        _COMPILED["forward"] = torch.compile(_forward_block, dynamic=False)
        _COMPILED["backward"] = torch.compile(_backward_block, dynamic=False)


if os.environ.get("CROSSLENS_COMPILE_KERNELS") == "1":  # a switch for the CLI and scripts
    use_compiled_kernels(True)


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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N, F_ = h_NF.shape
        S = norms_FS.shape[1]
        norms_S1F = norms_FS.T.contiguous()[:, None, :]
        scale_S1F = (tanh_scale * norms_FS.T).contiguous()[:, None, :]
        block = N if _COMPILED else token_block(N, S, F_, h_NF.device)
        forward_block = _COMPILED.get("forward", _forward_block)
        if block >= N:
            f_SNF, open_anywhere_NF, score_sum_F = forward_block(h_NF, norms_S1F, scale_S1F, threshold_F)
        else:
            f_SNF = h_NF.new_empty(S, N, F_)
            open_anywhere_NF = torch.empty(N, F_, dtype=torch.bool, device=h_NF.device)
            score_sum_F = h_NF.new_zeros(F_, dtype=torch.float32)
            for a in range(0, N, block):
                f_SNF[:, a : a + block], open_anywhere_NF[a : a + block], sums_F = forward_block(
                    h_NF[a : a + block], norms_S1F, scale_S1F, threshold_F
                )
                score_sum_F += sums_F
        ctx.save_for_backward(h_NF, norms_S1F, threshold_F)
        ctx.bandwidth, ctx.tanh_scale = bandwidth, tanh_scale
        ctx.mark_non_differentiable(open_anywhere_NF)
        return f_SNF, score_sum_F.to(h_NF.dtype), open_anywhere_NF

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_f_SNF: torch.Tensor | None,
        grad_score_F: torch.Tensor | None,
        _grad_open: Any,
    ) -> tuple[Any, ...]:
        h_NF, norms_S1F, threshold_F = ctx.saved_tensors
        N, F_ = h_NF.shape
        S = norms_S1F.shape[0]
        scale_S1F = ctx.tanh_scale * norms_S1F
        if grad_score_F is None:
            grad_score_F = h_NF.new_zeros(F_)
        block = N if _COMPILED else token_block(N, S, F_, h_NF.device)
        backward_block = _COMPILED.get("backward", _backward_block)
        grad_h_NF = torch.empty_like(h_NF)
        grad_norms_SF = norms_S1F.new_zeros(S, F_)
        window_grad_SF = norms_S1F.new_zeros(S, F_)
        for a in range(0, N, block):
            h_BF = h_NF[a : a + block]
            grad_h_NF[a : a + block], norms_part_SF, window_part_SF = backward_block(
                h_BF, norms_S1F, scale_S1F, threshold_F,
                _grad_of_code(grad_f_SNF, a, block, h_BF, S), grad_score_F, ctx.bandwidth / 2,
            )  # fmt: skip
            grad_norms_SF += norms_part_SF
            window_grad_SF += window_part_SF
        grad_norms_FS = (grad_norms_SF * ctx.tanh_scale).T
        kernel_SF = threshold_F / (norms_S1F[:, 0].clamp(min=1e-8) * ctx.bandwidth)
        grad_threshold_F = -(window_grad_SF * kernel_SF).sum(dim=0)
        return grad_h_NF, grad_norms_FS, grad_threshold_F, None, None


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
) -> tuple[
    Float[torch.Tensor, "n_snapshots n d_sae"], Float[torch.Tensor, " d_sae"], Bool[torch.Tensor, "n d_sae"]
]:
    """``(f_SNF, score_sum_F, open_anywhere_NF)``; see :class:`SnapshotGateAndScore`."""
    return SnapshotGateAndScore.apply(h_NF, norms_FS, threshold_F, bandwidth, tanh_scale)
