"""The CPU facts the training step is built on (mostly the JumpReLU step's), each as a ratio against its alternative measured in the same run.

1. Elementwise choices on an ``[8192, 512]`` (token, feature) matrix: ``torch.tanh``
   against ``2 * sigmoid(2x) - 1``; a bool mask's ``sum(dim)`` and
   ``count_nonzero(dim)`` and a sum of its bytes as int32 against reading them as 64-bit words
   (``crosslens.core.tensors.row_counts``);
   ``torch.where(mask, x, 0)``, ``masked_fill`` and ``x * mask_values(mask)`` against
   ``x * mask``, each written into an existing tensor, which times the op itself (a fresh 16 MiB
   output's page faults, section 3, can cost more than the op and vary with what the allocator
   reuses); a bool mask converted to float32 through its bytes (``mask_values``) and as it is.
2. The two ``[F, B] @ [B, S*D]`` matmuls of the JumpReLU backward (W_dec's gradient and
   the threshold window) against one stacked ``[2F, B]`` matmul.
3. Minor page faults and system time per training step of the reference, the ReLU and
   the JumpReLU crosscoder (glibc returns large freed blocks to the kernel, so a step's
   large temporaries are faulted in afresh; run it again with
   ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296`` to see them go).
2b/2c. The encoder matmul writing h feature-major against token-major plus a transposed
   copy; the code's gradient and the window's sums from S per-snapshot products in blocks of
   features (the plan's ``code_grad_block_elements``) against the same products over every
   feature at once, and against two matmuls.
4. The JumpReLU step at initialisation with the padded rows worked in blocks of 2^17,
   2^19 (the default, the plan's ``row_block_elements``) and 2^21 elements.
5. With ``--profile``: ``torch.profiler``'s costliest operators of that step.
6. A micro-batched JumpReLU step's gradient-free pass for one micro-batch: the score sums alone
   (``jumprelu_pairs.snapshot_score_sums``) against the training pass's encode and gated decode.
7. ``--optimizer-state bfloat16``'s update of one 4 M-element chunk
   (``adam.eager_chunk_update``): its rounding noise drawn from a counter in cache-sized blocks
   (``adam.rounding_noise``) against the same update with the noise drawn by ``torch.randint``.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_ops.py
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from train import crosslens_step_fn, reference_step_fn, time_alternating

from crosslens.core.tensors import mask_values, row_counts
from crosslens.crosscoders import JumpReLUTrainingCrosscoder, JumpReLUTrainingCrosscoderConfig
from crosslens.kernels import jumprelu_ops
from crosslens.kernels.jumprelu_pairs import snapshot_score_sums
from crosslens.kernels.plan import KernelPlan


def ratio_rows(title: str, fns: dict, rounds: int) -> None:
    """Median ms of each function and its time relative to the first (the baseline)."""
    times = time_alternating(fns, rounds=rounds, warmup=2)
    base = next(iter(times.values()))
    print(f"\n{title}")
    for name, seconds in times.items():
        print(f"   {name:<42}{seconds * 1e3:8.2f} ms   {seconds / base:6.2f}x the first")


def faults_per_step(step, x: torch.Tensor, n: int = 5) -> tuple[float, float, float]:
    for _ in range(2):
        step(x)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(n):
        step(x)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return wall / n * 1e3, (after.ru_minflt - before.ru_minflt) / n, (after.ru_stime - before.ru_stime) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--profile", action="store_true", help="also print the JumpReLU step's costliest operators")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    elementwise_rows(args.rounds)
    x_BSD = step_rows(args)
    gradient_free_pass(x_BSD[: x_BSD.shape[0] // 8], args.rounds)
    bfloat16_state_chunk(args.rounds)


def elementwise_rows(rounds: int) -> None:
    """1 and 2: the elementwise ops and matmuls the JumpReLU step is made of, each way."""
    F_, N, S, D = 8192, 512, 8, 128
    x_FN = torch.randn(F_, N)
    mask_FN = torch.rand(F_, N) < 0.3

    out_FN = torch.empty_like(x_FN)  # written in place: the op itself, without a fresh output's page faults
    ratio_rows(
        "1a. tanh of [8192, 512], into an existing tensor",
        {
            "2 * sigmoid(2x) - 1 (the 2 folded in a scale)": lambda: torch.sigmoid(x_FN, out=out_FN).mul_(2).sub_(1),
            "torch.tanh": lambda: torch.tanh(x_FN, out=out_FN),
        },
        rounds,
    )
    ratio_rows(
        "1b. true entries per row of a bool [8192, 512]",
        {
            "row_counts (bytes read as 64-bit words)": lambda: row_counts(mask_FN),
            "bytes summed as int32": lambda: mask_FN.view(torch.uint8).sum(dim=1, dtype=torch.int32),
            "mask.sum(dim=1)": lambda: mask_FN.sum(dim=1),
            "torch.count_nonzero(mask, dim=1)": lambda: torch.count_nonzero(mask_FN, dim=1),
        },
        rounds,
    )
    values_FN = mask_values(mask_FN, x_FN.dtype)
    ratio_rows(
        "1c. zero a float [8192, 512] outside a mask, into an existing tensor",
        {
            "x * mask": lambda: torch.mul(x_FN, mask_FN, out=out_FN),
            "x * mask_values(mask)": lambda: torch.mul(x_FN, values_FN, out=out_FN),
            "torch.where(mask, x, 0)": lambda: torch.where(mask_FN, x_FN, torch.zeros(()), out=out_FN),
            "masked_fill_(~mask, 0)": lambda: out_FN.masked_fill_(~mask_FN, 0.0),
        },
        rounds,
    )
    ratio_rows(
        "1d. a bool [8192, 512] as float32 (a fresh tensor)",
        {
            "mask_values (its bytes converted)": lambda: mask_values(mask_FN, torch.float32),
            "mask.to(torch.float32)": lambda: mask_FN.to(torch.float32),
        },
        rounds,
    )
    lhs_a, lhs_b, grad = torch.randn(F_, N), torch.randn(F_, N), torch.randn(N, S * D)
    stacked = torch.cat([lhs_a, lhs_b])
    ratio_rows(
        "2. W_dec's gradient and the window sum: [8192, 512] @ [512, 1024] twice",
        {
            "two matmuls": lambda: (lhs_a @ grad, lhs_b @ grad),
            "one stacked [16384, 512] matmul": lambda: stacked @ grad,
        },
        rounds,
    )

    x_NX, W_XF, b_F = torch.randn(N, S * D), torch.randn(S * D, F_), torch.randn(F_)
    ratio_rows(
        "2b. the encoder matmul, h wanted feature-major ([8192, 512] contiguous)",
        {
            "addmm writing [F, N]": lambda: torch.addmm(b_F[:, None], W_XF.T, x_NX.T),
            "addmm writing [N, F], then a transposed copy": lambda: torch.addmm(b_F, x_NX, W_XF).T.contiguous(),
        },
        rounds,
    )
    W_FSD, mask_f = torch.randn(F_, S, D), mask_FN.float()
    block_rows = KernelPlan.resolve("cpu").code_grad_block_elements // N  # the default's blocks

    def two_matmuls() -> None:  # the code's gradient, then the window's sums over tokens, dotted with W_dec
        W_FSD.view(F_, -1) @ grad.T
        ((mask_f @ grad).view(F_, S, D) * W_FSD).sum(dim=-1)

    ratio_rows(
        "2c. the code's gradient and the threshold window's decoder sums",
        {
            "per-snapshot products, blocks of features": lambda: jumprelu_ops.code_grad_and_window_sums(
                W_FSD, grad, lambda s, rows: mask_f[rows], block_rows
            ),
            "per-snapshot products, every feature at once": lambda: jumprelu_ops.code_grad_and_window_sums(
                W_FSD, grad, lambda s, rows: mask_f[rows], F_
            ),
            "two matmuls, then a dot with W_dec": two_matmuls,
        },
        rounds,
    )


def step_rows(args: argparse.Namespace) -> torch.Tensor:
    """3 and 4 (and 5 with ``--profile``): whole training steps; returns their batch."""
    F_, N, S, D = 8192, 512, 8, 128
    x_BSD = torch.randn(N, S, D)
    print("\n3. one training step (B 512, S 8, D 128, F 8192): wall ms, minor page faults, system ms")
    steps = {
        "reference": reference_step_fn(S, D, F_),
        "crosscoder (ReLU)": crosslens_step_fn("crosscoder", S, D, F_, 32),
        "jumprelu_crosscoder": crosslens_step_fn("jumprelu_crosscoder", S, D, F_, 32),
    }
    for name, step in steps.items():
        wall, faults, system = faults_per_step(step, x_BSD)
        print(f"   {name:<24}{wall:8.1f} ms {faults:10.0f} faults {system:8.1f} ms system")

    default = KernelPlan.resolve("cpu").row_block_elements

    def with_block(elements: int):
        plan = KernelPlan.resolve("cpu", row_block_elements=elements)
        step = crosslens_step_fn("jumprelu_crosscoder", S, D, F_, 32, plan=plan)
        return lambda: step(x_BSD)

    ratio_rows(
        "4. JumpReLU step at initialisation, padded rows in blocks of",
        {f"2^{e} elements" + (" (default)" if 1 << e == default else ""): with_block(1 << e) for e in (19, 17, 21)},
        max(3, args.rounds // 2),
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(3):
                steps["jumprelu_crosscoder"](x_BSD)
        print("\n5. torch.profiler, three JumpReLU steps at initialisation (times include the profiler's own)")
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30))
    return x_BSD


def gradient_free_pass(x_bSD: torch.Tensor, rounds: int) -> None:
    """6: what a micro-batched JumpReLU step's gradient-free pass does for one micro-batch (its
    whole-batch p needs the score sums alone), against the training pass's encode, gated decode
    and scores that it ran before; a fresh crosscoder, both without gradient."""
    S, D = x_bSD.shape[1:]
    torch.manual_seed(0)
    sae = JumpReLUTrainingCrosscoder(JumpReLUTrainingCrosscoderConfig(d_in=D, d_sae=8192, n_snapshots=S))
    tanh_scale = sae.cfg.jumprelu_tanh_scale

    def scores_alone() -> None:
        h_NF = sae.hidden_pre(x_bSD)
        snapshot_score_sums(h_NF, sae.snapshot_norms(), sae.threshold, tanh_scale=tanh_scale)

    with torch.no_grad():
        ratio_rows(
            f"6. a micro-batched JumpReLU step's gradient-free pass, one micro-batch of {x_bSD.shape[0]} tokens",
            {
                "encode, gated decode (_training_encode)": lambda: sae._training_encode(x_bSD),
                "encode, scores (snapshot_score_sums)": scores_alone,
            },
            rounds,
        )


def bfloat16_state_chunk(rounds: int) -> None:
    """7: one chunk of the bfloat16-state Adam update, its noise drawn from a counter (what the
    optimizer runs) against the same arithmetic with the noise drawn by ``torch.randint``."""
    from crosslens.kernels import adam
    from crosslens.training.memory import CHUNK

    g = torch.Generator().manual_seed(0)
    p, grad = torch.randn(CHUNK, generator=g), torch.randn(CHUNK, generator=g) * 1e-3
    m, v = torch.zeros(CHUNK, dtype=torch.bfloat16), torch.zeros(CHUNK, dtype=torch.bfloat16)
    hyper = (0.9, 0.999, 1e-3, 0.1, 1e-8)

    def drawn_by_randint() -> None:
        noise = [torch.randint(0, 1 << 16, (CHUNK,), dtype=torch.int32, generator=g) for _ in range(2)]
        m_new, v_new = m.float(), v.float()
        adam.eager_update(p, grad, m_new, v_new, None, hyper)
        m.copy_(adam.round_stochastic(m_new, noise[0]))
        v.copy_(adam.round_stochastic(v_new, noise[1]))

    ratio_rows(
        f"7. the bfloat16-state Adam update of one {CHUNK:,}-element chunk",
        {
            "noise from torch.randint": drawn_by_randint,
            "noise from the counter (eager_chunk_update)": lambda: adam.eager_chunk_update(
                p, grad, m, v, adam.noise_key(0, 1, 0), 0, None, hyper
            ),
        },
        rounds,
    )


if __name__ == "__main__":
    main()
