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
closer to the exact product than autocast's own. The input's gradient is autocast's, from the
rounded weight in bfloat16; the bias's is summed in float32 (autocast sums it in bfloat16).

Without autocast, without a gradient to the weight, or for a weight that is not float32, it
is the plain ``addmm``, whose bytes the float32 step keeps (but inside
:func:`deferred_weight_grads`, below).

A step trained in micro-batches (:mod:`crosslens.training.micro`) runs them inside
:func:`deferred_weight_grads`. Each micro-batch's weight gradient ``a_b.T @ g_b`` would be a
weight-sized float32 tensor written and then added to ``.grad`` (three more weight-sized
passes, and one more weight at the peak); its operands are only ``b`` rows each. So the
micro-batches keep their operands instead, and the weight's gradient is one matmul over the
whole batch when the last one is done: ``A.T @ G``, the very sum the step without
micro-batches computes. Inside it these matmuls also round each weight once for all the
micro-batches rather than once for each.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from crosslens.core.devices import autocast_dtype


def float32_product(a_NK: torch.Tensor, b_KM: torch.Tensor) -> Float[torch.Tensor, "n m"]:
    """``a @ b`` accumulated and written in float32, for bfloat16 (or float32) operands; with a
    torch older than 2.8 (no ``out_dtype``), on CUDA, the bfloat16 product widened."""
    if a_NK.dtype == torch.float32:
        return torch.mm(a_NK, b_KM)
    if a_NK.is_cuda:
        if _has_out_dtype():
            return torch.mm(a_NK, b_KM, out_dtype=torch.float32)
        return torch.mm(a_NK, b_KM).float()
    return torch.mm(a_NK.float(), b_KM.float())


@functools.cache
def _has_out_dtype() -> bool:
    return "dtype" in torch.ops.aten.mm.overloads()


def _parameter(W: torch.Tensor) -> torch.Tensor | None:
    """The tensor ``W`` is all of, laid out the same (a parameter reshaped to a matrix), or None."""
    root = W if W._base is None else W._base
    same = W.is_contiguous() and root.is_contiguous() and W.numel() == root.numel()
    return root if same and W.data_ptr() == root.data_ptr() else None


