"""Training throughput of the crosscoder architectures, measured against baselines taken
in the same run on the same machine.

1. Tokens/s of one ``CrosscoderTrainer.step`` per architecture, against a plain dense
   einsum ReLU crosscoder with the same shapes, loss, Adam and gradient clipping.
   Goal: the dense path (ReLU crosscoder) >= 0.9x the reference; JumpReLU >= 0.8x.
2. Achieved FLOP/s of each training step (10 * B * S * D * F FLOPs for a dense step:
   encode forward and weight gradient, decode forward, input and weight gradients) as a
   fraction of a plain ``[B, S*D] @ [S*D, F]`` matmul's FLOP/s.
3. TopK decode of only the active features (embedding_bag gather) against the dense
   decode, forward + backward, and the whole TopK/BatchTopK step both ways.
   Goal: sparse decode >= 2x at d_sae >= 8192, k <= 64. Then the decode with the decoder
   norms' gradient through ``embedding_bag`` (a CPU's TopK step) against the eager twin of
   the pairs' kernels (``sparse.gather_decode_and_norms``), which is why a CPU keeps
   the former. Then TopK's auxiliary decode of 5% dead features: as pairs, against the matmul
   over the dead rows that the step runs.
4. With ``--compile``: the JumpReLU step with its gate/score kernels and its loss through
   ``torch.compile`` (a plan with ``compile=True``), and the reference with its loss through
   ``torch.compile``, both against the eager reference.
   Goal: JumpReLU >= 0.8x the reference.
5. With ``--trained RUN_DIR`` (a JumpReLU run, e.g. the demo's
   ``~/.cache/crosslens/demo/crosscoder``): the JumpReLU step at that trained crosscoder's
   weights and shapes, on batches of its own activation store, against the reference at
   the same shapes. Section 1 times a freshly initialised crosscoder, whose gates are open
   for about 30% of (token, feature) pairs at every snapshot; a trained one's are sparse
   and differ between snapshots, which is what the gated decode's cost depends on.
6. With ``--micro-batches N``: each architecture's step with its batch trained in N
   micro-batches against the same step in one batch, timed alternately (the ratio is what
   splitting the batch costs; the weight gradients of the micro-batches are summed once, after
   the last, ``crosslens.kernels.weight_grads.deferred_weight_grads``).

Timings alternate between the compared variants and report medians, so a noisy shared
machine biases neither side. Section 1's ratio is the median over rounds of each round's ratio
of its two adjacent timings, with their range beside it: what the machine's drift leaves.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train.py            # d_in 128, S 8, F 8192, B 512
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train.py --quick    # small shapes, seconds
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train.py --only jumprelu --compile
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train.py --only jumprelu --trained ~/.cache/crosslens/demo/crosscoder
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train.py --only crosscoder --micro-batches 8
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import crosslens.crosscoders as cc
from crosslens.architectures import SPARSITY_FIELDS
from crosslens.core.metadata import TRAINING_DETAILS_KEY, WEIGHTS_NAME
from crosslens.core.tensors import row_norms
from crosslens.kernels import sparse
from crosslens.kernels.active_pairs import ActivePairs
from crosslens.kernels.plan import KernelPlan
from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig


class ReferenceCrosscoder(nn.Module):
    """The ReLU crosscoder written plainly with einsums: the baseline."""

    def __init__(self, S: int, D: int, F_: int, l1: float):
        super().__init__()
        W_dec = torch.randn(F_, S, D)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * 0.08
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.permute(1, 2, 0).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(F_))
        self.b_dec = nn.Parameter(torch.zeros(S, D))
        self.l1 = l1

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(torch.einsum("bsd,sdf->bf", x, self.W_enc) + self.b_enc)
        x_hat = torch.einsum("bf,fsd->bsd", f, self.W_dec) + self.b_dec
        mse = (x_hat - x).pow(2).sum(dim=(1, 2)).mean()
        return mse + self.l1 * (f * self.W_dec.norm(dim=-1).sum(dim=1)).sum(dim=1).mean()


def reference_step_fn(S: int, D: int, F_: int, compile: bool = False) -> Callable[[torch.Tensor], None]:
    model = ReferenceCrosscoder(S, D, F_, l1=2.0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-5, fused=True)  # as CrosscoderTrainer on a CPU
    loss_fn = torch.compile(model.loss) if compile else model.loss

    def step(x: torch.Tensor) -> None:
        loss_fn(x).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


CPU_PLAN = KernelPlan.resolve("cpu")
PER_SNAPSHOT_KERNEL = KernelPlan.resolve("cpu", gather_share=-1.0)
"""JumpReLU's gated decode turned off: the [S, N, F] kernel it replaced (which it still falls
back to when many gates are mixed)."""


def crosslens_step_fn(
    arch: str, S: int, D: int, F_: int, k: int, micro_batches: int = 1, plan: KernelPlan = CPU_PLAN
) -> Callable[[torch.Tensor], None]:
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES[arch]
    extra = {"k": k} if "topk" in arch else {}
    # a run's steady state: lambda whole (no warm-up) and no resampling
    sae = train_cls(train_cfg_cls(d_in=D, d_sae=F_, n_snapshots=S, **extra, **{SPARSITY_FIELDS[arch][1]: 0}))
    cfg = CrosscoderTrainerConfig(total_steps=10**9, lr=5e-5, micro_batches=micro_batches, resample_dead=0)
    trainer = CrosscoderTrainer(sae, cfg, plan=plan)
    return lambda x: trainer.step(x)


def time_rounds(fns: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, calls interleaved round by round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def time_alternating(fns: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round by round."""
    return {name: statistics.median(s) for name, s in time_rounds(fns, rounds, warmup).items()}


