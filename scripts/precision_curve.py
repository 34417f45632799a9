"""The loss curve of float32 against bfloat16 autocast (and against bfloat16 Adam moments) on a
small planted shape on the CPU: what a user gives up with the cheaper precisions.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/precision_curve.py            # 300 steps, seconds
"""

from __future__ import annotations

import argparse

import torch

import crosslens.crosscoders as cc
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig

S, D, F, B, N_TRUE = 4, 32, 256, 256, 64


def batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    directions = torch.randn(N_TRUE, S, D, generator=g)
    directions = directions / directions.norm(dim=-1, keepdim=True) * D**0.5 / 3
    return [torch.einsum("bf,fsd->bsd", torch.rand(B, N_TRUE, generator=g) * (torch.rand(B, N_TRUE, generator=g) < 0.1), directions)
            for _ in range(n)]  # fmt: skip


def curve(arch: str, steps: int, **kw) -> list[float]:
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    torch.manual_seed(0)
    sae = train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S))
    trainer = CrosscoderTrainer(sae, CrosscoderTrainerConfig(total_steps=steps, lr=1e-3, activation_scale_check="off", **kw))
    return [trainer.step(x).loss.item() for x in batches(steps)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    torch.set_num_threads(1)  # same bytes whatever the machine's core count
    for arch in ("crosscoder", "jumprelu_crosscoder"):
        ref = curve(arch, a.steps)
        for label, kw in (("bf16 autocast", {"autocast_dtype": "bfloat16"}), ("bf16 Adam state", {"optimizer_state_dtype": "bfloat16"})):
            low = curve(arch, a.steps, **kw)
            tail = slice(a.steps * 9 // 10, None)
            mean = lambda xs: sum(xs[tail]) / len(xs[tail])  # noqa: E731
            worst = max(abs(b - r) / r for r, b in zip(ref, low))
            print(f"{arch:20s} {label:16s} loss {ref[0]:.4f} -> last-10% mean fp32 {mean(ref):.4f}, {label} {mean(low):.4f} "
                  f"({mean(low) / mean(ref) - 1:+.2%}); worst step {worst:.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
