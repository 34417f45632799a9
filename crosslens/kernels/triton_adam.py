"""The Triton kernel of crosslens's Adam, the twin of :mod:`crosslens.kernels.adam`: the update
with float32 moments (:func:`update`, the trainer's ``KernelAdam``) and with bfloat16 moments
(:func:`chunk_update`, ``BFloat16StateAdam``'s, any contiguous chunk of a parameter, the whole of
it on CUDA).

Imported only where the plan's ``adam_backend`` chooses them
(:func:`crosslens.kernels.adam.adam_update`: CUDA with triton installed, or a test under
``TRITON_INTERPRET=1``). Each is one pass: it reads the parameters, the gradient and the two
moments, and writes the parameters and the moments (bfloat16 ones with stochastic rounding whose
noise it draws in registers, :func:`crosslens.kernels.adam.rounding_noise`'s to the bit), and
where asked a copy of the new parameters rounded to bfloat16, the copy the next step's autocast
matmuls read (so that step does not read the float32 weight again to round it), and for the
decoder the Euclidean norms of its new rows, which every sparsity term of the next step reads
(:func:`_row_pass`: a program takes whole rows, a tile of columns at a time, and sums their
squares in float32 in a fixed order, so the norms equal ``torch.linalg.vector_norm``'s to float32
rounding and the same inputs give the same bits). The eager
updates make about a dozen passes for the same numbers (``adam.eager_update``,
``adam.eager_chunk_update``). The arithmetic is theirs, in
float32 and in the same order. A result can differ in its last bit where the compiler fuses a
multiply and an add that the eager ops round apart; the rounded copy is the new parameter
rounded as ``Tensor.to`` rounds it (to nearest, ties to even), to the bit but for a NaN's
payload (a NaN stays a NaN).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from crosslens.core.devices import launching_on

BLOCK = 1024
"""Elements of one program."""

WARPS = 8
"""Warps of one program: 4 elements a thread, one 16-byte load of each float32 operand (with
twice that, the bfloat16-state kernel spills registers when compiled for an H100)."""


@triton.jit
def _round_stochastic(x, noise):
    # add the noise below bfloat16's last bit and keep the top 16 bits (in integers, so that no
    # backend's float cast rounds them again)
    bits = (x.to(tl.int32, bitcast=True) + noise) >> 16
    return bits.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _noise(key_low, key_high, elements):
    # SplitMix64's draw for each element's counter, in wrapping unsigned arithmetic: int32 in
    # [0, 2^16) for each moment, from bits 32-47 and 48-63 (adam.rounding_noise's twin); the
    # 64-bit key arrives as two signed 32-bit halves (key_halves), each typed int32 by every
    # launcher: a whole key in [2^31, 2^32) is typed uint32 by Triton's interpreter and could not
    # be widened there
    key = (key_high.to(tl.uint32, bitcast=True).to(tl.uint64) << 32) | key_low.to(tl.uint32, bitcast=True).to(tl.uint64)
    z = key + (elements + 1).to(tl.uint64) * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    high = (z ^ (z >> 31)) >> 32
    return (high & 0xFFFF).to(tl.int32), (high >> 16).to(tl.int32)


@triton.jit
def _round_nearest(x):
    # to nearest, ties to even, in integers: torch's rounding to the bit, subnormals included,
    # whatever the backend's float cast does (the interpreter's truncates and flushes them); a
    # NaN stays a NaN (its quiet bit set, as its payload may lie in the dropped bits)
    bits = x.to(tl.int32, bitcast=True)
    nearest = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    top = tl.where(x == x, nearest, (bits >> 16) | 0x40)
    return top.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _adam(
    p,
    g,
    m,
    v,
    scale_ptr,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,
    root_bc2,
    eps,
    HAS_SCALE: tl.constexpr,
):
    """Adam's step of float32 ``p`` from its gradient ``g`` and float32 moments: the new
    ``(p, m, v)``."""
    if HAS_SCALE:
        g = tl.div_rn(g, tl.load(scale_ptr))
    m = m * beta1 + one_minus_beta1 * g
    v = v * beta2 + one_minus_beta2 * (g * g)
    # IEEE division and root (Triton's / and sqrt are approximate), as torch's ops round
    p += -step_size * tl.div_rn(m, tl.div_rn(tl.sqrt_rn(v), root_bc2) + eps)
    return p, m, v


@triton.jit
def _step_at(
    offsets,
    inside,
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    key_low,
    key_high,
    start,
    scale_ptr,
    copy_ptr,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,
    root_bc2,
    eps,
    HAS_SCALE: tl.constexpr,
    HAS_COPY: tl.constexpr,
    STOCHASTIC: tl.constexpr,
):
    # Adam's step of the elements at ``offsets`` (where ``inside``), stored; returns the new p.
    # STOCHASTIC: the moments are bfloat16, stored rounded with the noise of the key at elements
    # start + offsets of the parameter; else float32
    p, m, v = _adam(
        tl.load(p_ptr + offsets, mask=inside, other=0.0),
        tl.load(g_ptr + offsets, mask=inside, other=0.0).to(tl.float32),
        tl.load(m_ptr + offsets, mask=inside, other=0.0).to(tl.float32),
        tl.load(v_ptr + offsets, mask=inside, other=0.0).to(tl.float32),
        scale_ptr,
        beta1,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        step_size,
        root_bc2,
        eps,
        HAS_SCALE,
    )
    tl.store(p_ptr + offsets, p, mask=inside)
    if STOCHASTIC:
        noise_m, noise_v = _noise(key_low, key_high, start + offsets)
        tl.store(m_ptr + offsets, _round_stochastic(m, noise_m), mask=inside)
        tl.store(v_ptr + offsets, _round_stochastic(v, noise_v), mask=inside)
    else:
        tl.store(m_ptr + offsets, m, mask=inside)
        tl.store(v_ptr + offsets, v, mask=inside)
    if HAS_COPY:
        tl.store(copy_ptr + offsets, _round_nearest(p), mask=inside)
    return p


@triton.jit(do_not_specialize=["key_low", "key_high"])
def _update(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    key_low,
    key_high,
    start,
    scale_ptr,
    copy_ptr,
    n,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,
    root_bc2,
    eps,
    HAS_SCALE: tl.constexpr,
    HAS_COPY: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _step_at(
        offsets,
        offsets < n,
        p_ptr,
        g_ptr,
        m_ptr,
        v_ptr,
        key_low,
        key_high,
        start,
        scale_ptr,
        copy_ptr,
        beta1,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        step_size,
        root_bc2,
        eps,
        HAS_SCALE,
        HAS_COPY,
        STOCHASTIC,
    )


@triton.jit(do_not_specialize=["key_low", "key_high"])
def _row_pass(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    key_low,
    key_high,
    scale_ptr,
    copy_ptr,
    norms_ptr,
    n_rows,
    d,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,
    root_bc2,
    eps,
    UPDATE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_COPY: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    ROWS: tl.constexpr,
    COLUMNS: tl.constexpr,
    TILES: tl.constexpr,
):
    # _update of a whole parameter seen as rows of ``d`` elements, ROWS rows a program, COLUMNS
    # at a time (TILES times: a bound known when compiling, which every Triton's interpreter takes),
    # writing the Euclidean norm of each new row, summed in float32 in a fixed order; without UPDATE
    # only the norms of the rows as they are, summed in the same order
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_inside = rows < n_rows
    squares = tl.zeros([ROWS], dtype=tl.float32)
    for tile in range(TILES):
        columns = tile * COLUMNS + tl.arange(0, COLUMNS)
        inside = row_inside[:, None] & (columns < d)[None, :]
        offsets = rows[:, None] * d + columns[None, :]
        if UPDATE:
            p = _step_at(
                offsets,
                inside,
                p_ptr,
                g_ptr,
                m_ptr,
                v_ptr,
                key_low,
                key_high,
                0,
                scale_ptr,
                copy_ptr,
                beta1,
                one_minus_beta1,
                beta2,
                one_minus_beta2,
                step_size,
                root_bc2,
                eps,
                HAS_SCALE,
                HAS_COPY,
                STOCHASTIC,
            )
        else:
            p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
        squares += tl.sum(tl.where(inside, p * p, 0.0), axis=1)
    tl.store(norms_ptr + rows, tl.sqrt_rn(squares), mask=row_inside)


@triton.jit(do_not_specialize=["key_low", "key_high"])
def _draw(out_m_ptr, out_v_ptr, key_low, key_high, start, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    noise_m, noise_v = _noise(key_low, key_high, start + offsets)
    tl.store(out_m_ptr + offsets, noise_m, mask=inside)
    tl.store(out_v_ptr + offsets, noise_v, mask=inside)


def key_halves(key: int) -> tuple[int, int]:
    """A signed 64-bit key as its low and high 32 bits, each as a signed 32-bit integer: the
    kernels' two arguments, which every launcher types int32."""
    low, high = key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF
    return tuple(x - (1 << 32) if x >> 31 else x for x in (low, high))  # type: ignore[return-value]


