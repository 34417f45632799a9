"""The Triton kernel of :class:`crosslens.training.optim.BFloat16StateAdam`'s update.

Imported only where that optimizer chooses it (CUDA with triton installed, or a test under
``TRITON_INTERPRET=1``). One pass over a chunk: it reads the parameters, the gradient, the two
bfloat16 moments and the two noise draws of their stochastic rounding, and writes the
parameters and the moments. The eager update makes about a dozen passes over float32
temporaries for the same numbers (``optim.eager_chunk_update``). The arithmetic is the
eager update's, in float32 and in the same order. A result can differ in its last bit where
the compiler fuses a multiply and an add that the eager ops round apart.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
"""Elements of one program."""


@triton.jit
def _round_stochastic(x, noise):
    # add the noise below bfloat16's last bit and keep the top 16 bits: exact in bfloat16
    bits = (x.to(tl.int32, bitcast=True) + noise) & -65536
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def _update(
    p_ptr, g_ptr, m_ptr, v_ptr, noise_m_ptr, noise_v_ptr, scale_ptr, n,
    beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, root_bc2, eps,
    HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    g = tl.load(g_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if HAS_SCALE:
        g = tl.div_rn(g, tl.load(scale_ptr))
    m = tl.load(m_ptr + offsets, mask=inside, other=0.0).to(tl.float32) * beta1 + one_minus_beta1 * g
    v = tl.load(v_ptr + offsets, mask=inside, other=0.0).to(tl.float32) * beta2 + one_minus_beta2 * (g * g)
    p = tl.load(p_ptr + offsets, mask=inside, other=0.0)
    # IEEE division and root (Triton's / and sqrt are approximate), as torch's ops round
    p += -step_size * tl.div_rn(m, tl.div_rn(tl.sqrt_rn(v), root_bc2) + eps)
    tl.store(p_ptr + offsets, p, mask=inside)
    noise_m = tl.load(noise_m_ptr + offsets, mask=inside, other=0)
    noise_v = tl.load(noise_v_ptr + offsets, mask=inside, other=0)
    tl.store(m_ptr + offsets, _round_stochastic(m, noise_m), mask=inside)
    tl.store(v_ptr + offsets, _round_stochastic(v, noise_v), mask=inside)


def chunk_update(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor],
    grad_scale: torch.Tensor | None, hyper: tuple[float, float, float, float, float],
) -> None:  # fmt: skip
    """Adam's update of one contiguous chunk in place: ``p`` float32, ``g`` its gradient, ``m``
    and ``v`` the bfloat16 moments, ``noise`` their rounding noise (int32 in ``[0, 2^16)``),
    ``grad_scale`` a divisor of ``g``, ``hyper = (beta1, beta2, step_size, root_bc2, eps)``."""
    beta1, beta2, step_size, root_bc2, eps = hyper
    n = p.numel()
    if n == 0:
        return
    scale = grad_scale if grad_scale is not None else p
    _update[(triton.cdiv(n, BLOCK),)](
        p, g, m, v, noise[0], noise[1], scale, n,
        beta1, 1 - beta1, beta2, 1 - beta2, step_size, root_bc2, eps,
        HAS_SCALE=grad_scale is not None, BLOCK=BLOCK,
    )  # fmt: skip
