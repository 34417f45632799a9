"""Decode and decoder gradients from the active (token, feature) pairs alone.

A sparse crosscoder step needs, after the shared encoder matmul ``h [N, F]``, only the
pairs whose code is nonzero (TopK, BatchTopK) or whose JumpReLU gate is open at some
snapshot or inside the threshold's straight-through window at some snapshot. Their
decode and the decoder's gradients are sums over those pairs:

* decode, a gather-sum (what ``embedding_bag`` does): ``out[n, g] = sum over pairs (n, i)
  of v[pair, g] * W[i, g]``;
* the values' gradient, one dot product per pair and group: ``<grad_out[n, g], W[i, g]>``;
* the decoder's gradient, its transpose (a sparse-transpose-dense matmul):
  ``grad_W[i, g] = sum over pairs (n, i) of v[pair, g] * grad_out[n, g]``.

``W`` is viewed as ``[F, G, D]``: one group (``G = 1``, ``D = S * d_in``) where a pair has
one value for every snapshot (TopK), ``G = S`` where it has one per snapshot (JumpReLU's
per-snapshot gate). Two implementations compute the same sums: :class:`EagerKernels` here
(``embedding_bag``, ``index_select``, ``index_add_``), which runs on CPUs and in CI, and
``TritonKernels`` of :mod:`crosslens.kernels.triton_sparse`, which a plan whose backend
is ``"triton"`` takes (CUDA with triton installed; it is imported only then):
:func:`kernels_for` is the one switch. The sums differ only in the order of float additions.

Every sparse step's loss also reads the decoder norms ``||W[i, s]||`` (JumpReLU's scores,
TopK's L1 term), whose gradient to W is ``W * grad_norm / norm``. Autograd would write that
and the decode's gradient as two W-sized tensors and add them, three passes over W where one
does: :func:`gather_decode_and_norms` returns the norms (computed by the step without
gradient) from the decode's own node, whose backward starts each row of W's gradient from the
norms' part and adds the pairs' sums to it.

The JumpReLU crosscoder's step from the pairs is built on them in
:mod:`crosslens.kernels.jumprelu_pairs`; the TopK crosscoders call
:func:`gather_decode_and_norms` directly.

TopK's auxiliary loss decodes a second code from the decoder, one that every token reads from
the same few rows (the dead features'), which is a matmul, not a gather: the same node takes it
as :data:`DenseRows` and adds its rows' gradient to W's, so that W's gradient stays one tensor.

"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

from crosslens.core.devices import autocast_dtype
from crosslens.core.tensors import norm_gradient_scale
from crosslens.kernels.active_pairs import ActivePairs
from crosslens.kernels.plan import KernelPlan, plan_for
from crosslens.kernels.step_weights import StepWeights
from crosslens.kernels.weight_grads import WeightBlock, block_listing, float32_product, rounded

NormTerm = tuple[torch.Tensor, torch.Tensor]
"""``(W_FGD, scale_FR)``: the gradient of a loss through the norms of W's rows viewed ``[F, R,
G * D / R]`` is ``W * scale`` (:func:`~crosslens.core.tensors.norm_gradient_scale`), each
``scale[i, r]`` applied to row ``i``'s ``r``-th slice."""


DenseRows = tuple[torch.Tensor, torch.Tensor]
"""``(rows_R, values_NR)``: a code over a few rows of W that every token reads, decoded by
a matmul over those rows, ``values_NR @ W[rows_R]`` viewed ``[N, G * D]`` (TopK's auxiliary
decode of its dead features)."""


def eager_window_dots(
    grad_SND: Float[torch.Tensor, "S N D"],
    W_FSD: Float[torch.Tensor, "F S D"],
    h_NF: Float[torch.Tensor, "N F"],
    window_NF: Bool[torch.Tensor, "N F"],
    norms_FS: Float[torch.Tensor, "F S"],
    t_F: Float[torch.Tensor, " F"],
    half_width: float,
) -> tuple[Float[torch.Tensor, "F S"], Float[torch.Tensor, "F S"]]:
    """The twin of the fused window kernel (``TritonKernels.window_dots``), one snapshot at a
    time: the window's entries inside ``half_width`` of the threshold, and one masked product
    ``<grad, W>`` over every (token, feature), W rounded to the gradient's dtype as the kernel
    loads it, in float32."""
    S, F_ = grad_SND.shape[0], W_FSD.shape[0]
    sums_FS = torch.zeros(F_, S, dtype=torch.float32, device=grad_SND.device)
    counts_FS = torch.zeros_like(sums_FS)
    h_NF, t_F = h_NF.float(), t_F.float()
    for s in range(S):
        inside_NF = window_NF & ((h_NF * norms_FS[:, s].float() - t_F).abs() < half_width)
        dots_NF = float32_product(grad_SND[s], W_FSD[:, s].to(grad_SND.dtype).T)
        sums_FS[:, s] = (dots_NF * inside_NF).sum(dim=0)
        counts_FS[:, s] = inside_NF.sum(dim=0)
    return sums_FS, counts_FS


