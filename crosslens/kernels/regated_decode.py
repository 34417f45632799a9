"""JumpReLU's per-snapshot decodes whose decoder gradient is made from the code regated, not
from a saved ``[S, N, F]`` code: :func:`snapshot_decode` and :func:`shared_code_decode`.

Under autocast (a float32 decoder), or where a micro-batched step's
:func:`~crosslens.kernels.weight_grads.deferred_weight_grads` block, handed over by argument
(``block``), lists the decoder,
the decoder's gradient is computed in float32 from the code regated from the pre-activation,
norms and threshold (or from the shared code), so the ``S`` times larger per-snapshot code is
never kept for backward; in a block, what regates it is kept for the block's one gradient
(:func:`~crosslens.kernels.weight_grads.regated_weight_grad`).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from crosslens.kernels.step_weights import StepWeights
from crosslens.kernels.weight_grads import (
    TWICE,
    WeightBlock,
    block_listing,
    check_unchanged,
    float32_product,
    product_dtype,
    regated_weight_grad,
    rounded,
)


class _RegatedDecode(torch.autograd.Function):
    """:func:`snapshot_decode` under autocast or in a block, and :func:`shared_code_decode`: the
    forward autocast's batched matmul (on the block's rounded copy in a block; the weight's own
    dtype without autocast); the decoder's gradient in float32, or its parts kept for the block,
    from ``code`` rather than the saved ``[S, N, F]`` code: the code regated from ``(h, norms,
    threshold)``, or ``(shared_NF,)``, one code for every snapshot."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        f_SNF: torch.Tensor,
        W_FSD: torch.Tensor,
        code: tuple[torch.Tensor, ...],
        dtype: torch.dtype,
        block: WeightBlock | None,
        step_weights: StepWeights | None,
    ) -> torch.Tensor:
        W_low = rounded(W_FSD, dtype, step_weights, block)  # the block's copy in a block
        with torch.autocast(f_SNF.device.type, enabled=False):
            out = torch.bmm(f_SNF.to(dtype), W_low.transpose(0, 1))
        ctx.W_low = W_low if ctx.needs_input_grad[0] else None
        ctx.code = code if ctx.needs_input_grad[1] else None
        # kept on ctx, not saved (the rounded weight is the block's), so checked by hand
        ctx.versions = tuple(t._version for t in (W_low, *code))
        ctx.block, ctx.f_dtype, ctx.weight, ctx.n_code = block, f_SNF.dtype, W_FSD, len(code)
        return out

    @staticmethod
    def backward(ctx: Any, grad_SND: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if any(
            need and kept is None for need, kept in zip(ctx.needs_input_grad[:2], (ctx.W_low, ctx.code), strict=True)
        ):
            raise RuntimeError(TWICE)
        check_unchanged((ctx.W_low, *(ctx.code or (None,) * ctx.n_code)), ctx.versions)
        grad_f = grad_W = None
        if ctx.needs_input_grad[0]:
            with torch.autocast(grad_SND.device.type, enabled=False):
                grad_f = torch.bmm(grad_SND.to(ctx.W_low.dtype), ctx.W_low.permute(1, 2, 0)).to(ctx.f_dtype)
            ctx.W_low = None
        if ctx.needs_input_grad[1]:
            W, block = ctx.weight, (ctx.block if ctx.block is not None and ctx.block.open else None)
            if len(ctx.code) == 1:  # one code for every snapshot: one matmul over [N, S * D]
                F_, S, D = W.shape
                shared_NF = ctx.code[0]
                grad_NX = grad_SND.transpose(0, 1).reshape(-1, S * D).to(shared_NF.dtype)
                if block is not None:
                    block.keep(W.view(F_, S * D), shared_NF, grad_NX)
                else:
                    with torch.autocast(grad_SND.device.type, enabled=False):
                        grad_W = float32_product(shared_NF.T, grad_NX).view(F_, S, D).to(W.dtype)
            elif block is not None:
                block.keep_regated(W, *ctx.code, grad_SND)
            else:
                grad_W = regated_weight_grad([(*ctx.code, grad_SND)], W.new_zeros(W.shape, dtype=torch.float32))
                grad_W = grad_W.to(W.dtype)
            ctx.code = None
        return grad_f, grad_W, None, None, None, None


def snapshot_decode(
    f_SNF: Float[torch.Tensor, "n_snapshots n d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    gate: tuple[
        Float[torch.Tensor, "n d_sae"], Float[torch.Tensor, "d_sae n_snapshots"], Float[torch.Tensor, " d_sae"]
    ],
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> Float[torch.Tensor, "n_snapshots n d_in"]:
    """``f_s @ W_dec[:, s]`` at every snapshot, ``[S, N, D]``, of the JumpReLU code ``f_SNF = h *
    [h * norms_s > t]`` that ``gate = (h_NF, norms_FS, threshold_F)`` (without gradient) gives.
    Under autocast (a float32 decoder) or where ``block`` (a :func:`deferred_weight_grads` block)
    lists the decoder, the decoder's gradient is computed from the code regated from ``gate``, so the
    ``[S, N, F]`` code is not kept for backward, and in float32 (:class:`_RegatedDecode`), reading
    the decoder rounded as ``step_weights`` holds it where the optimizer wrote it;
    else the plain batched matmul (but for a gradient-free product under autocast in such a
    block: autocast's, on the block's copy)."""
    block = block_listing(block, W_dec_FSD)
    dtype = product_dtype(W_dec_FSD, block)
    if dtype is None:
        return torch.bmm(f_SNF, W_dec_FSD.transpose(0, 1))
    return _RegatedDecode.apply(f_SNF, W_dec_FSD, tuple(t.detach() for t in gate), dtype, block, step_weights)


def shared_code_decode(
    f_SNF: Float[torch.Tensor, "n_snapshots n d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    shared_NF: Float[torch.Tensor, "n d_sae"],
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> Float[torch.Tensor, "n_snapshots n d_in"]:
    """``f_s @ W_dec[:, s]`` at every snapshot, ``[S, N, D]``, as :func:`snapshot_decode`, with
    the decoder's gradient at every snapshot that of the shared code ``shared_NF`` (without
    gradient): ``shared.T @ grad_s``, closed gates included (JumpReLU's
    ``closed_gate_decoder_grad``). The code's gradient is the decode's. One ``[F, N] @ [N, S *
    D]`` product, in float32 or kept in ``block`` (a :func:`deferred_weight_grads` block); the ``[S, N, F]``
    code is not kept for backward."""
    block = block_listing(block, W_dec_FSD)
    dtype = product_dtype(W_dec_FSD, block) or W_dec_FSD.dtype
    return _RegatedDecode.apply(f_SNF, W_dec_FSD, (shared_NF.detach().to(dtype),), dtype, block, step_weights)
