"""How close a weight's gradient under bfloat16 autocast is to the exact product of the operands
the matmul read (both rounded to bfloat16): autocast's own matmul (a bfloat16 gradient,
widened) against :func:`crosslens.kernels.weight_grads.weight_matmul` (written in float32).
One encoder-sized matmul at Ge et al.'s d_in, 2,048 tokens, on the CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/weight_grad_precision.py
"""

from __future__ import annotations

import torch

from crosslens.kernels.weight_grads import weight_matmul


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    x_NK = torch.randn(2048, 768, generator=gen)
    W_KM = (torch.randn(768, 4096, generator=gen) * 0.02).requires_grad_()
    grad_NM = torch.randn(2048, 4096, generator=gen).bfloat16()
    exact_KM = x_NK.bfloat16().double().T @ grad_NM.double()
    for name, matmul in (
        ("autocast's matmul", lambda: x_NK @ W_KM),
        ("weight_matmul", lambda: weight_matmul(x_NK, W_KM)),
    ):
        W_KM.grad = None
        with torch.autocast("cpu", torch.bfloat16):
            out_NM = matmul()
        out_NM.backward(grad_NM)
        error = ((W_KM.grad.double() - exact_KM).norm() / exact_KM.norm()).item()
        print(f"{name:17s} relative error of W's gradient to the exact product: {error:.2e}")


if __name__ == "__main__":
    main()
