"""Triton kernels for the sparse decode of :mod:`crosslens.kernels.sparse`.

Imported only where a plan's backend is ``"triton"`` (CUDA with triton installed, or a test
under ``TRITON_INTERPRET=1``): triton is no dependency of the package. Same arguments and
results as the eager twins there; every sum is accumulated in float32.

Two kernels serve three sums. ``_gather_rows`` writes, for each output row r and a block
of its ``G * D`` columns, ``sum over the pairs listed for r of v[pair, g] * src[row of
the pair]``: with the pairs of each token (token-major order) and ``src = W`` it is the
decode; with the pairs of each feature (the feature order) and ``src = grad_out`` it is
the decoder's gradient, the sparse-transpose-dense matmul, which writes every row of
``grad_W`` once (zeros for features without pairs) and needs no atomics; it starts each
row from the decoder norms' gradient where the step has one, so that W's whole gradient is
written in that one pass; or, in a micro-batched step, adds each row that has pairs to the
step's float32 sum and leaves the others untouched. ``_pair_dots`` gives one dot product per
(pair, group): the values' gradient.

Two more serve the JumpReLU step from the pairs. ``_window_dots`` sums the threshold's window
in dense tiles (:meth:`TritonKernels.window_dots`); ``_entry_masks`` lists which entries that
step works on (:meth:`TritonKernels.entry_masks`, for ``jumprelu_pairs.active_entries``): one
read of the pre-activations and one write of each mask, where op by op the products,
differences, extremes and comparisons make a dozen passes over ``[N, F]``.

:class:`TritonKernels` launches them all with a :class:`~crosslens.kernels.plan.KernelPlan`'s
tunings (its column block, warps, pair tile and window tiles); ``sparse.EagerKernels``
is its eager twin, with the same methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from crosslens.core.devices import launching_on
from crosslens.kernels.plan import KernelPlan

if TYPE_CHECKING:
    from crosslens.kernels.active_pairs import ActivePairs


@triton.jit
def _gather_rows(
    out_ptr,
    src_ptr,
    values_ptr,
    order_ptr,
    src_row_ptr,
    starts_ptr,
    base_ptr,
    scale_ptr,
    n_columns,
    d_group,
    n_groups,
    d_part,
    n_parts,
    HAS_ORDER: tl.constexpr,
    HAS_BASE: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    columns = block * BLOCK + tl.arange(0, BLOCK)
    inside = columns < n_columns
    group = columns // d_group
    start = tl.load(starts_ptr + row)
    end = tl.load(starts_ptr + row + 1)
    if ACCUMULATE:  # add to the row as it is, and touch only rows that have pairs
        pairs_here = tl.zeros([BLOCK], dtype=tl.int32) + (
            end - start
        )  # a block: Triton's interpreter takes no scalar mask
        inside = inside & (pairs_here > 0)
        acc = tl.load(out_ptr + row * n_columns + columns, mask=inside, other=0.0)
    elif HAS_BASE:  # the norms' gradient of this row, scale[row, part] * base[row], to start from
        scale = tl.load(scale_ptr + row * n_parts + columns // d_part, mask=inside, other=0.0)
        base = tl.load(base_ptr + row * n_columns + columns, mask=inside, other=0.0)
        acc = scale.to(tl.float32) * base.to(tl.float32)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(start, end):
        if HAS_ORDER:
            pair = tl.load(order_ptr + j)
        else:
            pair = j
        src_row = tl.load(src_row_ptr + pair)
        v = tl.load(values_ptr + pair * n_groups + group, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(src_ptr + src_row * n_columns + columns, mask=inside, other=0.0).to(tl.float32)
        acc += v * x
    tl.store(out_ptr + row * n_columns + columns, acc, mask=inside)


@triton.jit
def _pair_dots(
    out_ptr,
    a_ptr,
    b_ptr,
    a_row_ptr,
    b_row_ptr,
    n_pairs,
    n_columns,
    d_group,
    n_groups,
    PAIRS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pairs = tl.program_id(0).to(tl.int64) * PAIRS + tl.arange(0, PAIRS)
    group = tl.program_id(1)
    real = pairs < n_pairs
    a_rows = tl.load(a_row_ptr + pairs, mask=real, other=0)
    b_rows = tl.load(b_row_ptr + pairs, mask=real, other=0)
    a_base = a_ptr + a_rows[:, None] * n_columns + group * d_group
    b_base = b_ptr + b_rows[:, None] * n_columns + group * d_group
    acc = tl.zeros([PAIRS, BLOCK], dtype=tl.float32)
    for d0 in range(0, d_group, BLOCK):
        d = d0 + tl.arange(0, BLOCK)
        inside = real[:, None] & (d < d_group)[None, :]
        a = tl.load(a_base + d[None, :], mask=inside, other=0.0).to(tl.float32)
        b = tl.load(b_base + d[None, :], mask=inside, other=0.0).to(tl.float32)
        acc += a * b
    tl.store(out_ptr + pairs * n_groups + group, tl.sum(acc, axis=1), mask=real)


ALIGNMENT = 16
"""Triton specialises a launch for integers divisible by 16, which lets it vectorise the loads
they offset: every d_in of Pythia, OLMo and BLOOM is, and so is a batch of 2048 tokens in up to
128 micro-batches."""


@triton.jit
def _window_dots(
    sums_ptr,
    counts_ptr,
    grad_ptr,
    w_ptr,
    h_ptr,
    window_ptr,
    norms_ptr,
    t_ptr,
    n_tokens,
    n_features,
    n_snapshots,
    d_in,
    stride_hn,
    stride_hf,
    stride_wn,
    stride_wf,
    half_width,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    # one program per (token block, feature block, snapshot); token blocks vary fastest, so
    # consecutive programs share their W[features, s] tile
    token_block, feature_block, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tokens = token_block * BLOCK_N + tl.arange(0, BLOCK_N)
    features = (feature_block * BLOCK_F + tl.arange(0, BLOCK_F)).to(tl.int64)
    real_n, real_f = tokens < n_tokens, features < n_features
    grad_rows = grad_ptr + (s * n_tokens + tokens[:, None].to(tl.int64)) * d_in
    w_rows = w_ptr + (features[None, :] * n_snapshots + s) * d_in
    dots = tl.zeros([BLOCK_N, BLOCK_F], dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        g = tl.load(grad_rows + k[None, :], mask=real_n[:, None] & (k < d_in)[None, :], other=0.0)
        w = tl.load(w_rows + k[:, None], mask=(k < d_in)[:, None] & real_f[None, :], other=0.0).to(g.dtype)
        if IEEE:
            dots = tl.dot(g, w, dots, input_precision="ieee")
        else:
            dots = tl.dot(g, w, dots)
    both = real_n[:, None] & real_f[None, :]
    rows = tokens[:, None].to(tl.int64)  # a token-major [N, F] past 2^31 entries
    h = tl.load(h_ptr + rows * stride_hn + features[None, :] * stride_hf, mask=both, other=0.0)
    window = tl.load(window_ptr + rows * stride_wn + features[None, :] * stride_wf, mask=both, other=0)
    norm = tl.load(norms_ptr + features * n_snapshots + s, mask=real_f, other=0.0)
    t = tl.load(t_ptr + features, mask=real_f, other=0.0)
    distance = h.to(tl.float32) * norm[None, :] - t[None, :]
    inside = both & (window != 0) & (tl.abs(distance) < half_width)
    out = (token_block * n_features + features) * n_snapshots + s
    tl.store(sums_ptr + out, tl.sum(tl.where(inside, dots, 0.0), axis=0), mask=real_f)
    tl.store(counts_ptr + out, tl.sum(inside.to(tl.float32), axis=0), mask=real_f)


ENTRY_ROWS, ENTRY_COLUMNS, ENTRY_WARPS = 4, 512, 8
"""The tile of one program of ``_entry_masks``, rows by columns of ``h``'s storage, and its
warps: 8 elements a thread, read along the contiguous axis. A pass bound by memory: more
elements a thread (4 x 1024 on 4 warps) take so many registers that an H100 keeps few warps
in flight to hide the reads' latency; this launch takes far fewer."""


