"""The loss curve of float32 against bfloat16 autocast (and against bfloat16 Adam moments) on a
small planted shape on the CPU: what a user gives up with the cheaper precisions. Each row is
the mean and the spread (smallest to largest) over crosscoder initialisations.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/precision_curve.py            # 300 steps, 3 seeds, minutes
"""

from __future__ import annotations

import argparse

import torch

import crosslens.crosscoders as cc
from crosslens.architectures import SPARSITY_FIELDS
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig

S, D, F, B, N_TRUE = 4, 32, 256, 256, 64


def batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    directions = torch.randn(N_TRUE, S, D, generator=g)
    directions = directions / directions.norm(dim=-1, keepdim=True) * D**0.5 / 3
    return [
        torch.einsum(
            "bf,fsd->bsd", torch.rand(B, N_TRUE, generator=g) * (torch.rand(B, N_TRUE, generator=g) < 0.1), directions
        )
        for _ in range(n)
    ]


def curve(arch: str, steps: int, seed: int, **kw) -> list[float]:
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    torch.manual_seed(seed)
    # lambda whole from the first step, a constant lr and no resampling: the precisions alone differ
    sae = train_cls(train_cfg_cls(d_in=D, d_sae=F, n_snapshots=S, **{SPARSITY_FIELDS[arch][1]: 0}))
    fixed = dict(lr=1e-3, lr_decay_steps=0, resample_dead=0)
    trainer = CrosscoderTrainer(
        sae, CrosscoderTrainerConfig(total_steps=steps, activation_scale_check="off", **fixed, **kw)
    )
    return [trainer.step(x).loss.item() for x in batches(steps)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3, help="crosscoder initialisations (seeds 0..N-1)")
    a = p.parse_args()
    torch.set_num_threads(1)  # same bytes whatever the machine's core count
    tail = slice(a.steps * 9 // 10, None)

    def mean(xs: list[float]) -> float:
        return sum(xs[tail]) / len(xs[tail])

    def spread(values: list[float]) -> str:
        return f"{sum(values) / len(values):+.2%} [{min(values):+.2%}, {max(values):+.2%}]"

    for arch in ("crosscoder", "jumprelu_crosscoder"):
        refs = [curve(arch, a.steps, seed) for seed in range(a.seeds)]
        for label, kw in (
            ("bf16 autocast", {"autocast_dtype": "bfloat16"}),
            ("bf16 Adam state", {"optimizer_state_dtype": "bfloat16"}),
        ):
            ends, worsts = [], []
            for seed, ref in enumerate(refs):
                low = curve(arch, a.steps, seed, **kw)
                ends.append(mean(low) / mean(ref) - 1)
                worsts.append(max(abs(b - r) / r for r, b in zip(ref, low)))
            print(
                f"{arch:20s} {label:16s} last-10% mean loss against fp32 {spread(ends)}; "
                f"worst step {spread(worsts).replace('+', '')}  ({a.seeds} seeds)"
            )


if __name__ == "__main__":
    main()