def matmul_flops_per_s(B: int, K: int, N: int, rounds: int) -> float:
    a, b = torch.randn(B, K), torch.randn(K, N)
    t = time_alternating({"mm": lambda: a @ b}, rounds=rounds, warmup=2)["mm"]
    return 2 * B * K * N / t


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--n-snapshots", type=int, default=8)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="d_in 32, S 4, d_sae 2048, batch 256")
    parser.add_argument("--only", default="", help="run only the architectures whose label contains this")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (4.)")
    parser.add_argument("--trained", default=None, help="a trained JumpReLU run folder to time at (5.)")
    parser.add_argument("--micro-batches", type=int, default=0, help="also time each step in N micro-batches (6.)")
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.n_snapshots, args.d_sae, args.batch = 32, 4, 2048, 256
    return args


VARIANTS = {
    "crosscoder": CPU_PLAN,
    "jumprelu_crosscoder": CPU_PLAN,
    "jumprelu_crosscoder (per-snapshot kernel)": PER_SNAPSHOT_KERNEL,
    "topk_crosscoder (dense decode)": KernelPlan.resolve("cpu", topk_sparse_decode=False),
    "topk_crosscoder (sparse decode)": KernelPlan.resolve("cpu", topk_sparse_decode=True),
    "batchtopk_crosscoder (dense)": KernelPlan.resolve("cpu", topk_sparse_decode=False),
    "batchtopk_crosscoder (sparse)": KernelPlan.resolve("cpu", topk_sparse_decode=True),
}
"""Section 1's rows: each architecture's step with the plan it runs."""