@triton.jit
def _entry_masks(
    open_ptr,
    active_ptr,
    counts_ptr,
    h_ptr,
    low_ptr,
    high_ptr,
    t_ptr,
    n_rows,
    n_columns,
    half_width,
    FEATURE_ROWS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    real_r, real_c = rows < n_rows, columns < n_columns
    real = real_r[:, None] & real_c[None, :]
    at = rows.to(tl.int64)[:, None] * n_columns + columns[None, :]
    h = tl.load(h_ptr + at, mask=real, other=0.0).to(tl.float32)
    # each feature's smallest and largest norm (float32) and its threshold (widened exactly), along
    # the rows or the columns
    features, real_f = (rows, real_r) if FEATURE_ROWS else (columns, real_c)
    low = tl.load(low_ptr + features, mask=real_f, other=0.0)
    high = tl.load(high_ptr + features, mask=real_f, other=0.0)
    t = tl.load(t_ptr + features, mask=real_f, other=0.0).to(tl.float32)
    if FEATURE_ROWS:
        low, high, t = low[:, None], high[:, None], t[:, None]
    else:
        low, high, t = low[None, :], high[None, :], t[None, :]
    # two roundings each (the launch turns off fused multiply-adds), as torch computes them
    d_low = h * low - t
    d_high = h * high - t
    d_max = tl.maximum(d_low, d_high, propagate_nan=tl.PropagateNan.ALL)
    d_min = tl.minimum(d_low, d_high, propagate_nan=tl.PropagateNan.ALL)
    is_open = real & (d_max > 0)
    active = is_open | (real & (d_min < half_width) & (d_max > -half_width))
    tl.store(open_ptr + at, is_open.to(tl.uint8), mask=real)
    tl.store(active_ptr + at, active.to(tl.uint8), mask=real)
    program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(counts_ptr + 2 * program, tl.sum(tl.sum(is_open.to(tl.int32), axis=1), axis=0))
    tl.store(counts_ptr + 2 * program + 1, tl.sum(tl.sum(active.to(tl.int32), axis=1), axis=0))


ENTRY_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""What :func:`entry_masks` reads ``h`` and the thresholds in: each widens to float32 exactly."""


def entry_masks_take(h_NF: torch.Tensor, low_F: torch.Tensor, high_F: torch.Tensor, t_F: torch.Tensor) -> bool:
    """Whether :func:`entry_masks` computes as torch would for these dtypes: in float32. Torch
    does for float32 norms, whatever the float dtypes of ``h`` and of the thresholds (a step
    under autocast compares a bfloat16 ``h`` with bfloat16 thresholds, and its norms are
    float32); half-precision norms, a crosscoder held in that dtype, round its products there."""
    norms_float32 = low_F.dtype == high_F.dtype == torch.float32
    return norms_float32 and h_NF.dtype in ENTRY_DTYPES and t_F.dtype in ENTRY_DTYPES


class TritonKernels:
    """The sums of the sparse step, by the Triton kernels above, launched with ``plan``'s
    tunings. The same methods, arguments and results as ``sparse.EagerKernels``."""

    def __init__(self, plan: KernelPlan) -> None:
        self.plan = plan

    def _gather(
        self,
        n_rows: int,
        src_GD: torch.Tensor,
        values_AG: torch.Tensor,
        order: torch.Tensor | None,
        src_row_A: torch.Tensor,
        starts: torch.Tensor,
        base: tuple[torch.Tensor, torch.Tensor] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _, G, D = src_GD.shape
        accumulate = out is not None
        if accumulate and base is not None:
            raise ValueError("a sum to add to takes no norms' term: the block that owns the sum takes it")
        if out is None:
            out = torch.empty(n_rows, G, D, dtype=torch.float32, device=src_GD.device)
        elif out.dtype != torch.float32 or not out.is_contiguous() or out.shape != (n_rows, G, D):
            raise ValueError(
                f"a sum to add to must be a contiguous float32 [{n_rows}, {G}, {D}], got {out.dtype} {tuple(out.shape)}"
            )
        if n_rows == 0:
            return out
        base_W, scale = (None, None) if base is None else (base[0].contiguous(), base[1].float().contiguous())
        n_parts = 1 if scale is None else scale.shape[1]
        block = self.plan.column_block
        grid = (n_rows, triton.cdiv(G * D, block))
        with launching_on(out):
            _gather_rows[grid](
                out,
                src_GD,
                values_AG,
                order if order is not None else starts,
                src_row_A,
                starts,
                base_W if base_W is not None else out,
                scale if scale is not None else out,
                G * D,
                D,
                G,
                G * D // n_parts,
                n_parts,
                HAS_ORDER=order is not None,
                HAS_BASE=base is not None,
                ACCUMULATE=accumulate,
                BLOCK=block,
                num_warps=self.plan.gather_warps,
            )
        return out

    def decode(self, W_FGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs) -> torch.Tensor:
        """``[N, G, D]`` in the values' dtype: each token's rows ``W[i]`` weighted by its pairs'
        values."""
        out = self._gather(pairs.n_tokens, W_FGD, values_AG, None, pairs.feature_A, pairs.token_starts())
        return out.to(values_AG.dtype)

    def weight_grad(
        self,
        grad_NGD: torch.Tensor,
        values_AG: torch.Tensor,
        pairs: ActivePairs,
        norm_term: tuple[torch.Tensor, torch.Tensor] | None = None,
        dtype: torch.dtype | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[F, G, D]`` in ``dtype`` (the gradient's by default): each feature's ``grad_out`` rows
        weighted by its pairs' values, added to the norms' gradient ``W * scale`` where
        ``norm_term`` gives it (read and written in the same pass); or, with ``out`` (float32, no
        ``norm_term``), added to ``out``'s rows that have pairs, the others not touched."""
        order_A, starts = pairs.feature_order()
        grad_W = self._gather(pairs.n_features, grad_NGD, values_AG, order_A, pairs.token_A, starts, norm_term, out)
        return grad_W if out is not None else grad_W.to(dtype or grad_NGD.dtype)

    def values_grad(
        self, grad_NGD: torch.Tensor, W_FGD: torch.Tensor, pairs: ActivePairs, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``[A, G]`` in ``dtype`` (the gradient's by default): ``<grad_out[n, g], W[i, g]>`` for
        every pair."""
        _, G, D = W_FGD.shape
        n_pairs = pairs.feature_A.shape[0]
        out = torch.empty(n_pairs, G, dtype=torch.float32, device=W_FGD.device)
        if n_pairs:
            with launching_on(out):
                _pair_dots[(triton.cdiv(n_pairs, self.plan.pair_block), G)](
                    out,
                    grad_NGD,
                    W_FGD,
                    pairs.token_A,
                    pairs.feature_A,
                    n_pairs,
                    G * D,
                    D,
                    G,
                    PAIRS=self.plan.pair_block,
                    BLOCK=self.plan.pair_columns,
                )
        return out.to(dtype or grad_NGD.dtype)

    def window_dots(
        self,
        grad_SND: torch.Tensor,
        W_FSD: torch.Tensor,
        h_NF: torch.Tensor,
        window_NF: torch.Tensor,
        norms_FS: torch.Tensor,
        t_F: torch.Tensor,
        half_width: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sums_FS, counts_FS)`` over the entries ``(n, i)`` of ``window_NF`` whose distance
        ``h[n, i] * norms[i, s] - t[i]`` lies inside ``half_width`` at snapshot ``s``: the sum of
        ``<grad[s, n], W[i, s]>`` and their count. Each program forms its ``<grad, W>`` tile with
        one matmul over ``d_in`` (in ``grad``'s dtype, float32 accumulation) and applies the mask
        in registers, so no ``[F, N]`` mask is written; the token blocks' partial sums are added
        in a fixed order afterwards. Aligned half-precision rows take the plan's
        ``window_tile``, the others its ``window_tile_narrow``."""
        S, N, D = grad_SND.shape
        F_ = W_FSD.shape[0]
        ieee = grad_SND.dtype == torch.float32
        grad_SND, W_FSD = grad_SND.contiguous(), W_FSD.contiguous()
        aligned = D % ALIGNMENT == 0 and N % ALIGNMENT == 0 and grad_SND.data_ptr() % 16 == 0 == W_FSD.data_ptr() % 16
        tile = self.plan.window_tile if aligned and not ieee else self.plan.window_tile_narrow
        n_blocks = triton.cdiv(N, tile.tokens)
        sums = torch.empty(n_blocks, F_, S, dtype=torch.float32, device=grad_SND.device)
        counts = torch.empty_like(sums)
        window = window_NF.view(torch.uint8)
        with launching_on(sums):
            _window_dots[(n_blocks, triton.cdiv(F_, tile.features), S)](
                sums,
                counts,
                grad_SND,
                W_FSD,
                h_NF,
                window,
                norms_FS.contiguous(),
                t_F.contiguous(),
                N,
                F_,
                S,
                D,
                h_NF.stride(0),
                h_NF.stride(1),
                window.stride(0),
                window.stride(1),
                half_width,
                BLOCK_N=tile.tokens,
                BLOCK_F=tile.features,
                BLOCK_K=tile.depth,
                IEEE=ieee,
                num_warps=tile.warps,
                num_stages=tile.stages,
            )
        return sums.sum(dim=0), counts.sum(dim=0)

    entry_masks_take = staticmethod(entry_masks_take)

    @staticmethod
    def entry_masks(
        h_NF: torch.Tensor, low_F: torch.Tensor, high_F: torch.Tensor, t_F: torch.Tensor, half_width: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(open_NF, active_NF, n_open, n_active)`` as ``sparse.eager_entry_masks`` gives
        them, bit for bit, in one read of ``h`` (token-major or feature-major, as the encoder leaves
        it) and one write of each mask, which has ``h``'s layout; the counts are each program's,
        added after. Only where :func:`entry_masks_take` the dtypes."""
        if not entry_masks_take(h_NF, low_F, high_F, t_F):
            raise ValueError(
                f"entry_masks computes in float32 from float32 norms, and h and thresholds in float32 or half precision; "
                f"got h {h_NF.dtype}, norms {low_F.dtype} and {high_F.dtype}, thresholds {t_F.dtype}"
            )
        feature_rows = not h_NF.is_contiguous() and h_NF.T.is_contiguous()
        if not (feature_rows or h_NF.is_contiguous()):
            h_NF = h_NF.contiguous()
        open_NF = torch.empty_like(h_NF, dtype=torch.bool)
        active_NF = torch.empty_like(h_NF, dtype=torch.bool)
        h_RC, open_RC, active_RC = (h_NF.T, open_NF.T, active_NF.T) if feature_rows else (h_NF, open_NF, active_NF)
        n_rows, n_columns = h_RC.shape
        grid = (triton.cdiv(n_rows, ENTRY_ROWS), triton.cdiv(n_columns, ENTRY_COLUMNS))
        counts = torch.empty(grid[0] * grid[1], 2, dtype=torch.int32, device=h_NF.device)
        with launching_on(counts):
            _entry_masks[grid](
                open_RC.view(torch.uint8),
                active_RC.view(torch.uint8),
                counts,
                h_RC,
                low_F.contiguous(),
                high_F.contiguous(),
                t_F.contiguous(),
                n_rows,
                n_columns,
                half_width,
                FEATURE_ROWS=feature_rows,
                BLOCK_R=ENTRY_ROWS,
                BLOCK_C=ENTRY_COLUMNS,
                num_warps=ENTRY_WARPS,
                enable_fp_fusion=False,
            )
        n_open, n_active = counts.sum(dim=0)
        return open_NF, active_NF, n_open, n_active
