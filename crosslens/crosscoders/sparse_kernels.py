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
per-snapshot gate). Two implementations compute the same sums: the eager one here
(``embedding_bag``, ``index_select``, ``index_add_``), which runs on CPUs and in CI, and
the Triton kernels of :mod:`crosslens.crosscoders.triton_kernels`, chosen on CUDA when
triton is installed (it is imported only then). The sums differ only in the order of
float additions.

Every sparse step's loss also reads the decoder norms ``||W[i, s]||`` (JumpReLU's scores,
TopK's L1 term), whose gradient to W is ``W * grad_norm / norm``. Autograd would write that
and the decode's gradient as two W-sized tensors and add them, three passes over W where one
does: :func:`gather_decode_and_norms` returns the norms (computed by the step without
gradient) from the decode's own node, whose backward starts each row of W's gradient from the
norms' part and adds the pairs' sums to it.

:func:`sparse_gated_decode` is the JumpReLU crosscoder's gate, tanh scores and decode
built on them; the TopK crosscoders call :func:`gather_decode_and_norms` directly.

TopK's auxiliary loss decodes a second code from the decoder, one that every token reads from
the same few rows (the dead features'), which is a matmul, not a gather: the same node takes it
as :data:`DenseRows` and adds its rows' gradient to W's, so that W's gradient stays one tensor.

A step reads from the device only the counts it cannot do without (on a GPU each read waits
for the queue to drain, and a streamed run's forward overlaps the step only between reads):
the JumpReLU step reads its open and window counts together (:func:`active_entries`) and
lists its pairs to those sizes; the TopK steps know theirs from ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

from crosslens.core.devices import autocast_dtype, kernel_backend
from crosslens.core.tensors import host_ints, norm_gradient_scale
from crosslens.crosscoders.active_pairs import ActivePairs
from crosslens.crosscoders.jumprelu_ops import threshold_gradient
from crosslens.crosscoders.weight_grads import WeightBlock, float32_product, rounded, weight_block

BACKEND: str | None = None
"""Force ``"eager"`` or ``"triton"`` (``"triton"`` on a CPU needs ``TRITON_INTERPRET=1``);
None takes Triton on CUDA when it is installed, else eager. For tests."""

PAIR_CHUNK_ELEMENTS = 1 << 22
"""Elements ``pairs * G * D`` of one gathered block in the eager implementation."""


def sparse_backend(device: torch.device) -> str:
    """``"triton"`` on CUDA with triton installed, else ``"eager"`` (or :data:`BACKEND`)."""
    return kernel_backend(device, BACKEND)


def _chunks(n_pairs: int, row_elements: int) -> list[slice]:
    step = max(1, PAIR_CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(a, a + step) for a in range(0, n_pairs, step)]


NormTerm = tuple[torch.Tensor, torch.Tensor]
"""``(W_FGD, scale_FR)``: the gradient of a loss through the norms of W's rows viewed ``[F, R,
G * D / R]`` is ``W * scale`` (:func:`~crosslens.core.tensors.norm_gradient_scale`), each
``scale[i, r]`` applied to row ``i``'s ``r``-th slice."""


DenseRows = tuple[torch.Tensor, torch.Tensor]
"""``(rows_R, values_NR)``: a code over a few rows of W that every token reads, decoded by
a matmul over those rows, ``values_NR @ W[rows_R]`` viewed ``[N, G * D]`` (TopK's auxiliary
decode of its dead features)."""


def eager_decode(W_FGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs) -> torch.Tensor:
    """``out [N, G, D]`` in the values' dtype: the gather-sum, through ``embedding_bag`` for
    one group."""
    W_FGD = W_FGD.to(values_AG.dtype)
    F_, G, D = W_FGD.shape
    if G == 1:
        out = F.embedding_bag(
            pairs.feature_A, W_FGD.reshape(F_, D), offsets=pairs.token_starts()[:-1],
            mode="sum", per_sample_weights=values_AG[:, 0],
        )  # fmt: skip
        return out.view(-1, 1, D)
    out_NGD = W_FGD.new_zeros(pairs.n_tokens, G, D)
    for chunk in _chunks(values_AG.shape[0], G * D):
        rows_cGD = W_FGD.index_select(0, pairs.feature_A[chunk]) * values_AG[chunk, :, None]
        out_NGD.index_add_(0, pairs.token_A[chunk], rows_cGD)
    return out_NGD


def eager_values_grad(
    grad_NGD: torch.Tensor, W_FGD: torch.Tensor, pairs: ActivePairs, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``[A, G]``: ``<grad_out[n, g], W[i, g]>`` for every pair, in ``dtype`` (the gradient's
    by default; a wider one widens both factors first)."""
    grad_NGD = grad_NGD.to(dtype or grad_NGD.dtype)
    out_AG = grad_NGD.new_empty(pairs.feature_A.shape[0], W_FGD.shape[1])
    for chunk in _chunks(out_AG.shape[0], W_FGD.shape[1] * W_FGD.shape[2]):
        out_AG[chunk] = torch.linalg.vecdot(
            grad_NGD.index_select(0, pairs.token_A[chunk]),
            W_FGD.index_select(0, pairs.feature_A[chunk]).to(grad_NGD.dtype),
        )
    return out_AG


def eager_weight_grad(
    grad_NGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs, norm_term: NormTerm | None = None,
    dtype: torch.dtype | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
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
    for chunk in _chunks(values_AG.shape[0], G * D):
        rows_cGD = grad_NGD.index_select(0, pairs.token_A[chunk]) * values_AG[chunk, :, None]
        grad_FGD.index_add_(0, pairs.feature_A[chunk], rows_cGD)
    return grad_FGD


def eager_weight_and_values_grad(
    grad_NGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs, read_FGD: torch.Tensor,
    norm_term: NormTerm | None = None, dtype: torch.dtype | None = None, out: torch.Tensor | None = None,
    values_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """:func:`eager_weight_grad`'s result and :func:`eager_values_grad`'s from ``read_FGD``:
    the twin of the Triton pass that gives both from one gather of the gradient's rows."""
    grad_W = eager_weight_grad(grad_NGD, values_AG, pairs, norm_term, dtype, out)
    return grad_W, eager_values_grad(grad_NGD, read_FGD, pairs, values_dtype)


def eager_window_dots(
    grad_SND: Float[torch.Tensor, "S N D"], W_FSD: Float[torch.Tensor, "F S D"], h_NF: Float[torch.Tensor, "N F"],
    window_NF: Bool[torch.Tensor, "N F"], norms_FS: Float[torch.Tensor, "F S"], t_F: Float[torch.Tensor, " F"],
    half_width: float, n_window: int | None = None,
) -> tuple[Float[torch.Tensor, "F S"], Float[torch.Tensor, "F S"]]:  # fmt: skip
    """The twin of the fused window kernel (``triton_kernels.window_dots``), one snapshot at a
    time: the window's entries inside ``half_width`` of the threshold, and one masked product
    ``<grad, W>`` over every (token, feature), W rounded to the gradient's dtype as the kernel
    loads it, in float32. ``n_window``, the window's count, which the kernels may list it by,
    is not needed here."""
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
    h_NF: Float[torch.Tensor, "n d_sae"], low_F: Float[torch.Tensor, " d_sae"], high_F: Float[torch.Tensor, " d_sae"],
    t_F: Float[torch.Tensor, " d_sae"], half_width: float,
) -> tuple[Bool[torch.Tensor, "n d_sae"], Bool[torch.Tensor, "n d_sae"], Int[torch.Tensor, ""], Int[torch.Tensor, ""]]:  # fmt: skip
    """``(open_NF, active_NF, n_open, n_active)`` for each feature's smallest and largest norm:
    the entries whose distance ``h * norm - t`` is above 0 at one of the two, those above 0 or
    inside ``half_width`` at one of them or between, and how many of each (on the device). The
    twin of the Triton kernel (``triton_kernels.entry_masks``), which rounds every product and
    difference as this does."""
    d_lo_NF = (h_NF * low_F).sub_(t_F)
    d_hi_NF = (h_NF * high_F).sub_(t_F)
    d_max_NF = torch.maximum(d_lo_NF, d_hi_NF)
    d_min_NF = torch.minimum(d_lo_NF, d_hi_NF, out=d_lo_NF)
    open_NF = d_max_NF > 0
    active_NF = open_NF | ((d_min_NF < half_width) & (d_max_NF > -half_width))
    return open_NF, active_NF, open_NF.sum(), active_NF.sum()


def _implementation(backend: str) -> Any:
    if backend == "triton":
        from crosslens.crosscoders import triton_kernels

        return triton_kernels
    return _EAGER


class _Eager:
    decode = staticmethod(eager_decode)
    values_grad = staticmethod(eager_values_grad)
    weight_grad = staticmethod(eager_weight_grad)
    weight_and_values_grad = staticmethod(eager_weight_and_values_grad)
    window_dots = staticmethod(eager_window_dots)
    entry_masks = staticmethod(eager_entry_masks)


_EAGER = _Eager()


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
        ctx: Any, W_FGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs, backend: str,
        read_FGD: torch.Tensor | None, norms_FR: torch.Tensor | None,
        rows_R: torch.Tensor | None, values_NR: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
        ctx.set_materialize_grads(False)
        ctx.grad_dtype = autocast_dtype(W_FGD.device) or values_AG.dtype
        ops = _implementation(backend)
        read_FGD = W_FGD if read_FGD is None else read_FGD
        ctx.save_for_backward(read_FGD, values_AG, W_FGD, norms_FR, rows_R, values_NR)
        ctx.pairs, ctx.ops, ctx.block = pairs, ops, weight_block(W_FGD)
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
            if ctx.needs_input_grad[1]:  # both from one gather of the gradient's rows
                sum_FGD, grad_v = ctx.ops.weight_and_values_grad(
                    grad_NGD, values_AG, ctx.pairs, read_FGD, values_dtype=values_AG.dtype, **where
                )  # fmt: skip
            else:
                sum_FGD = ctx.ops.weight_grad(grad_NGD, values_AG, ctx.pairs, **where)
            if "out" not in where:
                grad_W = sum_FGD
        elif ctx.needs_input_grad[1]:
            grad_v = ctx.ops.values_grad(grad_NGD, read_FGD, ctx.pairs, dtype=values_AG.dtype)
        if grad_rows_NK is not None:
            grad_rows_NK = grad_rows_NK.to(ctx.grad_dtype)
            if ctx.needs_input_grad[0]:
                _add_rows_grad(sum_FGD, rows_R, values_NR.to(ctx.grad_dtype), grad_rows_NK)
            if ctx.needs_input_grad[7]:
                grad_rows_v = _rows_values_grad(grad_rows_NK, _rows(read_FGD, rows_R, ctx.grad_dtype), rows_R)
                grad_rows_v = grad_rows_v.to(values_NR.dtype)
        return grad_W, grad_v, None, None, None, None, None, grad_rows_v


ROW_ALIGNMENT = 8
"""Rows of a :data:`DenseRows` matmul are padded with zeros to a multiple of this: cuBLAS takes
its fast kernels only where every matrix's leading dimension is a multiple of 16 bytes, and
the rows' count (how many features are dead) is any number. Unpadded, cuBLAS runs TopK's three
auxiliary matmuls in older architectures' kernels, at a sixth to an eighth of an H100's bfloat16
peak at Ge et al.'s shape with 1,229 features dead (``benchmarks/gpu.py --profile``)."""


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
    W_FGD: Float[torch.Tensor, "d_sae groups d"], rows: DenseRows, dtype: torch.dtype | None = None
) -> Float[torch.Tensor, "n groups_d"]:
    """The decode of :data:`DenseRows`, ``values_NR @ W[rows_R]``, ``[N, G * D]``: in
    ``dtype`` where given, else as the ambient autocast has it; differentiable by autograd where
    no :func:`gather_decode_and_norms` node decodes the rows, or, in a micro-batched step, by a
    node that adds the rows' gradient to the step's sum (:class:`_BlockRowsDecode`)."""
    rows_R, values_NR = rows
    block = weight_block(W_FGD) if torch.is_grad_enabled() and W_FGD.requires_grad else None
    if block is not None:
        return _BlockRowsDecode.apply(W_FGD, rows_R, values_NR, dtype, block)
    return _padded_values(values_NR.to(dtype or values_NR.dtype), rows_R.shape[0]) @ _rows(W_FGD, rows_R, dtype)


class _BlockRowsDecode(torch.autograd.Function):
    """:func:`dense_rows_decode` in a micro-batched step: autograd's gather of the rows would
    write a decoder-sized gradient per micro-batch, zeros but for the rows; this adds the rows'
    gradient (float32, :func:`~crosslens.crosscoders.weight_grads.float32_product`) to the
    block's sum instead. The values' gradient is the matmul's, in the forward's dtype."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, W_FGD: torch.Tensor, rows_R: torch.Tensor, values_NR: torch.Tensor, dtype: torch.dtype | None,
        block: WeightBlock,
    ) -> torch.Tensor:  # fmt: skip
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
    W[rows_R]``: ``values.T @ grad`` (:func:`~crosslens.crosscoders.weight_grads.float32_product`,
    its operand padded as :func:`_rows` pads) at the rows; returns ``grad_FGD``."""
    R = rows_R.shape[0]
    rows_grad_RK = float32_product(_padded_values(values_NR, R).T, grad_NK)[:R]
    grad_FGD.view(grad_FGD.shape[0], -1).index_add_(0, rows_R, rows_grad_RK.to(grad_FGD.dtype))
    return grad_FGD


READ_COPY_PAIRS = 2
"""Pairs per decoder row from which a sparse step under autocast reads its rows from a
rounded copy of the decoder (:func:`autocast_copy`). The copy costs a float32 read and a
bfloat16 write of every element, 6 bytes; each pair's decode and values' gradient then read
2 bytes less per element of its row, or less than that where the row is still in the L2
cache. A trained crosscoder's batch at Ge et al.'s shape has 5-8 pairs per row; one
micro-batch of the 98,304-feature dictionary has a fraction of one."""


def autocast_copy(W: torch.Tensor, n_pairs: int) -> torch.Tensor | None:
    """``W`` detached and rounded to the autocast dtype, for ``n_pairs`` pairs to decode from
    its rows, where autocast is on and the copy pays (:data:`READ_COPY_PAIRS`); else None.
    A matmul under autocast reads its weight rounded the same way; inside a micro-batched step
    it is the step's one copy (:func:`~crosslens.crosscoders.weight_grads.rounded`). The
    decoder's gradient stays W's own."""
    dtype = autocast_dtype(W.device)
    if dtype is None or n_pairs < READ_COPY_PAIRS * W.shape[0]:
        return None
    return rounded(W, dtype)


def gather_decode(
    W_FGD: Float[torch.Tensor, "d_sae groups d"],
    values_AG: Float[torch.Tensor, "A groups"],
    pairs: ActivePairs,
    backend: str | None = None,
    read_FGD: torch.Tensor | None = None,
) -> Float[torch.Tensor, "n groups d"]:
    """The gather-sum decode of the active pairs (see the module docstring), differentiable
    in ``W_FGD`` and ``values_AG``; the values are cast to the decoder's dtype. ``read_FGD``:
    ``W_FGD`` rounded to the autocast dtype, whose rows the decode and the values' gradient
    read instead (half the memory traffic; the decoder's gradient is W's, in its dtype)."""
    return _sparse_decode(W_FGD, values_AG, pairs, backend, read_FGD, None, None)[0]


def gather_decode_and_norms(
    W_FGD: Float[torch.Tensor, "d_sae groups d"],
    values_AG: Float[torch.Tensor, "A groups"],
    pairs: ActivePairs,
    norms_FR: Float[torch.Tensor, "d_sae parts"],
    backend: str | None = None,
    read_FGD: torch.Tensor | None = None,
    rows: DenseRows | None = None,
) -> tuple[
    Float[torch.Tensor, "n groups d"], Float[torch.Tensor, "d_sae parts"], Float[torch.Tensor, "n groups_d"] | None
]:  # fmt: skip
    """:func:`gather_decode`, the norms of W's rows viewed ``[F, R, G * D / R]``, given as
    ``norms_FR`` (computed without gradient) and returned differentiable in W by the decode's
    own node, and the decode of ``rows`` (:data:`DenseRows`) where given, else None: W's
    gradient from all three is then written in one pass instead of three (the pairs' sums,
    the norms' gradient, and their sum) or five (the rows' gradient and its sum). Under
    autocast the rows' matmul is in the autocast dtype, from ``read_FGD`` where given."""
    F_, R = norms_FR.shape
    if W_FGD.shape[0] != F_ or (W_FGD.shape[1] * W_FGD.shape[2]) % R:
        shapes = f"norms of shape {tuple(norms_FR.shape)}, W of shape {tuple(W_FGD.shape)}"
        raise ValueError(f"{shapes}: the norms do not split the rows of W into equal parts")
    if rows is not None and rows[1].shape != (pairs.n_tokens, rows[0].shape[0]):
        shapes = f"values of shape {tuple(rows[1].shape)} for {rows[0].shape[0]} rows and {pairs.n_tokens} tokens"
        raise ValueError(f"{shapes}: the rows' code needs one value per token and row")
    return _sparse_decode(W_FGD, values_AG, pairs, backend, read_FGD, norms_FR.detach().contiguous(), rows)


def _sparse_decode(
    W_FGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs, backend: str | None,
    read_FGD: torch.Tensor | None, norms_FR: torch.Tensor | None, rows: DenseRows | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    backend = backend or sparse_backend(W_FGD.device)
    read_FGD = None if read_FGD is None else read_FGD.contiguous()
    values_AG = values_AG.to(W_FGD.dtype).contiguous()
    rows_R, values_NR = (None, None) if rows is None else rows
    return SparseDecode.apply(W_FGD.contiguous(), values_AG, pairs, backend, read_FGD, norms_FR, rows_R, values_NR)


# ----------------------------------------------------------------- the JumpReLU step
SPARSE_STEP_SHARE = 1 / 32
"""Largest share of (token, feature) entries open at some snapshot for which the JumpReLU
step works on CUDA from the pairs rather than with the dense kernels. Each open entry is
gathered, decoded and differentiated at every snapshot: at Ge et al.'s shape on an H100
(``benchmarks/gpu.py``'s profile) 0.4% open entries cost the gathers 13 ms of a 67 ms step
whose dense twin takes 170 ms, and a third of the step is fixed cost, so the two would
cost the same near 4% open. A trained crosscoder (L0 of 50-200 of tens of thousands of
features) is well inside it, a freshly initialised one (about 30% open) well outside."""

WINDOW_STEP_SHARE = 1 / 10
"""Largest share of entries shut at every snapshot yet inside the threshold's window at
some for which the step from the pairs is taken while the window is summed by
:class:`ShutWindow`'s gathers or masked matmuls, whose cost grows with that share (20 ms of
the 67 ms step above at 2.1%; the two steps would cost the same near 13%). The fused
window kernel (:data:`WINDOW_KERNEL`) costs the same at any share, and lifts the limit."""


def sparse_step_pays(entries: ActiveEntries, backend: str | None = None) -> bool:
    """Whether the JumpReLU step from the pairs is the cheaper one for these entries: at
    most :data:`SPARSE_STEP_SHARE` open, and at most :data:`WINDOW_STEP_SHARE` in the window
    alone unless the fused window kernel sums it."""
    n = entries.active_NF.numel()
    if entries.n_open > SPARSE_STEP_SHARE * n:
        return False
    fused = WINDOW_KERNEL and (backend or sparse_backend(entries.active_NF.device)) == "triton"
    return fused or entries.n_window <= WINDOW_STEP_SHARE * n


class JumpGate(torch.autograd.Function):
    """``f[a, s] = h[a] * [h[a] * norm[a, s] > t[a]]`` for gathered pairs, with JumpReLU's
    straight-through gradient: to ``h`` where open; to each pair's threshold through the
    rectangle kernel, ``-(t / (norm * eps)) * [|h norm - t| < eps / 2]`` times the upstream
    gradient (from the decode and the scores, shut gates included); none to the norms."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h_A: torch.Tensor, norms_AS: torch.Tensor, t_A: torch.Tensor, bandwidth: float
    ) -> torch.Tensor:
        ctx.save_for_backward(h_A, norms_AS, t_A)
        ctx.bandwidth = bandwidth
        open_AS = h_A[:, None] * norms_AS > t_A[:, None]
        return torch.where(open_AS, h_A[:, None], 0.0)

    @staticmethod
    def backward(ctx: Any, grad_AS: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        h_A, norms_AS, t_A = ctx.saved_tensors
        distance_AS = h_A[:, None] * norms_AS - t_A[:, None]
        grad_h_A = torch.where(distance_AS > 0, grad_AS, 0.0).sum(dim=1)
        window_AS = torch.where(distance_AS.abs() < ctx.bandwidth / 2, grad_AS, 0.0)
        return grad_h_A, None, threshold_gradient(window_AS, norms_AS, t_A, ctx.bandwidth), None


WINDOW_MATMUL_SHARE = 1 / 256
"""Share of all (token, feature, snapshot) triples inside the window, shut everywhere, above
which :class:`ShutWindow` sums their decoder gradient with a masked ``[F, N] @ [N, D]``
matmul per snapshot instead of one gathered dot product per triple. A gathered triple
reads ``2 * d_in`` floats from memory, a matmul's share of one costs ``2 * d_in`` FLOPs at
compute speed: about 1/800 on an H100 in bfloat16; 1/256 leans to the gathers. Where the
threshold sits close to most pre-activations (a crosscoder early in training, or an
initialised one with its threshold set) the window holds several percent of the entries."""


WINDOW_KERNEL = True
"""Sum the window's decoder gradient with the fused Triton kernel
(:func:`crosslens.crosscoders.triton_kernels.window_dots`) where the Triton backend runs:
one matmul tile of ``<grad, W>`` per (tokens, features, snapshot) block, masked in
registers, whatever the window's share, and no work in forward: faster than the masked
matmuls on a GPU at a trained sparsity, and one wait for the GPU a step instead of two
(``benchmarks/gpu.py``'s window-kernel rows time it beside them). ``False`` sums the window by
masked matmuls (:class:`ShutWindow`), which is what runs where Triton does not."""


class ShutWindow(torch.autograd.Function):
    """The threshold's gradient from the entries shut at every snapshot yet inside the
    window at some: their code is 0 everywhere, so they add nothing to the decode or the
    scores, and the decode and score outputs pass through unchanged. In backward each
    (entry, snapshot) pair inside the window gives ``grad_f = <grad_out[n, s], W[i, s]> +
    c * norm * grad_score[i]`` (tanh's slope at 0 is 1) to the rectangle kernel: one dot
    product per pair, or, past ``WINDOW_MATMUL_SHARE``, per snapshot the masked sum of
    ``grad_out`` over each feature's tokens inside the window (one matmul, see
    :func:`_window_matmuls`) dotted with ``W[i, s]``. Which pairs are inside is decided once,
    in forward, for the gathered entries alone; with :data:`WINDOW_KERNEL` on the Triton
    backend, in backward, inside the fused kernel. Backward runs under the forward's
    autocast state."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(  # type: ignore[override]
        ctx: Any, recon_NSD: torch.Tensor, score_sum_F: torch.Tensor, threshold_F: torch.Tensor,
        h_NF: torch.Tensor, decoder: tuple[torch.Tensor, torch.Tensor | None], norms_FS: torch.Tensor,
        window: tuple[torch.Tensor, int], gate: tuple[float, float], backend: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        W_dec_FSD, read_FSD = decoder
        window_NF, n_window = window
        (N, F_), S = h_NF.shape, W_dec_FSD.shape[1]
        ctx.gate, ctx.backend, ctx.n_features = gate, backend, F_
        if WINDOW_KERNEL and backend == "triton":
            ctx.mode, ctx.n_window = "kernel", n_window
            # the kernel rounds W to the gradient's dtype as it loads it: the rounded copy is the
            # same numbers in half the bytes
            W_FSD = W_dec_FSD if read_FSD is None else read_FSD
            ctx.save_for_backward(W_FSD, h_NF, window_NF, norms_FS.float(), threshold_F.float())
            return recon_NSD.view_as(recon_NSD), score_sum_F.view_as(score_sum_F)
        token_W, feature_W = torch.nonzero_static(window_NF, size=n_window).T.contiguous()
        t_W = threshold_F.float().index_select(0, feature_W)
        norms_WS = norms_FS.float().index_select(0, feature_W)
        distance_WS = h_NF[token_W, feature_W].float()[:, None] * norms_WS - t_W[:, None]
        inside_WS = distance_WS.abs() < gate[0] / 2
        n_inside = int(inside_WS.sum())  # the one more wait for the device, without the kernel
        if n_inside > WINDOW_MATMUL_SHARE * N * F_ * S:
            ctx.mode = "matmuls"
            ctx.save_for_backward(W_dec_FSD, feature_W * N + token_W, feature_W, inside_WS, norms_FS.float(), threshold_F.float())
        else:
            ctx.mode = "pairs"
            pair_w, pair_s = torch.nonzero_static(inside_WS, size=n_inside).T.contiguous()
            feature_P = feature_W.index_select(0, pair_w)
            ctx.rows = ActivePairs(token_W.index_select(0, pair_w) * S + pair_s, feature_P * S + pair_s, N * S, F_ * S)
            ctx.save_for_backward(W_dec_FSD, feature_P, norms_WS[pair_w, pair_s], t_W.index_select(0, pair_w))
        return recon_NSD.view_as(recon_NSD), score_sum_F.view_as(score_sum_F)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(  # type: ignore[override]
        ctx: Any, grad_recon_NSD: torch.Tensor, grad_score_F: torch.Tensor
    ) -> tuple[Any, ...]:
        (bandwidth, tanh_scale), score_grad_F = ctx.gate, grad_score_F.float()
        if ctx.mode != "pairs":
            if ctx.mode == "kernel":  # the backend is triton (forward took this mode only then)
                W_dec_FSD, h_NF, window_NF, norms_FS, t_F = ctx.saved_tensors
                grad_SND = _snapshot_major(grad_recon_NSD)
                grad_f_FS, counts_FS = _implementation(ctx.backend).window_dots(
                    grad_SND, W_dec_FSD, h_NF, window_NF, norms_FS, t_F, bandwidth / 2, ctx.n_window
                )
            else:
                W_dec_FSD, flat_W, feature_W, inside_WS, norms_FS, t_F = ctx.saved_tensors
                grad_f_FS = _window_matmuls(grad_recon_NSD, W_dec_FSD, flat_W, inside_WS)
                counts_FS = norms_FS.new_zeros(norms_FS.shape).index_add_(0, feature_W, inside_WS.float())
            grad_f_FS += tanh_scale * norms_FS * score_grad_F[:, None] * counts_FS
            grad_t_F = threshold_gradient(grad_f_FS, norms_FS, t_F, bandwidth)
        else:
            W_dec_FSD, feature_P, norm_P, t_P = ctx.saved_tensors
            D = W_dec_FSD.shape[2]
            grad_rows = grad_recon_NSD.to(W_dec_FSD.dtype).contiguous().view(-1, 1, D)
            dots_P = _implementation(ctx.backend).values_grad(grad_rows, W_dec_FSD.view(-1, 1, D), ctx.rows)[:, 0]
            grad_f_P = dots_P.float() + tanh_scale * norm_P * score_grad_F.index_select(0, feature_P)
            grad_t_P = threshold_gradient(grad_f_P[:, None], norm_P[:, None], t_P, bandwidth)
            grad_t_F = grad_t_P.new_zeros(ctx.n_features).index_add_(0, feature_P, grad_t_P)
        return grad_recon_NSD, grad_score_F, grad_t_F, None, None, None, None, None, None


def _snapshot_major(grad_NSD: torch.Tensor) -> Float[torch.Tensor, "n_snapshots n d_in"]:
    """The gradient the window sums read: snapshot-major, in autocast's dtype where it is on; one
    copy that rounds as it transposes (the same numbers as rounding, then transposing)."""
    N, S, D = grad_NSD.shape
    out_SND = grad_NSD.new_empty((S, N, D), dtype=autocast_dtype(grad_NSD.device) or grad_NSD.dtype)
    return out_SND.copy_(grad_NSD.transpose(0, 1))


def _window_matmuls(
    grad_NSD: torch.Tensor, W_dec_FSD: torch.Tensor, flat_W: torch.Tensor, inside_WS: torch.Tensor
) -> Float[torch.Tensor, "d_sae n_snapshots"]:
    """``<sum of grad[n, s] over the tokens n of feature i inside the window at s, W[i, s]>``
    for every feature and snapshot: per snapshot one ``[F, N] @ [N, D]`` matmul whose mask is
    written into one reused buffer at the window entries' flat feature-major indices
    ``flat_W`` (and cleared there again), so that no pass over all ``N * F`` entries is made
    per snapshot. The matmuls run in the autocast dtype where autocast is on."""
    N, S, D = grad_NSD.shape
    grad_SND = _snapshot_major(grad_NSD)
    mask_flat = grad_SND.new_zeros(W_dec_FSD.shape[0] * N)
    mask_FN, inside_SW = mask_flat.view(-1, N), inside_WS.T.to(grad_SND.dtype)
    grad_f_FS = W_dec_FSD.new_empty(W_dec_FSD.shape[:2], dtype=torch.float32)
    for s in range(S):
        mask_flat.index_copy_(0, flat_W, inside_SW[s])
        # the matmul in its operands' dtype, the dot in float32: a backward under CUDA's
        # autocast (custom_bwd) would otherwise round the dot, as autocast lists vecdot
        with torch.autocast(grad_SND.device.type, enabled=False):
            grad_f_FS[:, s] = torch.linalg.vecdot((mask_FN @ grad_SND[s]).float(), W_dec_FSD[:, s].float())
        mask_flat.index_fill_(0, flat_W, 0)
    return grad_f_FS


@dataclass(frozen=True)
class ActiveEntries:
    """The (token, feature) entries of a JumpReLU batch that its step from the pairs works
    on, with their counts on the host: reading those counts is the step's one wait for the
    device (the pairs and the window entries are then listed to a known size)."""

    active_NF: Bool[torch.Tensor, "n d_sae"]
    """Open at some snapshot, or inside the threshold's window at some."""
    open_NF: Bool[torch.Tensor, "n d_sae"]
    """Open at some snapshot."""
    n_open: int
    """Entries of ``open_NF``."""
    n_window: int
    """Entries active but shut at every snapshot (inside the window at some)."""

    def window_NF(self) -> Bool[torch.Tensor, "n d_sae"]:
        """The entries shut at every snapshot yet inside the window at some."""
        return self.active_NF & ~self.open_NF


def active_entries(
    h_NF: torch.Tensor, norms_FS: torch.Tensor, threshold_F: torch.Tensor, half_width: float, backend: str | None = None
) -> ActiveEntries:
    """The entries open at some snapshot or inside the window at some, and those open at
    some. ``h * norm - t`` is monotone in the norm, so the smallest and largest of a
    feature's norms bound it at every snapshot (the same two roundings): where the Triton
    kernels run (``backend``, as :func:`sparse_backend` chooses) and take the dtypes, one pass
    over ``h``, else :func:`eager_entry_masks`."""
    low_F, high_F = norms_FS.min(dim=1).values, norms_FS.max(dim=1).values
    kernels = _implementation(backend or sparse_backend(h_NF.device))
    if kernels is not _EAGER and not kernels.entry_masks_take(h_NF, low_F, high_F, threshold_F):
        kernels = _EAGER
    open_NF, active_NF, n_open_t, n_active_t = kernels.entry_masks(h_NF, low_F, high_F, threshold_F, half_width)
    n_open, n_active = host_ints(n_open_t, n_active_t)
    return ActiveEntries(active_NF, open_NF, n_open, n_active - n_open)


def sparse_gated_decode(
    h_NF: Float[torch.Tensor, "n d_sae"],
    W_dec_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    threshold_F: Float[torch.Tensor, " d_sae"],
    norms: tuple[Float[torch.Tensor, "d_sae n_snapshots"], Float[torch.Tensor, " n_snapshots"]],
    entries: ActiveEntries,
    gate: tuple[float, float],
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The JumpReLU step's ``(recon_NSD, score_sum_F, open_anywhere_NF, shared_code_NF)``
    from the active ``entries`` (:func:`active_entries`): those open at some
    snapshot gated, scored and decoded at every snapshot, those shut at every snapshot
    but inside the window at some left to :class:`ShutWindow`; for ``norms = (raw_FS,
    norm_factors_S)``, the decoder norms ``||W_dec[i, s]||`` computed without gradient (the
    decode's node differentiates them, :func:`gather_decode_and_norms`) and the factors to
    the training space, and ``gate = (bandwidth, tanh_scale)``; the values and gradients of
    :func:`crosslens.crosscoders.jumprelu_kernels.snapshot_gated_decode`. Gate, scores and
    values are computed in float32 whatever the autocast dtype of h."""
    bandwidth, tanh_scale = gate
    backend = backend or sparse_backend(h_NF.device)
    raw_FS, norm_factors_S = norms
    norms_FS = raw_FS * norm_factors_S
    open_any_NF = entries.open_NF
    pairs = ActivePairs.from_mask(open_any_NF, entries.n_open)
    N, F_ = h_NF.shape
    if h_NF.T.is_contiguous():  # feature-major (CrosscoderMixin.hidden_pre): a view either way
        h_flat, flat_A = h_NF.T.reshape(-1), pairs.feature_A * N + pairs.token_A
    else:
        h_flat, flat_A = h_NF.reshape(-1), pairs.token_A * F_ + pairs.feature_A
    h_A = h_flat.index_select(0, flat_A).float()
    t_A = threshold_F.float().index_select(0, pairs.feature_A)
    f_AS = JumpGate.apply(h_A, norms_FS.float().index_select(0, pairs.feature_A), t_A, bandwidth)
    read_FSD = autocast_copy(W_dec_FSD, entries.n_open)
    recon_NSD, raw_FS, _ = gather_decode_and_norms(W_dec_FSD, f_AS, pairs, raw_FS, backend, read_FSD)
    norms_AS = (raw_FS * norm_factors_S).float().index_select(0, pairs.feature_A)
    score_A = torch.tanh(f_AS * norms_AS * tanh_scale).sum(dim=1)
    score_sum_F = score_A.new_zeros(F_).index_add(0, pairs.feature_A, score_A)
    with torch.no_grad():
        shared_NF = h_NF * open_any_NF
    if threshold_F.requires_grad and entries.n_window:
        window = (entries.window_NF(), entries.n_window)
        recon_NSD, score_sum_F = ShutWindow.apply(
            recon_NSD, score_sum_F, threshold_F,
            h_NF.detach(), (W_dec_FSD.detach(), read_FSD), norms_FS.detach(), window, gate, backend,
        )  # fmt: skip
    return recon_NSD, score_sum_F.to(h_NF.dtype), open_any_NF, shared_NF