ROW_COLUMNS = 256
"""Columns of a row a program of the row-norm update takes at a time (fewer where the rows are
shorter); it takes ``BLOCK // columns`` rows, the flat kernel's element count."""


def _row_tiles(d: int) -> dict[str, int]:
    """The row kernels' tiling of rows of ``d`` elements: rows a program, columns a tile, tiles a row."""
    columns = min(ROW_COLUMNS, triton.next_power_of_2(d))
    return {"ROWS": BLOCK // columns, "COLUMNS": columns, "TILES": triton.cdiv(d, columns)}


def _check_contiguous(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(
                f"the Adam kernel reads {name} as a flat contiguous tensor; got strides {t.stride()} for shape {tuple(t.shape)}"
            )


def _launch(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    noise: tuple[int, int] | None,
    grad_scale: torch.Tensor | None,
    hyper: tuple[float, float, float, float, float],
    copy: torch.Tensor | None,
    norms: torch.Tensor | None,
) -> None:
    beta1, beta2, step_size, root_bc2, eps = hyper
    key, start = noise if noise is not None else (0, 0)
    if norms is not None and (start != 0 or p.dim() < 2 or norms.shape != p.shape[:-1] or norms.dtype != torch.float32):
        raise ValueError(
            f"the row norms of an update are those of a whole parameter's rows, float32 in its shape but the last "
            f"dimension: got {norms.dtype} norms of shape {tuple(norms.shape)} for a parameter of shape "
            f"{tuple(p.shape)} updated from element {start}"
        )
    _check_contiguous(parameter=p, gradient=g, exp_avg=m, exp_avg_sq=v, copy=copy, norms=norms)
    n = p.numel()
    if n == 0:
        if norms is not None:
            norms.zero_()  # rows of no element
        return
    constants = (beta1, 1 - beta1, beta2, 1 - beta2, step_size, root_bc2, eps)
    scale, out = (p if grad_scale is None else grad_scale), (p if copy is None else copy)
    flags = dict(HAS_SCALE=grad_scale is not None, HAS_COPY=copy is not None, STOCHASTIC=noise is not None)
    with launching_on(p):
        if norms is None:
            _update[(triton.cdiv(n, BLOCK),)](
                p, g, m, v, *key_halves(key), start, scale, out, n, *constants, **flags, BLOCK=BLOCK, num_warps=WARPS
            )
            return
        d = p.shape[-1]
        tiles = _row_tiles(d)
        _row_pass[(triton.cdiv(n // d, tiles["ROWS"]),)](
            p,
            g,
            m,
            v,
            *key_halves(key),
            scale,
            out,
            norms,
            n // d,
            d,
            *constants,
            UPDATE=True,
            **flags,
            **tiles,
            num_warps=WARPS,
        )


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """The Euclidean norms of ``x``'s rows along its last dimension (float32, contiguous, at least
    2-D), summed as :func:`update` sums those it writes, to the bit: for a step to compute the norms
    that update would have handed it (the first step, after a resume or an in-place edit)."""
    if x.dtype != torch.float32 or x.dim() < 2:
        raise ValueError(
            f"row_norms takes a float32 tensor of at least 2 dimensions; got {x.dtype}, shape {tuple(x.shape)}"
        )
    _check_contiguous(tensor=x)
    norms = torch.zeros(x.shape[:-1], dtype=torch.float32, device=x.device)
    d = x.shape[-1]
    if x.numel():
        tiles = _row_tiles(d)
        with launching_on(x):
            _row_pass[(triton.cdiv(x.numel() // d, tiles["ROWS"]),)](
                x,
                x,
                x,
                x,
                0,
                0,
                x,
                x,
                norms,
                x.numel() // d,
                d,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                UPDATE=False,
                HAS_SCALE=False,
                HAS_COPY=False,
                STOCHASTIC=False,
                **tiles,
                num_warps=WARPS,
            )
    return norms


def noise(key: int, start: int, n: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The rounding noise :func:`chunk_update` draws for elements ``start .. start + n`` with
    ``key``, written out (int32, one tensor per moment): for checking it against its eager twin,
    :func:`crosslens.kernels.adam.rounding_noise`."""
    out_m, out_v = (torch.empty(n, dtype=torch.int32, device=device) for _ in range(2))
    if n:
        with launching_on(out_m):
            _draw[(triton.cdiv(n, BLOCK),)](out_m, out_v, *key_halves(key), start, n, BLOCK=BLOCK, num_warps=WARPS)
    return out_m, out_v


def update(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad_scale: torch.Tensor | None,
    hyper: tuple[float, float, float, float, float],
    copy: torch.Tensor | None = None,
    norms: torch.Tensor | None = None,
) -> None:
    """Adam's update of one contiguous parameter in place: ``p``, ``m`` and ``v`` float32, ``g``
    its gradient, ``grad_scale`` a divisor of ``g``, ``hyper = (beta1, beta2, step_size,
    root_bc2, eps)``; ``copy`` (bfloat16, ``p``'s size) receives the new ``p`` rounded, ``norms``
    (float32, one per row along ``p``'s last dimension) the new rows' Euclidean norms."""
    _launch(p, g, m, v, None, grad_scale, hyper, copy, norms)


def chunk_update(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    key: int,
    start: int,
    grad_scale: torch.Tensor | None,
    hyper: tuple[float, float, float, float, float],
    copy: torch.Tensor | None = None,
    norms: torch.Tensor | None = None,
) -> None:
    """Adam's update of one contiguous chunk in place: ``p`` float32, ``g`` its gradient, ``m``
    and ``v`` the bfloat16 moments, stored with the rounding noise of ``key``
    (:func:`crosslens.kernels.adam.noise_key`) at the chunk's elements (it starts at element
    ``start`` of its parameter), ``grad_scale`` a divisor of ``g``, ``hyper = (beta1, beta2,
    step_size, root_bc2, eps)``; ``copy`` (bfloat16, the chunk's size) receives the new ``p``
    rounded; ``norms``, for a chunk that is the whole parameter (``start`` 0, ``p`` in its
    shape), the new rows' Euclidean norms along its last dimension."""
    _launch(p, g, m, v, (key, start), grad_scale, hyper, copy, norms)
