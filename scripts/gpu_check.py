"""Crosscoder training on a CUDA device: same results as on CPU, throughput, peak memory
against ``crosslens plan``'s prediction.

    python scripts/gpu_check.py [--steps 20]

1. Every architecture trains 20 steps from the same initial weights on the same batches on
   CPU and on CUDA (float32, TF32 off); prints the largest weight difference.
2. Tokens/s and peak memory of one training step at a demo-like shape and at Ge et al.'s
   (32 snapshots, d_in 768, d_sae 24,576, batch 2048; compare with ``crosslens plan``).
3. The Ge et al. shape again under bfloat16 autocast.
Run it on a machine with a GPU; it exits with a message where there is none.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def build(arch: str, S: int, D: int, F: int, device: str):
    from crosslens.architectures import defaults_for
    from crosslens.training.factory import build_training_crosscoder

    torch.manual_seed(0)
    return build_training_crosscoder(
        arch,
        d_in=D,
        n_snapshots=S,
        d_sae=F,
        k=32,
        sparsity_coefficient=defaults_for(arch).sparsity_coefficient,
        sparsity_warm_up_steps=0,  # lambda whole, a constant lr and no resampling: the devices alone differ
        device=device,
    )


def batches(n: int, B: int, S: int, D: int, device: str):
    for step in range(n):
        gen = torch.Generator().manual_seed(step)
        yield torch.randn(B, S, D, generator=gen).to(device)


def train(arch: str, device: str, steps: int, S: int, D: int, F: int, B: int):
    from crosslens.training.config import CrosscoderTrainerConfig
    from crosslens.training.trainer import CrosscoderTrainer

    sae = build(arch, S, D, F, "cpu").to(device)
    cfg = CrosscoderTrainerConfig(total_steps=steps, lr=1e-4, lr_decay_steps=0, resample_dead=0, device=device, seed=0)
    trainer = CrosscoderTrainer(sae, cfg)
    trainer.fit(batches(steps, B, S, D, device))
    return {k: v.detach().double().cpu() for k, v in trainer.sae.state_dict().items()}


def parity(steps: int) -> None:
    print(f"1. CPU vs CUDA, {steps} steps, S=8 D=64 F=1024 B=256, float32 (TF32 off)")
    for arch in ("crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"):
        cpu = train(arch, "cpu", steps, 8, 64, 1024, 256)
        gpu = train(arch, "cuda", steps, 8, 64, 1024, 256)
        diff = max((cpu[k] - gpu[k]).abs().max().item() for k in cpu)
        print(f"   {arch:22s} max |W_cpu - W_cuda| = {diff:.2e}")


def throughput(label: str, arch: str, S: int, D: int, F: int, B: int, n: int = 10, autocast: str | None = None) -> None:
    from crosslens.checkpoints import ModelShape  # noqa: F401
    from crosslens.training.config import CrosscoderTrainerConfig
    from crosslens.training.sizing import PlanConfig, make_plan  # noqa: F401
    from crosslens.training.trainer import CrosscoderTrainer

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    sae = build(arch, S, D, F, "cuda")
    cfg = CrosscoderTrainerConfig(
        total_steps=n + 3, lr=1e-4, lr_decay_steps=0, resample_dead=0, device="cuda", seed=0, autocast_dtype=autocast
    )
    trainer = CrosscoderTrainer(sae, cfg)
    data = list(batches(2, B, S, D, "cuda"))
    for i in range(3):
        trainer.step(data[i % 2])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(n):
        trainer.step(data[i % 2])
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / n
    peak = torch.cuda.max_memory_allocated() / 2**30
    flops = 6 * B * S * D * F  # encoder + dense decoder, forward and backward
    label = f"{label}{' bf16' if autocast else ''}"
    print(
        f"   {label:15s} {arch:22s} {B / step_s:12,.0f} tokens/s  {step_s * 1e3:8.1f} ms/step  "
        f"{flops / step_s / 1e12:6.1f} TFLOP/s (dense-equivalent)  peak {peak:6.2f} GiB"
    )
    del trainer, sae, data


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here; run this where one is.")
        return 1
    # true float32 for the parity check: no TF32 in matmuls (torch's setter) or in cuDNN (its scoped flags)
    torch.set_float32_matmul_precision("highest")
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        return measure(args.steps)


def measure(steps: int) -> int:
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    parity(steps)
    print("2. one training step, float32 weights")
    for arch in ("crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder"):
        throughput("demo-like", arch, 8, 128, 16384, 1024)
    for arch in ("jumprelu_crosscoder", "crosscoder"):
        throughput("Ge et al.", arch, 32, 768, 24576, 2048)
    print("3. the same steps under --autocast bfloat16 (parameters and Adam stay float32)")
    for arch in ("jumprelu_crosscoder", "crosscoder"):
        throughput("Ge et al.", arch, 32, 768, 24576, 2048, autocast="bfloat16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
