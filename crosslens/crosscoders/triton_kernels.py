"""Triton kernels for the sparse decode of :mod:`crosslens.crosscoders.sparse_kernels`.

Imported only when that module chooses them (CUDA with triton installed, or a test under
``TRITON_INTERPRET=1``): triton is no dependency of the package. Same arguments and
results as the eager ``eager_decode``, ``eager_values_grad`` and ``eager_weight_grad``
there; every sum is accumulated in float32.

Two kernels serve three sums. ``_gather_rows`` writes, for each output row r and a block
of its ``G * D`` columns, ``sum over the pairs listed for r of v[pair, g] * src[row of
the pair]``: with the pairs of each token (token-major order) and ``src = W`` it is the
decode; with the pairs of each feature (the feature order) and ``src = grad_out`` it is
the decoder's gradient, the sparse-transpose-dense matmul, which writes every row of
``grad_W`` once (zeros for features without pairs) and needs no atomics; it starts each
row from the decoder norms' gradient where the step has one, so that W's whole gradient is
written in that one pass; or, in a micro-batched step, adds each row that has pairs to the
step's float32 sum and leaves the others untouched. ``_pair_dots`` gives one dot product per (pair, group): the values'
gradient. In the decoder-gradient pass ``_gather_rows`` can give those dot products too
(:func:`weight_and_values_grad`): each program holds a block of one feature's row of ``W`` and
loads the gradient rows of that feature's pairs anyway, so it writes each pair's dot product
over its block, and the blocks of a group are added in a fixed order afterwards. That spares
the second gather of every pair's gradient row and decoder row that ``_pair_dots`` makes
(about 13 GB a step for TopK at Ge et al.'s shape).

Three more serve the JumpReLU step from the pairs. ``_window_dots`` sums the threshold's window
in dense tiles (:func:`window_dots`), ``_window_gather`` from its entries listed by feature
(:func:`window_gather`). ``_entry_masks`` lists which entries that step works on
(:func:`entry_masks`, for ``sparse_kernels.active_entries``): one read of the pre-activations and
one write of each mask, where op by op the products, differences, extremes and comparisons
make a dozen passes over ``[N, F]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from crosslens.core.devices import launching_on

if TYPE_CHECKING:
    from crosslens.crosscoders.active_pairs import ActivePairs

COLUMN_BLOCK = 1024
"""Columns of one program of ``_gather_rows``: the fastest block that ``benchmarks/gpu.py
--gathers`` found for gathering and scattering rows, in bfloat16 and in float32."""

GATHER_WARPS = 4
"""Warps of one program of ``_gather_rows``: with :data:`COLUMN_BLOCK`, the elements each
thread loads from a pair's row in one step of its loop over the pairs."""

VALUES_IN_WEIGHT_PASS = False
"""Whether :func:`weight_and_values_grad` gives the values' gradient from the decoder-gradient
pass (one gather of the gradient's rows) rather than from a second pass of its own
(:func:`values_grad`). ``benchmarks/gpu.py --gathers`` times both: the block reduction each
pair adds to the gather's loop costs more than the second gather saves, in either dtype."""

MIN_DOTS_BLOCK = 128
"""Fewest columns a block of the decoder-gradient pass may have for it to give the values'
gradient too (:func:`weight_and_values_grad`): a block must lie in one group, so a group's
``D`` with no power-of-two factor of at least this many runs the two passes instead, whose
gather keeps its :data:`COLUMN_BLOCK` (a narrower block leaves most of its threads idle; every
d_in of Pythia, OLMo and BLOOM is a multiple of 256, GPT-2 XL's 1600 only of 64)."""

PAIR_BLOCK, PAIR_COLUMNS = 32, 64
"""Pairs of one program of ``_pair_dots``, and the columns of each it reads at a time: the
fastest of the tiles ``benchmarks/gpu.py --gathers`` tries, in both dtypes."""


