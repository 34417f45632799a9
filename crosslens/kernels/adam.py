"""The pass of crosslens's Adam over one parameter, in torch ops, and the choice between it and
its Triton twin (:mod:`crosslens.kernels.triton_adam`).

:func:`eager_update` is Adam's update of a parameter with float32 moments, :func:`eager_chunk_update`
of a chunk of one with bfloat16 moments, stored with stochastic rounding: bfloat16 has 8
significant bits, so a plain round-to-nearest of ``0.999 * v`` returns ``v`` and the second moment
would never decay. The rounding noise is a function of the run's seed, the step, the parameter and
the element (:func:`rounding_noise`, SplitMix64 over a counter), so the Triton kernel draws it in
registers rather than reading two noise tensors written beforehand (16 of the pass's 38 bytes an
element), and a run and its resume give the same bytes with nothing saved but the seed. Each can
also write the new parameter rounded (the copy the next step's autocast matmuls read) and the norms
of its rows (which every sparsity term of the next step reads): what the trainer's optimizers
(:mod:`crosslens.training.optim`) hand the next step (:mod:`crosslens.kernels.step_weights`).

:func:`adam_update` picks the implementation the plan's ``adam_backend`` names.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int

from crosslens.kernels.plan import KernelPlan


def row_norms_of_the_pass(plan: KernelPlan) -> Any:
    """How the optimizer's pass sums the row norms it writes, for a step that finds none written
    to sum them the same way (:attr:`~crosslens.kernels.step_weights.StepWeights.norms_of`):
    the Triton kernel's order where the pass is the kernel, else None
    (``torch.linalg.vector_norm``, the eager pass's)."""
    if plan.adam_backend != "triton":
        return None
    from crosslens.kernels import triton_adam  # triton is needed only where it runs

    return triton_adam.row_norms


Hyper = tuple[float, float, float, float, float]
"""``(beta1, beta2, step_size, root_bc2, eps)``: one step's Adam constants,
``step_size = lr / (1 - beta1^t)`` and ``root_bc2 = sqrt(1 - beta2^t)``."""


MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
"""SplitMix64's increment (2^64 over the golden ratio, odd): its counter's step."""
MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
"""SplitMix64's two multipliers; its shifts are 30, 27 and 31."""


def _mix64(z: int) -> int:
    """SplitMix64's finaliser of one 64-bit value, in Python's integers."""
    z = ((z ^ (z >> 30)) * MIX[0]) & MASK64
    z = ((z ^ (z >> 27)) * MIX[1]) & MASK64
    return z ^ (z >> 31)


def _as_int64(x: int) -> int:
    """A 64-bit pattern as the signed integer that torch's int64 and a kernel's argument hold."""
    return x - (1 << 64) if x >> 63 else x


def noise_key(seed: int, step: int, index: int) -> int:
    """The key of the rounding noise of parameter ``index`` (its place among the optimizer's
    parameters) at Adam step ``step`` of a run seeded ``seed``, as a signed 64-bit integer. Each
    part goes into a bijective mix of the parts before it, so keys whose earlier parts agree never
    meet; others meet only where two 64-bit mixes differ by exactly the XOR of their later parts
    (for two seeds over a million steps, a chance of about 2^-44)."""
    z = seed & MASK64
    for part in (step, index):
        z = _mix64(((_mix64(z) ^ (part & MASK64)) + GOLDEN) & MASK64)
    return _as_int64(z)


def rounding_noise(
    key: int, start: int, n: int, device: torch.device | str = "cpu", block: int = 1 << 16
) -> tuple[Int[torch.Tensor, " n"], Int[torch.Tensor, " n"]]:
    """The rounding noise of elements ``start .. start + n`` of one parameter, drawn with
    ``key`` (:func:`noise_key`): int32 in ``[0, 2^16)``, one tensor for each moment, the part
    below bfloat16's last bit that :func:`round_stochastic` adds before truncating. Element ``e``
    takes SplitMix64's output for counter ``key + (e + 1) * GOLDEN`` (the generator's ``e``-th
    draw), the first moment its bits 32-47, the second its bits 48-63; int64 arithmetic wraps as
    the unsigned arithmetic does, so these are the Triton kernel's draws to the bit
    (:func:`crosslens.kernels.triton_adam.noise`). On a CPU ``block`` elements are mixed at a
    time (the plan's ``noise_block``: its two int64 buffers stay in cache through the dozen
    passes); an accelerator mixes a chunk whole (a block would cost a dozen launches)."""
    block = block if torch.device(device).type == "cpu" else max(n, 1)
    noise_m, noise_v = (torch.empty(n, dtype=torch.int32, device=device) for _ in range(2))
    z_all, scratch_all = (torch.empty(min(n, block), dtype=torch.int64, device=device) for _ in range(2))
    for first in range(0, n, block):
        size = min(block, n - first)
        z, scratch = z_all[:size], scratch_all[:size]
        torch.arange(start + first + 1, start + first + size + 1, out=z)
        z.mul_(_as_int64(GOLDEN)).add_(key)
        for bits, factor in ((30, MIX[0]), (27, MIX[1]), (31, None)):
            # z ^= z >> bits, the shift unsigned (torch's copies the sign bit, hence the mask)
            torch.bitwise_right_shift(z, bits, out=scratch).bitwise_and_((1 << (64 - bits)) - 1)
            z.bitwise_xor_(scratch)
            if factor is not None:
                z.mul_(_as_int64(factor))
        z.bitwise_right_shift_(32)  # bits 32-63 at the bottom (the sign's copies above them are masked off)
        noise_m[first : first + size] = torch.bitwise_and(z, 0xFFFF, out=scratch)
        noise_v[first : first + size] = z.bitwise_right_shift_(16).bitwise_and_(0xFFFF)
    return noise_m, noise_v


def round_stochastic(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) rounded to bfloat16 down, or up where the ``noise`` carries it over:
    with uniform noise (:func:`rounding_noise`), up in proportion to the distance from the lower neighbour,
    so unbiased, and small repeated updates survive on average."""
    bits = (x.contiguous().view(torch.int32) + noise) & -65536  # keep the top 16 bits
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: the low bits are zero


def eager_update(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad_scale: torch.Tensor | None,
    hyper: Hyper,
    copy: torch.Tensor | None = None,
    norms: torch.Tensor | None = None,
) -> None:
    """Adam's update of one parameter in place: ``p``, ``m`` and ``v`` float32, ``g`` its
    gradient, ``grad_scale`` a divisor of ``g``; ``copy`` receives the new ``p`` rounded to its
    dtype, ``norms`` the norms of its rows along the last dimension. The twin of
    :func:`crosslens.kernels.triton_adam.update`."""
    beta1, beta2, step_size, root_bc2, eps = hyper
    g = g.float() if grad_scale is None else g.float() / grad_scale
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    p.addcdiv_(m, v.sqrt().div_(root_bc2).add_(eps), value=-step_size)
    if copy is not None:
        copy.copy_(p)
    if norms is not None:
        torch.linalg.vector_norm(p, dim=-1, out=norms)


def eager_chunk_update(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    key: int,
    start: int,
    grad_scale: torch.Tensor | None,
    hyper: Hyper,
    copy: torch.Tensor | None = None,
    noise_block: int = 1 << 16,
) -> None:
    """Adam's update of one chunk in place, in float32 temporaries: ``p`` float32, ``g`` its
    gradient, ``m`` and ``v`` the bfloat16 moments, stored with the rounding noise of ``key``
    (:func:`noise_key`) at the chunk's elements (it starts at element ``start`` of its
    parameter), ``grad_scale`` a divisor of ``g``; ``copy`` receives the new ``p`` rounded. The
    twin of :func:`crosslens.kernels.triton_adam.chunk_update`."""
    noise_m, noise_v = rounding_noise(
        key, start, p.numel(), p.device, noise_block
    )  # drawn first: fewer temporaries at once
    m_new, v_new = m.float(), v.float()
    eager_update(p, g, m_new, v_new, grad_scale, hyper, copy)
    m.copy_(round_stochastic(m_new, noise_m))
    v.copy_(round_stochastic(v_new, noise_v))


def adam_update(plan: KernelPlan, *, chunked: bool) -> Any:
    """The update the plan's ``adam_backend`` names: the Triton kernel's wrapper, else its eager
    twin; ``chunked``: for bfloat16 moments, a chunk at a time (:func:`eager_chunk_update`'s
    signature), else float32 moments (:func:`eager_update`'s)."""
    if plan.adam_backend == "triton":
        from crosslens.kernels import triton_adam  # triton is needed only where it runs

        return triton_adam.chunk_update if chunked else triton_adam.update
    return eager_chunk_update if chunked else eager_update
