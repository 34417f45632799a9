"""The crosscoder's weight gradients: in float32 under autocast, and summed once over a
micro-batched step.

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

The block takes the decoder's other weight-sized gradients off the micro-batches too, since
``W_dec`` does not change inside a step:

* the decoder norms every sparsity term reads (:func:`weight_row_norms`) are computed once per
  block, and their gradient ``W * grad_norm / norm`` (:func:`~crosslens.core.tensors.row_norms`)
  is summed as the small ``grad_norm / norm`` and multiplied by ``W`` once at the end;
* the decodes that are not one weight matmul: JumpReLU's per-snapshot decode
  (:func:`~crosslens.kernels.regated_decode.snapshot_decode`) keeps what regates its code (the pre-activation, norms and
  threshold; the code is ``S`` times larger), and its closed-gate variant
  (:func:`~crosslens.kernels.regated_decode.shared_code_decode`) the shared code, as one matmul's operands; the gated decode of
  :mod:`~crosslens.kernels.jumprelu_entry_classes` keeps its dense part's operands as a matmul
  does and adds its per-snapshot corrections to the block's float32 sum
  (:meth:`WeightBlock.sum_buffer`); the pairs' kernels of
  :mod:`~crosslens.kernels.sparse` (JumpReLU's step from pairs, TopK's decode and
  auxiliary decode) add the rows they touch to that sum.

So no weight-sized tensor is written per micro-batch; each weight's gradient is written once,
when the block ends. And a micro-batch's encoder product is computed once a step: the
gradient-free pass that comes first leaves it in the block (:func:`kept_products`), and the
micro-batch's own pass takes it. (:func:`~crosslens.kernels.regated_decode.snapshot_decode` regates under autocast outside a block too: its
decoder gradient is then float32, and the ``[S, N, F]`` code is not kept for backward.)

Between steps the weights normally change only in the optimizer's pass, which reads and
writes every element anyway (any other in-place edit is caught by the weight's version counter,
and the step then rounds the weight itself). So the trainer's Adam can write each weight's rounded copy as it updates it,
and the next step takes that copy where :func:`rounded` would read the float32 weight again to
make it; likewise the decoder norms. The functions here that read a weight rounded or its row
norms take the step's :class:`~crosslens.kernels.step_weights.StepWeights` by argument
(``step_weights``), which the crosscoder passes down from its trainer. The block is handed over
the same way: :func:`deferred_weight_grads` gives it to the crosscoder for its length
(``crosscoder.weight_block``), which passes it to every kernel it calls (``block``); a kernel
given no block, or one that does not list its weight, writes its gradient itself.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from crosslens.core.devices import autocast_dtype
from crosslens.core.tensors import norm_gradient_scale, row_norms
from crosslens.kernels.step_weights import StepWeights, handed_row_norms, parameter_of, written_copy


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


def _operands(a: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, feature_major: bool) -> tuple[Any, ...]:
    """What makes two products of :func:`weight_matmul` the same: the input's memory, layout,
    dtype and version, the weight's and the bias's identity and version, the output's layout and
    the autocast dtype."""
    root = parameter_of(W)
    a_key = (a.data_ptr(), a.shape, a.stride(), a.dtype, a.device, a._version)
    bias_key = None if bias is None else (id(bias), bias._version)
    return (id(root), root._version, W.shape, bias_key, *a_key, feature_major, autocast_dtype(a.device))


@dataclass
class WeightBlock:
    """What a :func:`deferred_weight_grads` block sums for its weights (by the weight's ``id``)
    and writes to their ``.grad`` when it ends: the operands its matmuls kept, the regated
    decodes' inputs, the norms' gradient scales and the float32 sums kernels add rows to; and
    what it computes once for all its micro-batches: the rounded copies and the row norms."""

    weights: dict[int, torch.Tensor]
    rounded: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)
    norms: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)
    kept: dict[int, list[tuple[torch.Tensor, int, torch.Tensor, int]]] = field(default_factory=dict)
    regated: dict[int, list[tuple[torch.Tensor, ...]]] = field(default_factory=dict)
    norm_scales: dict[int, torch.Tensor] = field(default_factory=dict)
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)
    """Each weight's version when a part of its gradient that reads the weight itself at the end
    (the norms' part) was first taken: changed in place after that, the sum would be wrong."""
    products: list[tuple[int, tuple[Any, ...], int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    """Gradient-free products left for a pass with gradient (:func:`kept_products`), in the order
    they were made: the weight's ``id``, what identifies their operands, the product's version
    then, the input (held, so that its memory is not reused) and the product."""
    leaving: bool = False
    """Inside :func:`kept_products`: a gradient-free product is kept for a later pass."""
    open: bool = True
    """False once the block has ended: a backward after it writes its gradient itself."""

    def holds(self, W: torch.Tensor) -> bool:
        root = parameter_of(W)
        return root is not None and id(root) in self.weights

    def round(self, W: torch.Tensor, dtype: torch.dtype, step_weights: StepWeights | None = None) -> torch.Tensor:
        """``W`` (a matrix view of a listed weight) rounded to ``dtype``, once per block (the
        optimizer's copy where ``step_weights`` holds one)."""
        if W.dtype == dtype:
            return W
        root = parameter_of(W)

        def make(detached: torch.Tensor) -> torch.Tensor:
            written = written_copy(step_weights, root, dtype)
            return written if written is not None else detached.to(dtype)

        return self._once(self.rounded, root, make).view(W.shape)

    def row_norms(self, W: torch.Tensor, step_weights: StepWeights | None = None) -> Float[torch.Tensor, "..."]:
        """The norms of ``W``'s rows along its last dimension (``W`` a listed weight itself),
        without gradient, once per block (the optimizer's where ``step_weights`` holds them)."""
        root = parameter_of(W)
        return self._once(self.norms, root, lambda _: _row_norms_of(root, step_weights))

    @staticmethod
    def _once(store: dict[int, tuple[int, torch.Tensor]], root: torch.Tensor, make: Any) -> torch.Tensor:
        """``make(root)`` (detached), kept in ``store`` for the block; made again if ``root`` was
        changed in place since."""
        version, value = store.get(id(root), (None, None))
        if value is None or version != root._version:
            value = make(root.detach())
            store[id(root)] = (root._version, value)
        return value

    def keep(self, W: torch.Tensor, a_low: torch.Tensor, grad_NM: torch.Tensor) -> None:
        """A matmul's operands: ``W``'s gradient has ``a_low.T @ grad_NM`` added at the end."""
        self.kept.setdefault(id(parameter_of(W)), []).append((a_low, a_low._version, grad_NM, grad_NM._version))

    def keep_regated(
        self,
        W: torch.Tensor,
        h_NF: torch.Tensor,
        norms_FS: torch.Tensor,
        threshold_F: torch.Tensor,
        grad_SND: torch.Tensor,
    ) -> None:
        """A :func:`~crosslens.kernels.regated_decode.snapshot_decode`'s inputs: ``W``'s gradient ``[F, S, D]`` has, at each
        snapshot, the regated code's ``f_s.T @ grad_s`` added at the end."""
        parts = (h_NF, norms_FS, threshold_F, grad_SND)
        self.regated.setdefault(id(parameter_of(W)), []).append((*parts, tuple(t._version for t in parts)))

    def add_norm_scale(self, W: torch.Tensor, scale: torch.Tensor) -> bool:
        """Add ``scale`` (``grad_norm / norm`` for norms of the rows of ``W`` along its root's last
        dimension) to what the end multiplies ``W`` by; False where ``scale`` does not have one
        entry per such row (then the caller writes the gradient itself)."""
        root = parameter_of(W)
        if root is None or scale.numel() * root.shape[-1] != root.numel():
            return False
        self._note_version(root)
        scale = scale.reshape(root.shape[:-1]).float()
        total = self.norm_scales.get(id(root))
        self.norm_scales[id(root)] = scale.clone() if total is None else total.add_(scale)
        return True

    def sum_buffer(self, W: torch.Tensor) -> torch.Tensor:
        """The block's float32 sum for ``W``'s gradient, in ``W``'s shape: a kernel adds the rows it
        touches to it, and the end adds it to ``.grad``."""
        root = parameter_of(W)
        total = self.sums.get(id(root))
        if total is None:
            total = self.sums[id(root)] = torch.zeros(root.shape, dtype=torch.float32, device=root.device)
        return total.view(W.shape)

    def leave_product(
        self, a: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, feature_major: bool, out: torch.Tensor
    ) -> None:
        self.products.append((id(parameter_of(W)), _operands(a, W, bias, feature_major), out._version, a, out))

    def take_product(
        self, a: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, feature_major: bool
    ) -> torch.Tensor | None:
        """The product a gradient-free pass left for these very operands (the same memory,
        layout and versions) and left unchanged since (a hook may edit a pre-activation in
        place), handed over once; None where there is none. The passes with gradient come in
        the gradient-free pass's order, so a miss means that the inputs are not recognised (a
        fresh tensor each pass: ``apply_b_dec_to_input``, a hook that returns a new input): the
        weight's products are then let go, not held to the block's end."""
        operands = _operands(a, W, bias, feature_major)
        for i, (_, kept_operands, version, _, out) in enumerate(self.products):
            if kept_operands == operands and out._version == version:
                del self.products[i]
                return out
        weight = id(parameter_of(W))
        self.products = [entry for entry in self.products if entry[0] != weight]
        return None

    def _note_version(self, root: torch.Tensor) -> None:
        self.versions.setdefault(id(root), root._version)

    def check(self) -> None:
        """Refuse, before any gradient is written, what was changed in place since it was kept."""
        for key, W in self.weights.items():
            if W._version != self.versions.get(key, W._version):
                raise RuntimeError(_WEIGHT_MODIFIED)
            for a, a_version, g, g_version in self.kept.get(key, []):
                check_unchanged((a, g), (a_version, g_version))
            for *parts, versions in self.regated.get(key, []):
                check_unchanged(parts, versions)

    def write_grads(self) -> None:
        self.check()
        self.rounded.clear()  # let the copies go before the gradients are allocated
        self.norms.clear()
        self.products.clear()
        for key, W in self.weights.items():
            grad = self.sums.pop(key, None)
            kept = self.kept.pop(key, [])
            if kept:
                a_BK, grad_BM = torch.cat([a for a, *_ in kept]), torch.cat([g for _, _, g, _ in kept])
                kept.clear()
                if grad is not None and a_BK.dtype == torch.float32:  # added in the matmul, no temporary
                    with torch.autocast(W.device.type, enabled=False):
                        grad.view(a_BK.shape[1], -1).addmm_(a_BK.T, grad_BM.float())
                else:
                    product = float32_product(a_BK.T, grad_BM.to(a_BK.dtype)).view(W.shape)
                    grad = product if grad is None else grad.add_(product)
                    del product
                del a_BK, grad_BM
            regated = [parts[:4] for parts in self.regated.pop(key, [])]
            if regated:
                grad = regated_weight_grad(
                    regated, grad if grad is not None else W.new_zeros(W.shape, dtype=torch.float32)
                )
                regated.clear()
            scale = self.norm_scales.pop(key, None)
            if scale is not None:
                if grad is None:
                    grad = W.detach().float() * scale[..., None]
                else:
                    grad.addcmul_(W.detach(), scale[..., None])
            if grad is None:
                continue
            grad = grad.to(W.dtype)
            if W.grad is None:
                W.grad = grad
            else:
                W.grad.add_(grad)
            del grad
        self.clear()

    def clear(self) -> None:
        for parts in (
            self.rounded,
            self.norms,
            self.kept,
            self.regated,
            self.norm_scales,
            self.sums,
            self.versions,
            self.products,
        ):
            parts.clear()


_MODIFIED_IN_PLACE = (
    "an operand of a crosscoder weight matmul (or a JumpReLU decode's pre-activation, norms or "
    "threshold) was modified in place between its forward and the gradient's matmul; clone it "
    "before modifying it."
)

TWICE = (
    "a crosscoder weight matmul was differentiated twice; its operands are freed by the first "
    "backward (retain_graph=True does not keep them): run the forward again."
)

_WEIGHT_MODIFIED = (
    "a crosscoder weight was modified in place inside a micro-batched step (deferred_weight_grads) "
    "after a backward took its norms' gradient, which the step's end computes from the weight; "
    "modify it before the step or after it."
)


def check_unchanged(tensors: Sequence[torch.Tensor | None], versions: Sequence[int]) -> None:
    """Autograd's own check that what a backward reads was not modified in place since it was
    kept, done by hand for tensors kept on ``ctx`` or in a block rather than saved (None: let go)."""
    if any(t is not None and t._version != v for t, v in zip(tensors, versions, strict=True)):
        raise RuntimeError(_MODIFIED_IN_PLACE)


def block_listing(block: WeightBlock | None, W: torch.Tensor) -> WeightBlock | None:
    """``block`` (a :func:`deferred_weight_grads` block handed over by argument) where it lists
    ``W`` (or the weight it is a reshaped view of), else None: where a kernel's backward hands
    its part of ``W``'s gradient."""
    return block if block is not None and block.holds(W) else None


def rounded(
    W: torch.Tensor, dtype: torch.dtype, step_weights: StepWeights | None = None, block: WeightBlock | None = None
) -> torch.Tensor:
    """``W`` detached and rounded to ``dtype``: where ``block`` (a :func:`deferred_weight_grads`
    block) lists it, the block's one copy for all its micro-batches; else the copy the optimizer
    wrote (``step_weights``, :mod:`~crosslens.kernels.step_weights`) or a copy made now."""
    block = block_listing(block, W)
    if block is not None:
        return block.round(W, dtype, step_weights)
    root = parameter_of(W)
    written = None if root is None else written_copy(step_weights, root, dtype)
    return written.view(W.shape) if written is not None else W.detach().to(dtype)


def _row_norms_of(root: torch.Tensor, step_weights: StepWeights | None) -> torch.Tensor:
    """The norms of ``root``'s rows along its last dimension, without gradient: the optimizer's
    (:func:`handed_row_norms`) where it writes them, else computed."""
    handed = handed_row_norms(step_weights, root)
    return handed if handed is not None else torch.linalg.vector_norm(root.detach(), dim=-1)


def row_norms_now(
    W: torch.Tensor, step_weights: StepWeights | None = None, block: WeightBlock | None = None
) -> Float[torch.Tensor, "..."]:
    """The norms of ``W``'s rows along its last dimension, without gradient: where ``block``
    lists ``W``, the block's (computed once for all its micro-batches); the optimizer's where
    ``step_weights`` holds them (:func:`handed_row_norms`)."""
    block = block_listing(block, W)
    if block is not None and parameter_of(W) is W:
        return block.row_norms(W, step_weights).clone()  # the caller may edit its copy; the block's stays
    return _row_norms_of(W, step_weights)


@contextmanager
def deferred_weight_grads(weights: Sequence[torch.Tensor], holder: Any = None) -> Iterator[WeightBlock]:
    """A :class:`WeightBlock` for ``weights``, handed over by argument: to the kernels given it
    (``block=``) the gradients to ``weights`` of :func:`weight_matmul`, :func:`weight_row_norms`,
    ``regated_decode.snapshot_decode`` and the kernels that ask :func:`block_listing` are not
    written by each backward: each keeps what it needs, and on leaving the block each weight's
    gradient is added to its ``.grad`` in one pass (see the module docstring). So it suits
    ``.backward()``, not ``torch.autograd.grad`` asked for a listed weight (which gets no gradient
    inside the block). ``holder`` (a crosscoder) holds the block for its length
    (``holder.weight_block``) and hands it to its kernels; a holder holds one block at a time.
    An error inside drops what was kept; a backward after the block writes its gradient itself."""
    if holder is not None and getattr(holder, "weight_block", None) is not None:
        raise RuntimeError("deferred_weight_grads blocks do not nest")
    block = WeightBlock({id(W): W for W in weights})
    if holder is not None:
        holder.weight_block = block
    try:
        yield block
        block.write_grads()
    finally:
        block.open = False
        block.clear()
        if holder is not None:
            holder.weight_block = None


@contextmanager
def kept_products(block: WeightBlock | None) -> Iterator[None]:
    """Inside, each gradient-free :func:`weight_matmul` of a weight ``block`` (a
    :func:`deferred_weight_grads` block) lists leaves its product in the block, and the first
    product with gradient of the very same operands (the same memory, layout and versions)
    takes it, if unchanged, rather than computing it again: the same bytes, as the two run the
    same operation (see :meth:`WeightBlock.take_product`). A micro-batched step's gradient-free
    pass (the pre-activations of every micro-batch) runs inside, so each micro-batch's encoder
    matmul is done once a step, not twice. With no block (None) it does nothing."""
    if block is None:
        yield
        return
    block.leaving = True
    try:
        yield
    finally:
        block.leaving = False


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
        ctx: Any,
        a_NK: torch.Tensor,
        W_KM: torch.Tensor,
        bias_M: torch.Tensor | None,
        dtype: torch.dtype,
        feature_major: bool,
        deferred: WeightBlock | None,
        known: torch.Tensor | None,
        step_weights: StepWeights | None,
    ) -> torch.Tensor:
        a_low = a_NK.to(dtype)
        W_low = rounded(W_KM, dtype, step_weights, deferred)  # the block's copy in a block
        if known is not None:  # this very product, from a gradient-free pass (kept_products)
            ctx.mark_dirty(known)  # returned as the output itself: a hook may edit it in place
            out = known
        else:
            with torch.autocast(a_NK.device.type, enabled=False):
                out = _plain(a_low, W_low, None if bias_M is None else bias_M.to(dtype), feature_major)
        # The weight's gradient reads the rounded input, the input's the rounded weight. They
        # are kept on ctx rather than saved, so that backward can let the rounded weight go
        # before it allocates the float32 gradient (the two would otherwise add up at the peak).
        ctx.a_low = a_low if ctx.needs_input_grad[1] else None
        ctx.W_low = W_low if ctx.needs_input_grad[0] else None
        # without autocast they are the inputs themselves, so their versions are checked
        ctx.versions = (a_low._version, W_low._version)
        ctx.feature_major, ctx.a_dtype, ctx.deferred = feature_major, a_NK.dtype, deferred
        ctx.weight = W_KM if deferred is not None else None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if any(
            need and kept is None for need, kept in zip(ctx.needs_input_grad[:2], (ctx.W_low, ctx.a_low), strict=True)
        ):
            raise RuntimeError(TWICE)
        check_unchanged((ctx.a_low, ctx.W_low), ctx.versions)
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
        return grad_a, grad_W, grad_bias, None, None, None, None, None


def weight_matmul(
    a_NK: Float[torch.Tensor, "n k"],
    W_KM: Float[torch.Tensor, "k m"],
    bias_M: Float[torch.Tensor, " m"] | None = None,
    *,
    feature_major: bool = False,
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> torch.Tensor:
    """``a @ W + bias``, ``[N, M]``; with ``feature_major`` its transpose written contiguous,
    ``W.T @ a.T + bias[:, None]`` (``[M, N]``). Where ``W`` takes a gradient, under autocast (a
    float32 ``W``) or where ``block`` (a :func:`deferred_weight_grads` block) lists it, through
    :class:`_WeightMatmul` (see the module docstring), reading ``W`` rounded as ``step_weights``
    holds it where the optimizer wrote it (:func:`rounded`); else the plain ``addmm`` (but for a
    gradient-free product under autocast in such a block: autocast's, on the block's copy).
    In a block, a product :func:`kept_products` left for these operands is taken, not computed."""
    block = block_listing(block, W_KM)
    dtype = product_dtype(W_KM, block)
    if block is not None and block.products and dtype is not None and torch.is_grad_enabled():
        known = block.take_product(a_NK, W_KM, bias_M, feature_major)
        if known is not None:
            return _WeightMatmul.apply(a_NK, W_KM, bias_M, dtype, feature_major, block, known, step_weights)
    if dtype is None:
        out = _plain(a_NK, W_KM, bias_M, feature_major)
    else:
        out = _WeightMatmul.apply(a_NK, W_KM, bias_M, dtype, feature_major, block, None, step_weights)
    if block is not None and block.leaving and not torch.is_grad_enabled():
        block.leave_product(a_NK, W_KM, bias_M, feature_major, out)
    return out


def product_dtype(W: torch.Tensor, block: WeightBlock | None) -> torch.dtype | None:
    """The dtype this module's product reads ``W`` in, or None where the plain op serves: under
    autocast (a float32 ``W``) autocast's, where ``W`` takes a gradient or, without one, where a
    block holds a copy to share; in a block without autocast, ``W``'s own (its gradient is the
    block's)."""
    dtype = autocast_dtype(W.device) if W.dtype == torch.float32 else None
    if not (torch.is_grad_enabled() and W.requires_grad):
        return dtype if block is not None else None
    return dtype or (W.dtype if block is not None else None)


class _BlockRowNorms(torch.autograd.Function):
    """:func:`weight_row_norms` inside a block: the block's norms, whose gradient to ``W`` the
    block multiplies ``W`` by at its end (or, for a backward after it, written now)."""

    @staticmethod
    def forward(ctx: Any, W: torch.Tensor, norms: torch.Tensor, block: WeightBlock) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(W, norms)
        ctx.block = block
        return norms.clone()  # hooks and callers may edit it; the block's stays as computed

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        W, norms = ctx.saved_tensors
        scale = norm_gradient_scale(grad, norms)
        if ctx.block.open and ctx.block.add_norm_scale(W, scale):
            return None, None, None
        return W * scale.to(W.dtype)[..., None], None, None


def weight_row_norms(
    W: Float[torch.Tensor, "... d"],
    known: Float[torch.Tensor, "..."] | None = None,
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> Float[torch.Tensor, "..."]:
    """Differentiable norms of ``W``'s rows along its last dimension
    (:func:`~crosslens.core.tensors.row_norms`, ``known`` where computed already, else the
    optimizer's where ``step_weights`` holds them); where ``block`` (a
    :func:`deferred_weight_grads` block) lists ``W``, the block's norms, their gradient summed over
    the block's micro-batches and multiplied by ``W`` once at its end."""
    block = block_listing(block, W)
    if block is None or parameter_of(W) is not W:
        return row_norms(W, known if known is not None else handed_row_norms(step_weights, W))
    if not (torch.is_grad_enabled() and W.requires_grad):
        return block.row_norms(W, step_weights).clone()
    return _BlockRowNorms.apply(W, block.row_norms(W, step_weights), block)


def regated_weight_grad(
    regated: Sequence[tuple[torch.Tensor, ...]], out_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"]
) -> Float[torch.Tensor, "d_sae n_snapshots d_in"]:
    """Add to ``out_FSD`` (float32) the decoder's gradient of ``regated_decode.snapshot_decode`` calls given as
    ``(h_NF, norms_FS, threshold_F, grad_SND)``: at each snapshot ``s``, the code ``h * [h *
    norms[:, s] > t]`` of all of them stacked, in the dtype the forward's matmul read it (the
    output gradient's), times their output gradients stacked, one float32 product
    (:func:`float32_product`) per snapshot."""
    S = out_FSD.shape[1]
    grad_SBD = torch.cat([g for *_, g in regated], dim=1)
    rows = [h.shape[0] for h, *_ in regated]
    f_BF = grad_SBD.new_empty(sum(rows), out_FSD.shape[0])
    for s in range(S):
        for f_bF, (h_bF, norms_FS, threshold_F, _) in zip(f_BF.split(rows), regated, strict=True):
            # the gate as forward_block computes it, so the code is the forward's to the bit
            f_bF.copy_(torch.where(h_bF * norms_FS[:, s] > threshold_F, h_bF, 0.0))
        with torch.autocast(out_FSD.device.type, enabled=False):
            out_FSD[:, s] += float32_product(f_BF.T, grad_SBD[s])
    return out_FSD