def main() -> None:
    args = parse_args()
    S, D, F_, B, k = args.n_snapshots, args.d_in, args.d_sae, args.batch, args.k
    torch.manual_seed(0)
    x = torch.randn(B, S, D)
    print(
        f"shapes: batch {B}, n_snapshots {S}, d_in {D}, d_sae {F_}, k {k}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    variants = {label: plan for label, plan in VARIANTS.items() if args.only in label}
    step_rows(args, x, variants)
    if args.compile:
        compiled_rows(args, x)
    if args.trained:
        trained_rows(args)
    if args.micro_batches:
        micro_batch_rows(args, x)
    if any("topk" in label for label in variants):
        decode_rows(args)


def step_rows(args: argparse.Namespace, x: torch.Tensor, variants: dict[str, KernelPlan]) -> None:
    """1 + 2: tokens/s against the reference, FLOP/s against a plain matmul."""
    S, D, F_, B, k = args.n_snapshots, args.d_in, args.d_sae, args.batch, args.k
    dense_flops = 10 * B * S * D * F_
    mm_rate = matmul_flops_per_s(B, S * D, F_, args.rounds)
    print(f"\nplain matmul [{B}, {S * D}] @ [{S * D}, {F_}]: {mm_rate / 1e9:.1f} GFLOP/s")
    header = ("architecture", "tokens/s", "ref tokens/s", "ratio", "(rounds)", "GFLOP/s", "of matmul")
    print("\n{:<44}{:>10}{:>14}{:>8}{:>12}{:>10}{:>11}".format(*header))
    for label, plan in variants.items():
        ours = crosslens_step_fn(label.split()[0], S, D, F_, k, plan=plan)
        samples = time_rounds(
            {
                "ref": lambda step=reference_step_fn(S, D, F_): step(x),
                "ours": lambda step=ours: step(x),
            },
            rounds=args.rounds,
            warmup=1,
        )
        times = {name: statistics.median(s) for name, s in samples.items()}
        # each round's ratio of two adjacent timings: a shared machine's drift cancels in it
        ratios = sorted(r / o for r, o in zip(samples["ref"], samples["ours"]))
        spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
        rate = dense_flops / times["ours"]  # dense-equivalent FLOPs, so sparse shows its gain
        print(
            f"{label:<44}{B / times['ours']:>10.0f}{B / times['ref']:>14.0f}"
            f"{statistics.median(ratios):>8.2f}{spread:>12}{rate / 1e9:>10.1f}{rate / mm_rate:>11.2f}"
        )


def decode_rows(args: argparse.Namespace) -> None:
    """3: the TopK decode alone, forward + backward, three ways."""
    S, D, F_, B, k = args.n_snapshots, args.d_in, args.d_sae, args.batch, args.k
    W_dec = torch.randn(F_, S * D, requires_grad=True)
    h = torch.randn(B, F_).relu()
    idx = h.topk(k, dim=-1).indices.sort(dim=-1).values
    vals = h.gather(-1, idx).requires_grad_(True)
    f_dense = torch.zeros(B, F_).scatter(-1, idx, vals.detach()).requires_grad_(True)
    upstream = torch.randn(B, S * D)

    def dense_decode() -> None:
        (f_dense @ W_dec * upstream).sum().backward()
        W_dec.grad = f_dense.grad = None

    def sparse_decode() -> None:
        out = F.embedding_bag(idx, W_dec, mode="sum", per_sample_weights=vals)
        (out * upstream).sum().backward()
        W_dec.grad = vals.grad = None

    print()
    print_both(f"decode forward+backward, k {k} of {F_}", {"dense": dense_decode, "sparse": sparse_decode}, args.rounds)

    # the decode with the decoder norms' gradient: embedding_bag and row_norms (what a CPU's
    # TopK step runs) against the eager twin of the pairs' kernels, one node for both
    pairs = ActivePairs.from_rows(idx, F_)
    W_FGD = W_dec.view(F_, 1, S * D)

    def embedding_bag_and_norms() -> None:
        out = F.embedding_bag(idx, W_dec, mode="sum", per_sample_weights=vals)
        ((out * upstream).sum() + row_norms(W_dec.view(F_, S, D)).sum()).backward()
        W_dec.grad = vals.grad = None

    def pairs_node() -> None:
        norms = torch.linalg.vector_norm(W_dec.detach().view(F_, S, D), dim=-1)
        out, norms, _ = sparse.gather_decode_and_norms(W_FGD, vals.reshape(-1, 1), pairs, norms, CPU_PLAN)
        ((out.view(B, -1) * upstream).sum() + norms.sum()).backward()
        W_dec.grad = vals.grad = None

    print_both(
        "decode and decoder norms, forward+backward",
        {"the pairs' eager node": pairs_node, "embedding_bag + row_norms": embedding_bag_and_norms},
        args.rounds,
    )

    # TopK's auxiliary decode: every token keeps every dead feature (while fewer are dead than
    # aux_k, S * d_in / 2), as pairs through embedding_bag against a matmul over the dead rows
    dead = torch.arange(0, F_, 20)  # 5% of the features
    h_aux = torch.randn(B, dead.numel(), requires_grad=True)
    dead_NK = dead.expand(B, -1)

    def aux_pairs() -> None:
        out = F.embedding_bag(dead_NK, W_dec, mode="sum", per_sample_weights=h_aux)
        (out * upstream).sum().backward()
        W_dec.grad = h_aux.grad = None

    def aux_matmul() -> None:
        ((h_aux @ W_dec.index_select(0, dead)) * upstream).sum().backward()
        W_dec.grad = h_aux.grad = None

    print_both(
        f"auxiliary decode of {dead.numel()} dead features, forward+backward",
        {"pairs (embedding_bag)": aux_pairs, "matmul over the dead rows": aux_matmul},
        args.rounds,
    )


def print_both(title: str, fns: dict[str, Callable[[], None]], rounds: int) -> None:
    """Time two variants alternately and print each's median and the second's speed-up over
    the first."""
    times = time_alternating(fns, rounds=rounds, warmup=2)
    (first, t_first), (second, t_second) = times.items()
    print(
        f"{title}: {first} {t_first * 1e3:.1f} ms, {second} {t_second * 1e3:.1f} ms, speed-up {t_first / t_second:.2f}x"
    )


def micro_batch_rows(args: argparse.Namespace, x: torch.Tensor) -> None:
    """6: each architecture's step in ``--micro-batches`` micro-batches against one batch."""
    S, D, F_, B, k, n = args.n_snapshots, args.d_in, args.d_sae, args.batch, args.k, args.micro_batches
    print(f"\nstep in {n} micro-batches of {B // n} tokens against one batch of {B}")
    print("{:<44}{:>12}{:>14}{:>8}".format("architecture", "micro tok/s", "one tok/s", "ratio"))
    for arch in cc.ARCHITECTURES:
        if args.only not in arch:
            continue
        torch.manual_seed(0)
        one = crosslens_step_fn(arch, S, D, F_, k)
        torch.manual_seed(0)
        split = crosslens_step_fn(arch, S, D, F_, k, micro_batches=n)
        times = time_alternating({"one": lambda: one(x), "split": lambda: split(x)}, rounds=args.rounds, warmup=1)
        print(f"{arch:<44}{B / times['split']:>12.0f}{B / times['one']:>14.0f}{times['one'] / times['split']:>8.2f}")


def trained_rows(args: argparse.Namespace) -> None:
    """5: the JumpReLU step at a trained crosscoder's weights, on its own store's batches."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from crosslens.activations import ActivationStore
    from crosslens.kernels.jumprelu_entry_classes import EntryClasses

    run = Path(args.trained).expanduser()
    run_cfg = json.loads((run / "run.json").read_text())
    saved_cfg = json.loads((run / "final" / "cfg.json").read_text())
    details = saved_cfg["metadata"][TRAINING_DETAILS_KEY]
    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES["jumprelu_crosscoder"]
    unknown = sorted(set(details) - {f.name for f in dataclasses.fields(train_cfg_cls)})
    if unknown:
        raise SystemExit(
            f"--trained {run}: its crosscoder was trained by an earlier crosslens, whose training config held "
            f"{', '.join(unknown)}; train it again with this one (`make demo` after removing {run})"
        )
    S, F_, B = saved_cfg["n_snapshots"], saved_cfg["d_sae"], args.batch
    sae = train_cls(train_cfg_cls(d_in=saved_cfg["d_in"], d_sae=F_, n_snapshots=S, **details))
    # folded: reads raw activations; the lambda controller's factor is a training buffer, not saved
    sae.load_state_dict({**load_file(run / "final" / WEIGHTS_NAME), "l0_scale": sae.l0_scale})
    D = sae.cfg.d_in
    store = ActivationStore.open(run_cfg["store_path"], verify="none")
    rows = torch.randperm(store.n_tokens, generator=torch.Generator().manual_seed(0))
    batches = [
        store.read(run_cfg["hook_name"], rows[a : a + B].sort().values, normalize=False)
        for a in range(0, min(store.n_tokens, 8 * B) - B + 1, B)
    ]
    with torch.no_grad():
        h_NF = sae.hidden_pre(batches[0])
        classes = EntryClasses(h_NF, sae.snapshot_norms(), sae.threshold, sae.cfg.jumprelu_bandwidth / 2)
    n = h_NF.numel()
    window = (
        "a mask and a matmul per snapshot"
        if classes.window_per_snapshot
        else "one matmul"
        if classes.dense_window
        else "gathered rows"
    )
    print(f"\ntrained crosscoder {run}: batch {B}, n_snapshots {S}, d_in {D}, d_sae {F_}")
    rows = "padded rows" if classes.open_rows is not None else "gathered"
    print(
        f"  (token, feature) entries open at some snapshot {classes.open_any_FN.float().mean():.1%}, "
        f"at every snapshot {classes.open_all_FN.float().mean():.1%} ({rows}), mixed "
        f"{classes.mixed_open_flat.numel() / n:.1%}; gated decode: {classes.sparse_ok}; window: {window}"
    )
    trainer = CrosscoderTrainer(  # the saved crosscoder is folded: it reads raw activations
        sae,
        CrosscoderTrainerConfig(total_steps=10**9, lr=5e-5, activation_scale_check="off", resample_dead=0),
        plan=CPU_PLAN,
    )
    ref = reference_step_fn(S, D, F_)
    turn = [0]

    def next_batch() -> torch.Tensor:
        turn[0] += 1
        return batches[turn[0] // 2 % len(batches)]

    per_snapshot = CrosscoderTrainer(
        copy.deepcopy(sae),
        CrosscoderTrainerConfig(total_steps=10**9, lr=5e-5, activation_scale_check="off", resample_dead=0),
        plan=PER_SNAPSHOT_KERNEL,
    ).step

    times = time_alternating(
        {
            "ref": lambda: ref(next_batch()),
            "ours": lambda: trainer.step(next_batch()),
            "per-snapshot kernel": lambda: per_snapshot(next_batch()),
        },
        rounds=args.rounds,
        warmup=1,
    )
    print("{:<40}{:>10}{:>14}{:>8}".format("jumprelu_crosscoder (trained)", "tokens/s", "ref tokens/s", "ratio"))
    for label, key in (("gated decode (default)", "ours"), ("per-snapshot kernel", "per-snapshot kernel")):
        print(f"{label:<40}{B / times[key]:>10.0f}{B / times['ref']:>14.0f}{times['ref'] / times[key]:>8.2f}")


def compiled_rows(args: argparse.Namespace, x: torch.Tensor) -> None:
    """4: torch.compile on and off, each against the eager reference of the same run."""
    S, D, F_ = args.n_snapshots, args.d_in, args.d_sae
    eager_step = crosslens_step_fn(
        "jumprelu_crosscoder", S, D, F_, args.k, plan=KernelPlan.resolve("cpu", compile=False)
    )
    compiled_step = crosslens_step_fn(
        "jumprelu_crosscoder", S, D, F_, args.k, plan=KernelPlan.resolve("cpu", compile=True)
    )
    compiled_ref = reference_step_fn(S, D, F_, compile=True)

    start = time.perf_counter()
    compiled_step(x)
    compiled_ref(x)
    print(f"\ntorch.compile: first steps (compiling) took {time.perf_counter() - start:.0f} s")
    times = time_alternating(
        {
            "ref": lambda step=reference_step_fn(S, D, F_): step(x),
            "ref compiled": lambda: compiled_ref(x),
            "jumprelu eager": lambda: eager_step(x),
            "jumprelu compiled kernels": lambda: compiled_step(x),
        },
        rounds=args.rounds,
        warmup=1,
    )
    print("{:<34}{:>10}{:>8}".format("variant", "tokens/s", "ratio"))
    for name, seconds in times.items():
        print(f"{name:<34}{args.batch / seconds:>10.0f}{times['ref'] / seconds:>8.2f}")


if __name__ == "__main__":
    main()