@triton.jit
def _gather_rows(
    out_ptr, src_ptr, values_ptr, order_ptr, src_row_ptr, starts_ptr, base_ptr, scale_ptr, dots_ptr, read_ptr,
    n_columns, d_group, n_groups, d_part, n_parts,
    HAS_ORDER: tl.constexpr, HAS_BASE: tl.constexpr, ACCUMULATE: tl.constexpr, HAS_DOTS: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    columns = block * BLOCK + tl.arange(0, BLOCK)
    inside = columns < n_columns
    group = columns // d_group
    start = tl.load(starts_ptr + row)
    end = tl.load(starts_ptr + row + 1)
    if ACCUMULATE:  # add to the row as it is, and touch only rows that have pairs
        pairs_here = tl.zeros([BLOCK], dtype=tl.int32) + (end - start)  # a block: Triton's interpreter takes no scalar mask
        inside = inside & (pairs_here > 0)
        acc = tl.load(out_ptr + row * n_columns + columns, mask=inside, other=0.0)
    elif HAS_BASE:  # the norms' gradient of this row, scale[row, part] * base[row], to start from
        scale = tl.load(scale_ptr + row * n_parts + columns // d_part, mask=inside, other=0.0)
        base = tl.load(base_ptr + row * n_columns + columns, mask=inside, other=0.0)
        acc = scale.to(tl.float32) * base.to(tl.float32)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_DOTS:  # this block of the row as the dot products read it (W, or its rounded copy)
        w = tl.load(read_ptr + row * n_columns + columns, mask=inside, other=0.0).to(tl.float32)
    for j in range(start, end):
        if HAS_ORDER:
            pair = tl.load(order_ptr + j)
        else:
            pair = j
        src_row = tl.load(src_row_ptr + pair)
        v = tl.load(values_ptr + pair * n_groups + group, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(src_ptr + src_row * n_columns + columns, mask=inside, other=0.0).to(tl.float32)
        acc += v * x
        if HAS_DOTS:  # the pair's dot product over this block, one entry per (pair, block)
            tl.store(dots_ptr + pair.to(tl.int64) * tl.num_programs(1) + block, tl.sum(x * w, axis=0))
    tl.store(out_ptr + row * n_columns + columns, acc, mask=inside)


@triton.jit
def _pair_dots(
    out_ptr, a_ptr, b_ptr, a_row_ptr, b_row_ptr, n_pairs, n_columns, d_group, n_groups,
    PAIRS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
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


def _gather(
    n_rows: int, src_GD: torch.Tensor, values_AG: torch.Tensor, order: torch.Tensor | None,
    src_row_A: torch.Tensor, starts: torch.Tensor, base: tuple[torch.Tensor, torch.Tensor] | None = None,
    out: torch.Tensor | None = None, dots: tuple[torch.Tensor, torch.Tensor] | None = None, block: int | None = None,
) -> torch.Tensor:  # fmt: skip
    block = COLUMN_BLOCK if block is None else block  # read at the call: a sweep sets the constant
    _, G, D = src_GD.shape
    accumulate = out is not None
    if accumulate and base is not None:
        raise ValueError("a sum to add to takes no norms' term: the block that owns the sum takes it")
    if out is None:
        out = torch.empty(n_rows, G, D, dtype=torch.float32, device=src_GD.device)
    elif out.dtype != torch.float32 or not out.is_contiguous() or out.shape != (n_rows, G, D):
        raise ValueError(f"a sum to add to must be a contiguous float32 [{n_rows}, {G}, {D}], got {out.dtype} {tuple(out.shape)}")
    if n_rows == 0:
        return out
    base_W, scale = (None, None) if base is None else (base[0].contiguous(), base[1].float().contiguous())
    n_parts = 1 if scale is None else scale.shape[1]
    read, dots_AB = (out, out) if dots is None else dots
    grid = (n_rows, triton.cdiv(G * D, block))
    with launching_on(out):
        _gather_rows[grid](
            out, src_GD, values_AG, order if order is not None else starts, src_row_A, starts,
            base_W if base_W is not None else out, scale if scale is not None else out, dots_AB, read,
            G * D, D, G, G * D // n_parts, n_parts,
            HAS_ORDER=order is not None, HAS_BASE=base is not None, ACCUMULATE=accumulate, HAS_DOTS=dots is not None,
            BLOCK=block, num_warps=GATHER_WARPS,
        )  # fmt: skip
    return out


def decode(W_FGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs) -> torch.Tensor:
    """``[N, G, D]`` in the values' dtype: each token's rows ``W[i]`` weighted by its pairs'
    values."""
    out = _gather(pairs.n_tokens, W_FGD, values_AG, None, pairs.feature_A, pairs.token_starts())
    return out.to(values_AG.dtype)


def weight_grad(
    grad_NGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs,
    norm_term: tuple[torch.Tensor, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """``[F, G, D]`` in ``dtype`` (the gradient's by default): each feature's ``grad_out`` rows
    weighted by its pairs' values, added to the norms' gradient ``W * scale`` where
    ``norm_term`` gives it (read and written in the same pass); or, with ``out`` (float32, no
    ``norm_term``), added to ``out``'s rows that have pairs, the others not touched."""
    order_A, starts = pairs.feature_order()
    grad_W = _gather(pairs.n_features, grad_NGD, values_AG, order_A, pairs.token_A, starts, norm_term, out)
    return grad_W if out is not None else grad_W.to(dtype or grad_NGD.dtype)


def weight_and_values_grad(
    grad_NGD: torch.Tensor, values_AG: torch.Tensor, pairs: ActivePairs, read_FGD: torch.Tensor,
    norm_term: tuple[torch.Tensor, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None, values_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """:func:`weight_grad`'s result (its ``norm_term``, ``dtype`` and ``out`` as there) and
    :func:`values_grad`'s from ``read_FGD`` (in ``values_dtype``, the gradient's by default),
    from one gather of the gradient's rows. Its blocks must not straddle two groups: they are
    :data:`COLUMN_BLOCK` columns, or the largest power of two that divides a group's ``D`` where
    that is smaller; below :data:`MIN_DOTS_BLOCK` the two passes run instead."""
    _, G, D = read_FGD.shape
    block = min(COLUMN_BLOCK, D & -D)
    if block < MIN_DOTS_BLOCK or not VALUES_IN_WEIGHT_PASS:
        grad_W = weight_grad(grad_NGD, values_AG, pairs, norm_term, dtype, out)
        return grad_W, values_grad(grad_NGD, read_FGD, pairs, values_dtype)
    order_A, starts = pairs.feature_order()
    n_pairs, per_group = pairs.feature_A.shape[0], D // block
    dots_AB = torch.empty(n_pairs, G * per_group, dtype=torch.float32, device=read_FGD.device)
    grad_W = _gather(
        pairs.n_features, grad_NGD, values_AG, order_A, pairs.token_A, starts, norm_term, out,
        dots=(read_FGD.contiguous(), dots_AB), block=block,
    )  # fmt: skip
    grad_v = dots_AB.view(n_pairs, G, per_group).sum(dim=2)
    return grad_W if out is not None else grad_W.to(dtype or grad_NGD.dtype), grad_v.to(values_dtype or grad_NGD.dtype)


def values_grad(
    grad_NGD: torch.Tensor, W_FGD: torch.Tensor, pairs: ActivePairs, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``[A, G]`` in ``dtype`` (the gradient's by default): ``<grad_out[n, g], W[i, g]>`` for
    every pair."""
    _, G, D = W_FGD.shape
    n_pairs = pairs.feature_A.shape[0]
    out = torch.empty(n_pairs, G, dtype=torch.float32, device=W_FGD.device)
    if n_pairs:
        with launching_on(out):
            _pair_dots[(triton.cdiv(n_pairs, PAIR_BLOCK), G)](
                out, grad_NGD, W_FGD, pairs.token_A, pairs.feature_A, n_pairs, G * D, D, G,
                PAIRS=PAIR_BLOCK, BLOCK=PAIR_COLUMNS,
            )  # fmt: skip
    return out.to(dtype or grad_NGD.dtype)


@dataclass(frozen=True)
class WindowTile:
    """One launch of the window sums (``_window_dots``): its tile and the compiler's options."""

    tokens: int
    """Tokens of a tile (``BLOCK_N``)."""
    features: int
    """Features of a tile (``BLOCK_F``)."""
    depth: int
    """The ``d_in`` slice of each step of its inner product (``BLOCK_K``)."""
    warps: int
    """Warps of one program. The epilogue holds four ``tokens x features`` tiles (the dot
    products, ``h``, the window and the distances) in registers: a tile too large for its warps
    spills to the stack (``tests/test_triton_compiles.py`` fails on any spill)."""
    stages: int
    """Loads in flight along ``d_in`` (Triton's software pipeline)."""
    early: bool = False
    """Read the mask's operands (the tile's ``h`` and window entries, the norms and thresholds)
    before the loop over ``d_in`` rather than after it, so that their reads from memory run while
    the products do, for the registers that hold them through the loop."""
    persistent: bool = False
    """Launch one program per multiprocessor, each walking tiles in the grid's order, instead of
    one program per tile: the compiler can then start a tile's loads while the one before
    forms its mask and sums."""


WINDOW_TILE = WindowTile(tokens=128, features=128, depth=64, warps=8, stages=4)
"""The launch for a bfloat16 (or float16) gradient, whose products run on the tensor cores, with
``d_in`` and the tokens multiples of :data:`ALIGNMENT`: the fastest of the launches ``benchmarks/gpu.py
--window-tiles`` times at Ge et al.'s shape on an H100, with no stack
(``pytest -rP tests/test_triton_compiles.py`` prints each launch's registers)."""

WINDOW_TILE_NARROW = WindowTile(tokens=64, features=64, depth=32, warps=8, stages=3)
"""The launch for a float32 gradient, whose products are exact float32 FMAs (no tensor cores),
and where ``d_in`` or the tokens are no multiple of :data:`ALIGNMENT`, whose loads of the
gradient's rows or of ``h``'s columns the compiler then cannot vectorise: :data:`WINDOW_TILE`
spills to the stack there on an H100. So does this tile with a ``d_in`` slice of 64 in float32,
with triton 3.9 and with the GPU machine's 3.6, and with 4 warps."""

WINDOW_TILES = (
    WINDOW_TILE,
    WindowTile(128, 128, 64, 8, 4, early=True),
    WindowTile(128, 64, 64, 8, 4, persistent=True),
    WindowTile(128, 64, 64, 8, 3),
    WindowTile(64, 128, 64, 8, 3),
)
"""The launches of the aligned half-precision window sums that ``benchmarks/gpu.py --window-tiles``
times against each other, the default first. Each compiles for an H100 with no spilled register
(``tests/test_triton_compiles.py``), with triton 3.9 and with the GPU machine's 3.6. One program per
tile and snapshot, launched in plain order, tokens as the tile's rows: a program that sums several
snapshots while it holds its ``h`` tile, an order that runs a tile's snapshots one after another
so that ``h`` comes from the L2 cache, and tiles with the features as rows (each feature's sum
along a row of the products, within a warp) were slower on an H100, or faster alone by too little
to show in the step, since the kernel's time is its products, not its reads of ``h`` or its sums."""

ALIGNMENT = 16
"""Triton specialises a launch for integers divisible by 16, which lets it vectorise the loads
they offset: every d_in of Pythia, OLMo and BLOOM is, and so is a batch of 2048 tokens in up to
128 micro-batches."""


@triton.jit
def _window_mask_operands(
    h_ptr, window_ptr, norms_ptr, t_ptr, tokens, features, real_n, real_f, s, n_snapshots,
    stride_hn, stride_hf, stride_wn, stride_wf,
):  # fmt: skip
    both = real_n[:, None] & real_f[None, :]
    rows = tokens[:, None].to(tl.int64)  # a token-major [N, F] past 2^31 entries
    h = tl.load(h_ptr + rows * stride_hn + features[None, :] * stride_hf, mask=both, other=0.0)
    window = tl.load(window_ptr + rows * stride_wn + features[None, :] * stride_wf, mask=both, other=0)
    norm = tl.load(norms_ptr + features * n_snapshots + s, mask=real_f, other=0.0)
    t = tl.load(t_ptr + features, mask=real_f, other=0.0)
    return both, h, window, norm, t


@triton.jit
def _window_dots(
    sums_ptr, counts_ptr, grad_ptr, w_ptr, h_ptr, window_ptr, norms_ptr, t_ptr,
    n_tokens, n_features, n_snapshots, d_in, stride_hn, stride_hf, stride_wn, stride_wf, half_width,
    BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, EARLY: tl.constexpr,
    PERSISTENT: tl.constexpr,
):  # fmt: skip
    if PERSISTENT:
        # a program per multiprocessor walks the tiles in the grid's order; flattened, the
        # compiler may pipeline the next tile's loads under this one's mask and sums
        n_token_blocks, n_feature_blocks = tl.cdiv(n_tokens, BLOCK_N), tl.cdiv(n_features, BLOCK_F)
        n_tiles = n_token_blocks * n_feature_blocks * n_snapshots
        for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), flatten=True):
            _window_tile(
                sums_ptr, counts_ptr, grad_ptr, w_ptr, h_ptr, window_ptr, norms_ptr, t_ptr,
                n_tokens, n_features, n_snapshots, d_in, stride_hn, stride_hf, stride_wn, stride_wf, half_width,
                tile % n_token_blocks, tile // n_token_blocks % n_feature_blocks, tile // (n_token_blocks * n_feature_blocks),
                BLOCK_N, BLOCK_F, BLOCK_K, IEEE, EARLY,
            )  # fmt: skip
    else:
        _window_tile(
            sums_ptr, counts_ptr, grad_ptr, w_ptr, h_ptr, window_ptr, norms_ptr, t_ptr,
            n_tokens, n_features, n_snapshots, d_in, stride_hn, stride_hf, stride_wn, stride_wf, half_width,
            tl.program_id(0), tl.program_id(1), tl.program_id(2), BLOCK_N, BLOCK_F, BLOCK_K, IEEE, EARLY,
        )  # fmt: skip


@triton.jit
def _window_tile(
    sums_ptr, counts_ptr, grad_ptr, w_ptr, h_ptr, window_ptr, norms_ptr, t_ptr,
    n_tokens, n_features, n_snapshots, d_in, stride_hn, stride_hf, stride_wn, stride_wf, half_width,
    token_block, feature_block, s,
    BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, EARLY: tl.constexpr,
):  # fmt: skip
    # token blocks vary fastest, so consecutive programs share their W[features, s] tile
    tokens = token_block * BLOCK_N + tl.arange(0, BLOCK_N)
    features = (feature_block * BLOCK_F + tl.arange(0, BLOCK_F)).to(tl.int64)
    real_n, real_f = tokens < n_tokens, features < n_features
    grad_rows = grad_ptr + (s * n_tokens + tokens[:, None].to(tl.int64)) * d_in
    w_rows = w_ptr + (features[None, :] * n_snapshots + s) * d_in
    if EARLY:
        both, h, window, norm, t = _window_mask_operands(
            h_ptr, window_ptr, norms_ptr, t_ptr, tokens, features, real_n, real_f, s, n_snapshots,
            stride_hn, stride_hf, stride_wn, stride_wf,
        )  # fmt: skip
    dots = tl.zeros([BLOCK_N, BLOCK_F], dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        g = tl.load(grad_rows + k[None, :], mask=real_n[:, None] & (k < d_in)[None, :], other=0.0)
        w = tl.load(w_rows + k[:, None], mask=(k < d_in)[:, None] & real_f[None, :], other=0.0).to(g.dtype)
        if IEEE:
            dots = tl.dot(g, w, dots, input_precision="ieee")
        else:
            dots = tl.dot(g, w, dots)
    if not EARLY:
        both, h, window, norm, t = _window_mask_operands(
            h_ptr, window_ptr, norms_ptr, t_ptr, tokens, features, real_n, real_f, s, n_snapshots,
            stride_hn, stride_hf, stride_wn, stride_wf,
        )  # fmt: skip
    distance = h.to(tl.float32) * norm[None, :] - t[None, :]
    inside = both & (window != 0) & (tl.abs(distance) < half_width)
    out = (token_block * n_features + features) * n_snapshots + s
    tl.store(sums_ptr + out, tl.sum(tl.where(inside, dots, 0.0), axis=0), mask=real_f)
    tl.store(counts_ptr + out, tl.sum(inside.to(tl.float32), axis=0), mask=real_f)


def multiprocessors(device: torch.device) -> int:
    """A CUDA device's multiprocessors; elsewhere (Triton's interpreter) 2, so that each program
    of a persistent launch walks several tiles."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


WINDOW_GATHER = False
"""Sum the window from its entries listed by feature (:func:`window_gather`) where the caller
knows their count, instead of in dense tiles (``_window_dots``): work in proportion to the
entries inside the window rather than to every (token, feature, snapshot).
``benchmarks/gpu.py --window-tiles`` times it beside the tiles."""

GATHER_ENTRIES, GATHER_SNAPSHOTS, GATHER_COLUMNS, GATHER_WINDOW_WARPS = 16, 4, 128, 4
"""The block of one step of :func:`window_gather`'s loop: window entries by snapshots by
``d_in`` columns of the gradient's rows (8,192 elements, 64 a thread on 4 warps)."""


@triton.jit
def _gathered_inside(h_ptr, e0, end, norm, t, real_s, half_width, BLOCK_E: tl.constexpr):
    """A block of a feature's window entries from ``e0`` (before ``end``), and which of them lie
    inside the window at each snapshot of the block."""
    e = e0 + tl.arange(0, BLOCK_E)
    real_e = e < end
    distance = tl.load(h_ptr + e, mask=real_e, other=0.0).to(tl.float32)[:, None] * norm[None, :] - t
    return e, real_e, real_e[:, None] & real_s[None, :] & (tl.abs(distance) < half_width)


@triton.jit
def _window_gather(
    sums_ptr, counts_ptr, grad_ptr, w_ptr, token_ptr, h_ptr, starts_ptr, norms_ptr, t_ptr,
    n_tokens, n_snapshots, d_in, half_width,
    BLOCK_E: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # features vary fastest, so the programs running together read one block of snapshots'
    # gradient rows, which the L2 cache holds
    feature = tl.program_id(0).to(tl.int64)
    snapshots = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    real_s = snapshots < n_snapshots
    start, end = tl.load(starts_ptr + feature), tl.load(starts_ptr + feature + 1)
    norm = tl.load(norms_ptr + feature * n_snapshots + snapshots, mask=real_s, other=0.0)
    t = tl.load(t_ptr + feature)
    # counted in a pass of their own, which reads h alone: inside the sums' loop the count's
    # registers make an unaligned d_in spill
    counts = tl.zeros([BLOCK_S], dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        _, _, inside = _gathered_inside(h_ptr, e0, end, norm, t, real_s, half_width, BLOCK_E)
        counts += tl.sum(inside.to(tl.float32), axis=0)
    sums = tl.zeros([BLOCK_S], dtype=tl.float32)
    for d0 in range(0, d_in, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        real_d = d < d_in
        rows_sum = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
        for e0 in range(start, end, BLOCK_E):
            e, real_e, inside = _gathered_inside(h_ptr, e0, end, norm, t, real_s, half_width, BLOCK_E)
            token = tl.load(token_ptr + e, mask=real_e, other=0).to(tl.int64)
            rows = (snapshots[None, :].to(tl.int64) * n_tokens + token[:, None]) * d_in
            # a row outside the window is not read at all (masked lanes load nothing)
            g = tl.load(grad_ptr + rows[:, :, None] + d[None, None, :], mask=inside[:, :, None] & real_d[None, None, :], other=0.0)
            rows_sum += tl.sum(g.to(tl.float32), axis=0)
        w = tl.load(w_ptr + (feature * n_snapshots + snapshots[:, None]) * d_in + d[None, :], mask=real_s[:, None] & real_d[None, :], other=0.0)
        sums += tl.sum(rows_sum * w.to(grad_ptr.dtype.element_ty).to(tl.float32), axis=1)
    out = feature * n_snapshots + snapshots
    tl.store(sums_ptr + out, sums, mask=real_s)
    tl.store(counts_ptr + out, counts, mask=real_s)


def window_gather(
    grad_SND: torch.Tensor, W_FSD: torch.Tensor, h_NF: torch.Tensor, window_NF: torch.Tensor,
    norms_FS: torch.Tensor, t_F: torch.Tensor, half_width: float, n_window: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """:func:`window_dots`'s ``(sums_FS, counts_FS)`` from the ``n_window`` entries of
    ``window_NF`` listed by feature: each program takes one feature and a block of snapshots,
    adds up the gradient rows of the feature's entries inside the window at each (in float32;
    a row outside is never read), and dots that sum with ``W[i, s]`` rounded to the gradient's
    dtype. Its reads grow with the entries inside the window, where the tiles' products grow with
    every (token, feature, snapshot); the sums are the tiles' up to the order of float sums."""
    S, N, D = grad_SND.shape
    F_ = W_FSD.shape[0]
    device = grad_SND.device
    feature_W, token_W = torch.nonzero_static(window_NF.T, size=n_window).T  # by feature, then token
    starts = torch.zeros(F_ + 1, dtype=torch.int64, device=device)
    starts[1:] = torch.bincount(feature_W, minlength=F_).cumsum(0)
    h_W = h_NF[token_W, feature_W]
    sums = torch.empty(F_, S, dtype=torch.float32, device=device)
    counts = torch.empty_like(sums)
    grid = (F_, triton.cdiv(S, GATHER_SNAPSHOTS))
    with launching_on(sums):
        _window_gather[grid](
            sums, counts, grad_SND.contiguous(), W_FSD.contiguous(), token_W.contiguous(), h_W, starts,
            norms_FS.float().contiguous(), t_F.float().contiguous(), N, S, D, half_width,
            BLOCK_E=GATHER_ENTRIES, BLOCK_S=GATHER_SNAPSHOTS, BLOCK_D=GATHER_COLUMNS, num_warps=GATHER_WINDOW_WARPS,
        )  # fmt: skip
    return sums, counts


def window_dots(
    grad_SND: torch.Tensor, W_FSD: torch.Tensor, h_NF: torch.Tensor, window_NF: torch.Tensor,
    norms_FS: torch.Tensor, t_F: torch.Tensor, half_width: float, n_window: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(sums_FS, counts_FS)`` over the entries ``(n, i)`` of ``window_NF`` whose distance
    ``h[n, i] * norms[i, s] - t[i]`` lies inside ``half_width`` at snapshot ``s``: the sum of
    ``<grad[s, n], W[i, s]>`` and their count. Each program forms its ``<grad, W>`` tile with
    one matmul over ``d_in`` (in ``grad``'s dtype, float32 accumulation) and applies the mask
    in registers, so no ``[F, N]`` mask is written; the token blocks' partial sums are added
    in a fixed order afterwards. Aligned half-precision rows take :data:`WINDOW_TILE`, the others
    :data:`WINDOW_TILE_NARROW`, each read at the call (a sweep sets them). With
    :data:`WINDOW_GATHER` and the window's count ``n_window``, :func:`window_gather` instead."""
    if WINDOW_GATHER and n_window is not None:
        return window_gather(grad_SND, W_FSD, h_NF, window_NF, norms_FS, t_F, half_width, n_window)
    S, N, D = grad_SND.shape
    F_ = W_FSD.shape[0]
    ieee = grad_SND.dtype == torch.float32
    grad_SND, W_FSD = grad_SND.contiguous(), W_FSD.contiguous()
    aligned = D % ALIGNMENT == 0 and N % ALIGNMENT == 0 and grad_SND.data_ptr() % 16 == 0 == W_FSD.data_ptr() % 16
    tile = WINDOW_TILE if aligned and not ieee else WINDOW_TILE_NARROW
    n_blocks = triton.cdiv(N, tile.tokens)
    sums = torch.empty(n_blocks, F_, S, dtype=torch.float32, device=grad_SND.device)
    counts = torch.empty_like(sums)
    window = window_NF.view(torch.uint8)
    grid = (n_blocks, triton.cdiv(F_, tile.features), S)
    if tile.persistent:
        grid = (min(math.prod(grid), multiprocessors(grad_SND.device)),)
    with launching_on(sums):
        _window_dots[grid](
            sums, counts, grad_SND, W_FSD, h_NF, window, norms_FS.contiguous(), t_F.contiguous(),
            N, F_, S, D, h_NF.stride(0), h_NF.stride(1), window.stride(0), window.stride(1), half_width,
            BLOCK_N=tile.tokens, BLOCK_F=tile.features, BLOCK_K=tile.depth, IEEE=ieee, EARLY=tile.early,
            PERSISTENT=tile.persistent,
            num_warps=tile.warps, num_stages=tile.stages,
        )  # fmt: skip
    return sums.sum(dim=0), counts.sum(dim=0)


ENTRY_ROWS, ENTRY_COLUMNS, ENTRY_WARPS = 4, 512, 8
"""The tile of one program of ``_entry_masks``, rows by columns of ``h``'s storage, and its
warps: 8 elements a thread, read along the contiguous axis. A pass bound by memory: more
elements a thread (4 x 1024 on 4 warps) take about 150 registers, which leaves an H100 few
warps in flight to hide the reads' latency; this launch takes about 60."""


@triton.jit
def _entry_masks(
    open_ptr, active_ptr, counts_ptr, h_ptr, low_ptr, high_ptr, t_ptr, n_rows, n_columns, half_width,
    FEATURE_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
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


def entry_masks(
    h_NF: torch.Tensor, low_F: torch.Tensor, high_F: torch.Tensor, t_F: torch.Tensor, half_width: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(open_NF, active_NF, n_open, n_active)`` as ``sparse_kernels.eager_entry_masks`` gives
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
            open_RC.view(torch.uint8), active_RC.view(torch.uint8), counts, h_RC, low_F.contiguous(),
            high_F.contiguous(), t_F.contiguous(), n_rows, n_columns, half_width,
            FEATURE_ROWS=feature_rows, BLOCK_R=ENTRY_ROWS, BLOCK_C=ENTRY_COLUMNS, num_warps=ENTRY_WARPS,
            enable_fp_fusion=False,
        )  # fmt: skip
    n_open, n_active = counts.sum(dim=0)
    return open_NF, active_NF, n_open, n_active