def eager_entry_masks(
    h_NF: Float[torch.Tensor, "n d_sae"],
    low_F: Float[torch.Tensor, " d_sae"],
    high_F: Float[torch.Tensor, " d_sae"],
    t_F: Float[torch.Tensor, " d_sae"],
    half_width: float,
) -> tuple[Bool[torch.Tensor, "n d_sae"], Bool[torch.Tensor, "n d_sae"], Int[torch.Tensor, ""], Int[torch.Tensor, ""]]:
    """``(open_NF, active_NF, n_open, n_active)`` for each feature's smallest and largest norm:
    the entries whose distance ``h * norm - t`` is above 0 at one of the two, those above 0 or
    inside ``half_width`` at one of them or between, and how many of each (on the device). The
    twin of the Triton kernel (``TritonKernels.entry_masks``), which rounds every product and
    difference as this does."""
    d_lo_NF = (h_NF * low_F).sub_(t_F)
    d_hi_NF = (h_NF * high_F).sub_(t_F)
    d_max_NF = torch.maximum(d_lo_NF, d_hi_NF)
    d_min_NF = torch.minimum(d_lo_NF, d_hi_NF, out=d_lo_NF)
    open_NF = d_max_NF > 0
    active_NF = open_NF | ((d_min_NF < half_width) & (d_max_NF > -half_width))
    return open_NF, active_NF, open_NF.sum(), active_NF.sum()


