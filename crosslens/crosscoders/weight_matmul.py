"""The crosscoder's weight matmuls under autocast, with the weight's gradient in float32.

Under bfloat16 autocast a matmul reads its float32 weight rounded to bfloat16, and autograd
hands back the weight's gradient as the matmul wrote it, in bfloat16, then casts it to the
parameter's float32 ``.grad``: a weight-sized bfloat16 tensor written, read back and
widened. At Ge et al.'s shape that is 1.2 GB for each of ``W_enc`` and ``W_dec``; at
98,304 features it is 4.5 GiB more at the backward pass's peak.

:func:`weight_matmul` computes the same forward (the same rounded operands, the same
bfloat16 result) and writes the weight's gradient in float32 straight from the matmul: on
CUDA by ``torch.mm(..., out_dtype=torch.float32)``, the bfloat16 products accumulated and
stored in float32; elsewhere from the operands widened to float32, the same exact products
added in another order. The gradient keeps the bits a bfloat16 store would drop, so it is
closer to the exact product than autocast's own. The other gradients are autocast's: the
input's from the rounded weight in bfloat16, the bias's summed in float32.

Without autocast, without a gradient to the weight, or for a weight that is not float32, it
is the plain ``addmm``, whose bytes the float32 step keeps.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from crosslens.core.devices import autocast_dtype


def float32_product(a_NK: torch.Tensor, b_KM: torch.Tensor) -> Float[torch.Tensor, "n m"]:
    """``a @ b`` of two bfloat16 matrices, accumulated and written in float32."""
    if a_NK.is_cuda:
        return torch.mm(a_NK, b_KM, out_dtype=torch.float32)
    return torch.mm(a_NK.float(), b_KM.float())


def _plain(a_NK: torch.Tensor, W_KM: torch.Tensor, bias_M: torch.Tensor | None, feature_major: bool) -> torch.Tensor:
    if feature_major:
        return W_KM.T @ a_NK.T if bias_M is None else torch.addmm(bias_M[:, None], W_KM.T, a_NK.T)
    return a_NK @ W_KM if bias_M is None else torch.addmm(bias_M, a_NK, W_KM)


class _WeightMatmul(torch.autograd.Function):
    """:func:`weight_matmul` under autocast: the forward on operands rounded to ``dtype``,
    the weight's gradient in float32 (:func:`float32_product`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a_NK: torch.Tensor, W_KM: torch.Tensor, bias_M: torch.Tensor | None, dtype: torch.dtype, feature_major: bool
    ) -> torch.Tensor:
        a_low, W_low = a_NK.to(dtype), W_KM.to(dtype)
        with torch.autocast(a_NK.device.type, enabled=False):
            out = _plain(a_low, W_low, None if bias_M is None else bias_M.to(dtype), feature_major)
        # The weight's gradient reads the rounded input, the input's the rounded weight. They
        # are kept on ctx rather than saved, so that backward can let the rounded weight go
        # before it allocates the float32 gradient (the two would otherwise add up at the peak).
        ctx.a_low = a_low if ctx.needs_input_grad[1] else None
        ctx.W_low = W_low if ctx.needs_input_grad[0] else None
        ctx.feature_major, ctx.a_dtype = feature_major, a_NK.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if any(need and kept is None for need, kept in zip(ctx.needs_input_grad[:2], (ctx.W_low, ctx.a_low), strict=True)):
            raise RuntimeError(
                "a crosscoder weight matmul under autocast was differentiated twice; its rounded operands are "
                "freed by the first backward (retain_graph=True does not keep them): run the forward again."
            )
        grad_NM = grad.T if ctx.feature_major else grad
        grad_a = grad_W = grad_bias = None
        if ctx.needs_input_grad[0]:
            # in the layout autocast's addmm backward gives this input's gradient
            grad_a = (ctx.W_low @ grad).T if ctx.feature_major else grad @ ctx.W_low.T
            grad_a = grad_a.to(ctx.a_dtype)
            ctx.W_low = None
        if ctx.needs_input_grad[1]:
            grad_W = float32_product(ctx.a_low.T, grad_NM.to(ctx.a_low.dtype))
            ctx.a_low = None
        if ctx.needs_input_grad[2]:
            grad_bias = grad_NM.sum(dim=0, dtype=torch.float32)
        return grad_a, grad_W, grad_bias, None, None


def weight_matmul(
    a_NK: Float[torch.Tensor, "n k"],
    W_KM: Float[torch.Tensor, "k m"],
    bias_M: Float[torch.Tensor, " m"] | None = None,
    *,
    feature_major: bool = False,
) -> torch.Tensor:
    """``a @ W + bias``, ``[N, M]``; with ``feature_major`` its transpose written contiguous,
    ``W.T @ a.T + bias[:, None]`` (``[M, N]``). Under autocast, where ``W`` is a float32 weight
    that takes a gradient, through :class:`_WeightMatmul` (see the module docstring)."""
    dtype = autocast_dtype(W_KM.device)
    if dtype is None or dtype == W_KM.dtype or W_KM.dtype != torch.float32 or not (
        torch.is_grad_enabled() and W_KM.requires_grad
    ):
        return _plain(a_NK, W_KM, bias_M, feature_major)
    return _WeightMatmul.apply(a_NK, W_KM, bias_M, dtype, feature_major)