@dataclass
class _Deferred:
    """The weights whose gradients a :func:`deferred_weight_grads` block sums at its end, their
    rounded copies, and the operands each backward kept, by the weight's ``id``."""

    weights: dict[int, torch.Tensor]
    rounded: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)
    kept: dict[int, list[tuple[torch.Tensor, int, torch.Tensor, int]]] = field(default_factory=dict)
    open: bool = True
    """False once the block has ended: a backward after it writes its gradient itself."""

    def holds(self, W: torch.Tensor) -> bool:
        root = _parameter(W)
        return root is not None and id(root) in self.weights

    def round(self, W: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``W`` (a matrix view of a listed weight) rounded to ``dtype``, once per block."""
        if W.dtype == dtype:
            return W
        root = _parameter(W)
        version, copy = self.rounded.get(id(root), (None, None))
        if copy is None or version != root._version:  # rounded again if changed in place
            copy = root.detach().to(dtype)
            self.rounded[id(root)] = (root._version, copy)
        return copy.view(W.shape)

    def keep(self, W: torch.Tensor, a_low: torch.Tensor, grad_NM: torch.Tensor) -> None:
        self.kept.setdefault(id(_parameter(W)), []).append((a_low, a_low._version, grad_NM, grad_NM._version))

    def write_grads(self) -> None:
        self.rounded.clear()  # let the copies go before the gradients are allocated
        for key, kept in self.kept.items():
            W = self.weights[key]
            if any(a._version != a_version or g._version != g_version for a, a_version, g, g_version in kept):
                raise RuntimeError(_MODIFIED_IN_PLACE)
            a_BK, grad_BM = torch.cat([a for a, *_ in kept]), torch.cat([g for _, _, g, _ in kept])
            kept.clear()
            grad = float32_product(a_BK.T, grad_BM.to(a_BK.dtype)).to(W.dtype).view(W.shape)
            del a_BK, grad_BM
            if W.grad is None:
                W.grad = grad
            else:
                W.grad.add_(grad)
        self.kept.clear()


_MODIFIED_IN_PLACE = (
    "an operand of a crosscoder weight matmul was modified in place between its forward and the "
    "gradient's matmul; clone it before modifying it."
)

_state = threading.local()


def _deferred() -> _Deferred | None:
    return getattr(_state, "deferred", None)


def rounded(W: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``W`` detached and rounded to ``dtype``: inside a :func:`deferred_weight_grads` block that
    lists it, the block's one copy for all its micro-batches; else a copy made now."""
    deferred = _deferred()
    if deferred is not None and deferred.holds(W):
        return deferred.round(W, dtype)
    return W.detach().to(dtype)


@contextmanager
def deferred_weight_grads(weights: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside, :func:`weight_matmul`'s gradients to ``weights`` are not written by each
    backward: the operands are kept, and on leaving the block each weight's gradient is added
    to its ``.grad`` as one matmul over all of them (see the module docstring). So it suits
    ``.backward()``, not ``torch.autograd.grad`` asked for a listed weight (which gets no
    gradient inside the block). An error inside drops what was kept; a backward after the block
    writes its gradient itself. Not reentrant."""
    if _deferred() is not None:
        raise RuntimeError("deferred_weight_grads blocks do not nest")
    state = _Deferred({id(W): W for W in weights})
    _state.deferred = state
    try:
        yield
        state.write_grads()
    finally:
        state.open = False
        _state.deferred = None


def _plain(a_NK: torch.Tensor, W_KM: torch.Tensor, bias_M: torch.Tensor | None, feature_major: bool) -> torch.Tensor:
    if feature_major:
        return W_KM.T @ a_NK.T if bias_M is None else torch.addmm(bias_M[:, None], W_KM.T, a_NK.T)
    return a_NK @ W_KM if bias_M is None else torch.addmm(bias_M, a_NK, W_KM)


class _WeightMatmul(torch.autograd.Function):
    """:func:`weight_matmul` under autocast or in a :func:`deferred_weight_grads` block: the
    forward on operands rounded to ``dtype`` (the weight's own without autocast), the weight's
    gradient in float32 (:func:`float32_product`), or its operands kept for ``deferred``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a_NK: torch.Tensor, W_KM: torch.Tensor, bias_M: torch.Tensor | None, dtype: torch.dtype,
        feature_major: bool, deferred: _Deferred | None,
    ) -> torch.Tensor:  # fmt: skip
        a_low = a_NK.to(dtype)
        W_low = W_KM.to(dtype) if deferred is None else rounded(W_KM, dtype)
        with torch.autocast(a_NK.device.type, enabled=False):
            out = _plain(a_low, W_low, None if bias_M is None else bias_M.to(dtype), feature_major)
        # The weight's gradient reads the rounded input, the input's the rounded weight. They
        # are kept on ctx rather than saved, so that backward can let the rounded weight go
        # before it allocates the float32 gradient (the two would otherwise add up at the peak).
        ctx.a_low = a_low if ctx.needs_input_grad[1] else None
        ctx.W_low = W_low if ctx.needs_input_grad[0] else None
        # without autocast they are the inputs themselves: autograd's own check that they were
        # not modified in place before backward, done by hand
        ctx.versions = (a_low._version, W_low._version)
        ctx.feature_major, ctx.a_dtype, ctx.deferred = feature_major, a_NK.dtype, deferred
        ctx.weight = W_KM if deferred is not None else None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if any(need and kept is None for need, kept in zip(ctx.needs_input_grad[:2], (ctx.W_low, ctx.a_low), strict=True)):
            raise RuntimeError(
                "a crosscoder weight matmul was differentiated twice; its operands are freed by the first "
                "backward (retain_graph=True does not keep them): run the forward again."
            )
        for kept, version in zip((ctx.a_low, ctx.W_low), ctx.versions, strict=True):
            if kept is not None and kept._version != version:
                raise RuntimeError(_MODIFIED_IN_PLACE)
        grad_NM = grad.T if ctx.feature_major else grad
        grad_a = grad_W = grad_bias = None
        if ctx.needs_input_grad[0]:
            # in the layout autocast's addmm backward gives this input's gradient
            grad_a = (ctx.W_low @ grad).T if ctx.feature_major else grad @ ctx.W_low.T
            grad_a = grad_a.to(ctx.a_dtype)
            ctx.W_low = None
        if ctx.needs_input_grad[1]:
            if ctx.deferred is None or not ctx.deferred.open:
                # a CPU's widened product must not be rounded back by an autocast around backward
                with torch.autocast(grad.device.type, enabled=False):
                    grad_W = float32_product(ctx.a_low.T, grad_NM.to(ctx.a_low.dtype))
            else:
                ctx.deferred.keep(ctx.weight, ctx.a_low, grad_NM)
            ctx.a_low = None
        if ctx.needs_input_grad[2]:
            grad_bias = grad_NM.sum(dim=0, dtype=torch.float32)
        return grad_a, grad_W, grad_bias, None, None, None


def weight_matmul(
    a_NK: Float[torch.Tensor, "n k"],
    W_KM: Float[torch.Tensor, "k m"],
    bias_M: Float[torch.Tensor, " m"] | None = None,
    *,
    feature_major: bool = False,
) -> torch.Tensor:
    """``a @ W + bias``, ``[N, M]``; with ``feature_major`` its transpose written contiguous,
    ``W.T @ a.T + bias[:, None]`` (``[M, N]``). Where ``W`` takes a gradient, under autocast (a
    float32 ``W``) or in a :func:`deferred_weight_grads` block that lists it, through
    :class:`_WeightMatmul` (see the module docstring); else the plain ``addmm``."""
    if not (torch.is_grad_enabled() and W_KM.requires_grad):
        return _plain(a_NK, W_KM, bias_M, feature_major)
    deferred = _deferred()
    deferred = deferred if deferred is not None and deferred.holds(W_KM) else None
    dtype = autocast_dtype(W_KM.device)
    if dtype is None or W_KM.dtype != torch.float32:
        if deferred is None:
            return _plain(a_NK, W_KM, bias_M, feature_major)
        dtype = W_KM.dtype
    return _WeightMatmul.apply(a_NK, W_KM, bias_M, dtype, feature_major, deferred)