class EagerKernels:
    """The sums of the sparse step in torch ops, each the twin of ``TritonKernels``'s method of
    the same name; ``plan`` sizes the gathered blocks."""

    def __init__(self, plan: KernelPlan) -> None:
        self.plan = plan

    def _chunks(self, n_pairs: int, row_elements: int) -> list[slice]:
        step = max(1, self.plan.pair_chunk_elements // max(1, row_elements))
        return [slice(a, a + step) for a in range(0, n_pairs, step)]

    def decode(self, W_FGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs) -> torch.Tensor:
        """``out [N, G, D]`` in the values' dtype: the gather-sum, through ``embedding_bag`` for
        one group."""
        W_FGD = W_FGD.to(values_AG.dtype)
        F_, G, D = W_FGD.shape
        if G == 1:
            out = F.embedding_bag(
                pairs.feature_A,
                W_FGD.reshape(F_, D),
                offsets=pairs.token_starts()[:-1],
                mode="sum",
                per_sample_weights=values_AG[:, 0],
            )
            return out.view(-1, 1, D)
        out_NGD = W_FGD.new_zeros(pairs.n_tokens, G, D)
        for chunk in self._chunks(values_AG.shape[0], G * D):
            rows_cGD = W_FGD.index_select(0, pairs.feature_A[chunk]) * values_AG[chunk, :, None]
            out_NGD.index_add_(0, pairs.token_A[chunk], rows_cGD)
        return out_NGD

    def values_grad(
        self, grad_NGD: torch.Tensor, W_FGD: torch.Tensor, pairs: ActivePairs, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``[A, G]``: ``<grad_out[n, g], W[i, g]>`` for every pair, in ``dtype`` (the gradient's
        by default; a wider one widens both factors first)."""
        grad_NGD = grad_NGD.to(dtype or grad_NGD.dtype)
        out_AG = grad_NGD.new_empty(pairs.feature_A.shape[0], W_FGD.shape[1])
        for chunk in self._chunks(out_AG.shape[0], W_FGD.shape[1] * W_FGD.shape[2]):
            out_AG[chunk] = torch.linalg.vecdot(
                grad_NGD.index_select(0, pairs.token_A[chunk]),
                W_FGD.index_select(0, pairs.feature_A[chunk]).to(grad_NGD.dtype),
            )
        return out_AG

    def weight_grad(
        self,
        grad_NGD: torch.Tensor,
        values_AG: torch.Tensor,
        pairs: ActivePairs,
        norm_term: NormTerm | None = None,
        dtype: torch.dtype | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[F, G, D]``: the sparse-transpose-dense matmul, ``sum over pairs v * grad_out[n]``,
        added to the norms' gradient ``norm_term`` where it is given, in ``dtype`` (the
        gradient's by default); or, with ``out`` (float32, no ``norm_term``), added to ``out``'s
        rows that have pairs, the others left as they are."""
        if out is not None and norm_term is not None:
            raise ValueError("a sum to add to takes no norms' term: the block that owns the sum takes it")
        grad_NGD = grad_NGD.to(out.dtype if out is not None else dtype or grad_NGD.dtype)
        G, D = grad_NGD.shape[1:]
        if out is not None:
            grad_FGD = out
        elif norm_term is None:
            grad_FGD = grad_NGD.new_zeros(pairs.n_features, G, D)
        else:
            W_FGD, scale_FR = norm_term
            R = scale_FR.shape[1]
            grad_FGD = (W_FGD.view(pairs.n_features, R, -1) * scale_FR.to(W_FGD.dtype)[..., None]).view(-1, G, D)
            grad_FGD = grad_FGD.to(grad_NGD.dtype)
        for chunk in self._chunks(values_AG.shape[0], G * D):
            rows_cGD = grad_NGD.index_select(0, pairs.token_A[chunk]) * values_AG[chunk, :, None]
            grad_FGD.index_add_(0, pairs.feature_A[chunk], rows_cGD)
        return grad_FGD

    window_dots = staticmethod(eager_window_dots)
    entry_masks = staticmethod(eager_entry_masks)

    @staticmethod
    def entry_masks_take(*tensors: torch.Tensor) -> bool:
        """The eager masks take any dtypes."""
        return True


@functools.cache
def kernels_for(plan: KernelPlan) -> Any:
    """The implementation ``plan.backend`` names, launched with its tunings: ``TritonKernels``
    (imported here, so that triton is needed only where it runs) or :class:`EagerKernels`."""
    if plan.backend == "triton":
        from crosslens.kernels.triton_sparse import TritonKernels

        return TritonKernels(plan)
    return EagerKernels(plan)


class SparseDecode(torch.autograd.Function):
    """``out[n, g] = sum over pairs (n, i) of v[pair, g] * W[i, g]`` and its gradients to
    ``W [F, G, D]`` and ``v [A, G]`` (both in W's dtype, which the values have), by the chosen
    implementation; the rows are read from ``read_FGD`` where it is given (W rounded to a
    narrower dtype), with the sums in the values' dtype, and under autocast backward reads the
    output's gradient rounded to the autocast dtype (half the bytes of every row each pair
    gathers; a matmul under autocast rounds it the same way). Where ``norms_FR`` is given (the
    norms of W's rows viewed ``[F, R, G * D / R]``, computed without gradient), they are a
    second output, differentiable in W through this node, and where ``rows`` is given
    (:data:`DenseRows`), its decode is a third, so that W's gradient is one tensor written in
    one pass: the norms' part ``W * grad_norm / norm`` with the pairs' sums added
    (:func:`gather_decode_and_norms`), the rows' matmul added to its few rows."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        W_FGD: torch.Tensor,
        values_AG: torch.Tensor,
        pairs: ActivePairs,
        ops: Any,
        read_FGD: torch.Tensor | None,
        norms_FR: torch.Tensor | None,
        rows_R: torch.Tensor | None,
        values_NR: torch.Tensor | None,
        block: WeightBlock | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        ctx.set_materialize_grads(False)
        ctx.grad_dtype = autocast_dtype(W_FGD.device) or values_AG.dtype
        read_FGD = W_FGD if read_FGD is None else read_FGD
        ctx.save_for_backward(read_FGD, values_AG, W_FGD, norms_FR, rows_R, values_NR)
        ctx.pairs, ctx.ops, ctx.block = pairs, ops, block_listing(block, W_FGD)
        out_NGD = ops.decode(read_FGD, values_AG, pairs)
        norms_FR = None if norms_FR is None else norms_FR.clone()
        if rows_R is None:
            return out_NGD, norms_FR, None
        return out_NGD, norms_FR, dense_rows_decode(read_FGD, (rows_R, values_NR), ctx.grad_dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_NGD: torch.Tensor | None, grad_norms_FR: torch.Tensor | None, grad_rows_NK: torch.Tensor | None
    ) -> tuple[Any, ...]:
        read_FGD, values_AG, W_FGD, norms_FR, rows_R, values_NR = ctx.saved_tensors
        if grad_NGD is None:
            grad_NGD = values_AG.new_zeros(ctx.pairs.n_tokens, *W_FGD.shape[1:])
        # under autocast the gathered gradient rows are read rounded, as a matmul's would be
        grad_NGD = grad_NGD.to(ctx.grad_dtype).contiguous()
        grad_W = grad_v = grad_rows_v = None
        if ctx.needs_input_grad[0]:
            scale_FR = None if grad_norms_FR is None else norm_gradient_scale(grad_norms_FR, norms_FR)
            block = ctx.block if ctx.block is not None and ctx.block.open else None
            if block is not None and (scale_FR is None or block.add_norm_scale(W_FGD, scale_FR)):
                # a micro-batch: its pairs' rows added to the block's sum, the norms' part the block's
                where: dict[str, Any] = {"out": block.sum_buffer(W_FGD)}
            else:
                where = {"norm_term": None if scale_FR is None else (W_FGD, scale_FR), "dtype": W_FGD.dtype}
            sum_FGD = ctx.ops.weight_grad(grad_NGD, values_AG, ctx.pairs, **where)
            if "out" not in where:
                grad_W = sum_FGD
        if ctx.needs_input_grad[1]:
            grad_v = ctx.ops.values_grad(grad_NGD, read_FGD, ctx.pairs, dtype=values_AG.dtype)
        if grad_rows_NK is not None:
            grad_rows_NK = grad_rows_NK.to(ctx.grad_dtype)
            if ctx.needs_input_grad[0]:
                _add_rows_grad(sum_FGD, rows_R, values_NR.to(ctx.grad_dtype), grad_rows_NK)
            if ctx.needs_input_grad[7]:
                grad_rows_v = _rows_values_grad(grad_rows_NK, _rows(read_FGD, rows_R, ctx.grad_dtype), rows_R)
                grad_rows_v = grad_rows_v.to(values_NR.dtype)
        return grad_W, grad_v, None, None, None, None, None, grad_rows_v, None


ROW_ALIGNMENT = 8
"""Rows of a :data:`DenseRows` matmul are padded with zeros to a multiple of this: cuBLAS takes
its fast kernels only where every matrix's leading dimension is a multiple of 16 bytes, and
the rows' count (how many features are dead) is any number. Unpadded, cuBLAS runs TopK's three
auxiliary matmuls in older architectures' kernels, far below the GPU's bfloat16 peak
(``benchmarks/gpu.py --profile`` shows it)."""


def _aligned(n: int) -> int:
    return -(-n // ROW_ALIGNMENT) * ROW_ALIGNMENT


def _rows(W_FGD: torch.Tensor, rows_R: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``W[rows_R]`` as ``[R', G * D]`` in ``dtype`` (W's where None): the rows a
    :data:`DenseRows` decode reads, with zero rows after them up to ``R' =`` ``R`` rounded up
    to :data:`ROW_ALIGNMENT`."""
    R = rows_R.shape[0]
    rows_RK = W_FGD.new_zeros(_aligned(R), W_FGD.shape[1] * W_FGD.shape[2], dtype=dtype or W_FGD.dtype)
    rows_RK[:R] = W_FGD.index_select(0, rows_R).reshape(R, -1)  # rounded as it is written
    return rows_RK


def _padded_values(values_NR: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``values_NR`` (``n_rows`` columns, or already padded) with zero columns up to the rows
    :func:`_rows` gives."""
    pad = _aligned(n_rows) - values_NR.shape[1]
    return F.pad(values_NR, (0, pad)) if pad else values_NR


def _rows_values_grad(grad_NK: torch.Tensor, rows_RK: torch.Tensor, rows_R: torch.Tensor) -> torch.Tensor:
    """The gradient of a :data:`DenseRows` decode's values, ``grad @ W[rows_R].T``, from the
    padded rows :func:`_rows` gives, with the padding's columns left out."""
    return (grad_NK @ rows_RK.T)[:, : rows_R.shape[0]]


def dense_rows_decode(
    W_FGD: Float[torch.Tensor, "d_sae groups d"],
    rows: DenseRows,
    dtype: torch.dtype | None = None,
    block: WeightBlock | None = None,
) -> Float[torch.Tensor, "n groups_d"]:
    """The decode of :data:`DenseRows`, ``values_NR @ W[rows_R]``, ``[N, G * D]``: in
    ``dtype`` where given, else as the ambient autocast has it; differentiable by autograd where
    no :func:`gather_decode_and_norms` node decodes the rows, or, in a micro-batched step (where
    ``block`` lists ``W_FGD``), by a node that adds the rows' gradient to the step's sum
    (:class:`_BlockRowsDecode`)."""
    rows_R, values_NR = rows
    block = block_listing(block, W_FGD) if torch.is_grad_enabled() and W_FGD.requires_grad else None
    if block is not None:
        return _BlockRowsDecode.apply(W_FGD, rows_R, values_NR, dtype, block)
    return _padded_values(values_NR.to(dtype or values_NR.dtype), rows_R.shape[0]) @ _rows(W_FGD, rows_R, dtype)


class _BlockRowsDecode(torch.autograd.Function):
    """:func:`dense_rows_decode` in a micro-batched step: autograd's gather of the rows would
    write a decoder-sized gradient per micro-batch, zeros but for the rows; this adds the rows'
    gradient (float32, :func:`~crosslens.kernels.weight_grads.float32_product`) to the
    block's sum instead. The values' gradient is the matmul's, in the forward's dtype."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        W_FGD: torch.Tensor,
        rows_R: torch.Tensor,
        values_NR: torch.Tensor,
        dtype: torch.dtype | None,
        block: WeightBlock,
    ) -> torch.Tensor:
        dtype = dtype or autocast_dtype(W_FGD.device) or values_NR.dtype
        rows_RK = _rows(W_FGD, rows_R, dtype)
        values_low = _padded_values(values_NR.to(dtype), rows_R.shape[0])
        ctx.save_for_backward(W_FGD, rows_R, rows_RK, values_low)
        ctx.block, ctx.values_dtype = block, values_NR.dtype
        with torch.autocast(W_FGD.device.type, enabled=False):
            return values_low @ rows_RK

    @staticmethod
    def backward(ctx: Any, grad_NK: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        W_FGD, rows_R, rows_RK, values_low = ctx.saved_tensors
        grad_NK = grad_NK.to(rows_RK.dtype)
        grad_values = grad_W = None
        if ctx.needs_input_grad[2]:
            grad_values = _rows_values_grad(grad_NK, rows_RK, rows_R).to(ctx.values_dtype)
        if ctx.needs_input_grad[0]:
            if ctx.block.open:
                _add_rows_grad(ctx.block.sum_buffer(W_FGD), rows_R, values_low, grad_NK)
            else:
                grad_W = _add_rows_grad(torch.zeros_like(W_FGD), rows_R, values_low, grad_NK)
        return grad_W, None, grad_values, None, None


def _add_rows_grad(
    grad_FGD: torch.Tensor, rows_R: torch.Tensor, values_NR: torch.Tensor, grad_NK: torch.Tensor
) -> torch.Tensor:
    """Add to ``grad_FGD`` (W's gradient, or a sum for it) the gradient of ``values_NR @
    W[rows_R]``: ``values.T @ grad`` (:func:`~crosslens.kernels.weight_grads.float32_product`,
    its operand padded as :func:`_rows` pads) at the rows; returns ``grad_FGD``."""
    R = rows_R.shape[0]
    rows_grad_RK = float32_product(_padded_values(values_NR, R).T, grad_NK)[:R]
    grad_FGD.view(grad_FGD.shape[0], -1).index_add_(0, rows_R, rows_grad_RK.to(grad_FGD.dtype))
    return grad_FGD


def autocast_copy(
    W: torch.Tensor,
    n_pairs: int,
    plan: KernelPlan | None = None,
    step_weights: StepWeights | None = None,
    block: WeightBlock | None = None,
) -> torch.Tensor | None:
    """``W`` detached and rounded to the autocast dtype, for ``n_pairs`` pairs to decode from
    its rows, where autocast is on and the copy pays (the plan's ``read_copy_pairs`` per row:
    the copy costs a float32 read and a bfloat16 write of every element, 6 bytes, and each
    pair's decode and values' gradient then read 2 bytes less per element of its row); else None.
    A matmul under autocast reads its weight rounded the same way; inside a micro-batched step
    it is the step's one copy (``block``'s), else the optimizer's where ``step_weights`` holds one
    (:func:`~crosslens.kernels.weight_grads.rounded`). The decoder's gradient stays W's own."""
    dtype = autocast_dtype(W.device)
    if dtype is None or n_pairs < plan_for(W.device, plan).read_copy_pairs * W.shape[0]:
        return None
    return rounded(W, dtype, step_weights, block)


def gather_decode(
    W_FGD: Float[torch.Tensor, "d_sae groups d"],
    values_AG: Float[torch.Tensor, "A groups"],
    pairs: ActivePairs,
    plan: KernelPlan | None = None,
    read_FGD: torch.Tensor | None = None,
    block: WeightBlock | None = None,
) -> Float[torch.Tensor, "n groups d"]:
    """The gather-sum decode of the active pairs (see the module docstring), differentiable
    in ``W_FGD`` and ``values_AG``; the values are cast to the decoder's dtype. ``read_FGD``:
    ``W_FGD`` rounded to the autocast dtype, whose rows the decode and the values' gradient
    read instead (half the memory traffic; the decoder's gradient is W's, in its dtype); in a
    micro-batched step (where ``block`` lists ``W_FGD``) the gradient is added to the block's sum."""
    return _sparse_decode(W_FGD, values_AG, pairs, plan, read_FGD, None, None, block)[0]


def gather_decode_and_norms(
    W_FGD: Float[torch.Tensor, "d_sae groups d"],
    values_AG: Float[torch.Tensor, "A groups"],
    pairs: ActivePairs,
    norms_FR: Float[torch.Tensor, "d_sae parts"],
    plan: KernelPlan | None = None,
    read_FGD: torch.Tensor | None = None,
    rows: DenseRows | None = None,
    block: WeightBlock | None = None,
) -> tuple[
    Float[torch.Tensor, "n groups d"], Float[torch.Tensor, "d_sae parts"], Float[torch.Tensor, "n groups_d"] | None
]:
    """:func:`gather_decode`, the norms of W's rows viewed ``[F, R, G * D / R]``, given as
    ``norms_FR`` (computed without gradient) and returned differentiable in W by the decode's
    own node, and the decode of ``rows`` (:data:`DenseRows`) where given, else None: W's
    gradient from all three is then written in one pass instead of three (the pairs' sums,
    the norms' gradient, and their sum) or five (the rows' gradient and its sum). Under
    autocast the rows' matmul is in the autocast dtype, from ``read_FGD`` where given. In a
    micro-batched step (where ``block`` lists ``W_FGD``) W's gradient goes to the block's sum."""
    F_, R = norms_FR.shape
    if W_FGD.shape[0] != F_ or (W_FGD.shape[1] * W_FGD.shape[2]) % R:
        shapes = f"norms of shape {tuple(norms_FR.shape)}, W of shape {tuple(W_FGD.shape)}"
        raise ValueError(f"{shapes}: the norms do not split the rows of W into equal parts")
    if rows is not None and rows[1].shape != (pairs.n_tokens, rows[0].shape[0]):
        shapes = f"values of shape {tuple(rows[1].shape)} for {rows[0].shape[0]} rows and {pairs.n_tokens} tokens"
        raise ValueError(f"{shapes}: the rows' code needs one value per token and row")
    return _sparse_decode(W_FGD, values_AG, pairs, plan, read_FGD, norms_FR.detach().contiguous(), rows, block)


def _sparse_decode(
    W_FGD: torch.Tensor,
    values_AG: torch.Tensor,
    pairs: ActivePairs,
    plan: KernelPlan | None,
    read_FGD: torch.Tensor | None,
    norms_FR: torch.Tensor | None,
    rows: DenseRows | None,
    block: WeightBlock | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    ops = kernels_for(plan_for(W_FGD.device, plan))
    read_FGD = None if read_FGD is None else read_FGD.contiguous()
    values_AG = values_AG.to(W_FGD.dtype).contiguous()
    rows_R, values_NR = (None, None) if rows is None else rows
    W_FGD = W_FGD.contiguous()
    return SparseDecode.apply(W_FGD, values_AG, pairs, ops, read_FGD, norms_FR, rows_R, values_NR, block)
