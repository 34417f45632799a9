"""Distributed crosscoder training on this machine: 1 process vs 2, data- and snapshot-parallel.

    python benchmarks/distributed.py [--arch crosscoder jumprelu_crosscoder ...]
        [--snapshots 8 --d-in 128 --d-sae 16384 --batch 1024 --steps 6 --warmup 2]

Every configuration runs under ``torchrun`` with one torch thread per process, on the
same seeded batches, from the same initial crosscoder. Printed per architecture:

- tokens/s of 1 process and of 2 processes (data-parallel 2x1, snapshot-parallel 1x2),
  the speed-up and the scaling efficiency (speed-up / 2), all measured in this run;
- bytes each rank hands to collectives per step, read by ``torch.profiler`` from the last
  warm-up step's ``all_reduce`` and ``all_gather`` calls (their input tensors' shapes and dtypes),
  next to the formula in docs/DISTRIBUTED.md;
- the largest difference between the 2-process and the 1-process final weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHS = ("crosscoder", "jumprelu_crosscoder", "topk_crosscoder", "batchtopk_crosscoder")
MODES = {"1 process": (1, 1), "data-parallel 2x1": (2, 1), "snapshot-parallel 1x2": (2, 2)}


# ----------------------------------------------------------------------- formula
def bytes_per_step(arch: str, mode: tuple[int, int], S: int, D: int, F: int, B: int, k: int) -> int:
    """Payload bytes one rank hands to collectives per training step (float32 = 4 bytes)."""
    world, snapshot_size = mode
    data_size = world // snapshot_size
    if world == 1:
        return 0
    total = 0
    replicated_params = F * (2 if arch == "jumprelu_crosscoder" else 1)  # b_enc (+ threshold)
    if arch == "jumprelu_crosscoder":
        total += 2 * 4 * F  # p_i over tokens and snapshots (whole mesh): forward and backward
    if data_size > 1:
        shard = 2 * S * D * F + S * D  # W_enc, W_dec, b_dec (this rank holds all S)
        total += 4 * (shard + replicated_params)  # gradient all-reduce
        total += F * 1 + F * 8  # features fired (uint8 OR) and fire counts (int64)
        if arch == "batchtopk_crosscoder":
            b_local = B // data_size
            total += 4 * min(int(k * B), b_local * F) + 8  # offered scores, smallest kept
    if snapshot_size > 1:
        b_local = B // data_size
        total += 2 * 4 * b_local * F  # pre-activation h: forward and backward all-reduce
        total += 4 * replicated_params + 4  # replicated gradients, clip norm
        if arch == "crosscoder":
            total += 2 * 4 * F  # sum_s ||W_dec||: forward and backward
        elif arch == "jumprelu_crosscoder":
            total += b_local * F  # any-snapshot gate (uint8)
        else:
            total += 4 * F  # sum_s ||W_dec|| for the top-k scores (no gradient)
            total += 4 * F  # again for the aux-k scores
    return total


# ------------------------------------------------------------------------ worker
ELEMENT_BYTES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "int": 4, "long int": 8}
"""Bytes per element of the dtypes ``torch.profiler`` names in a collective's inputs (one byte
for the rest: bool, unsigned char, signed char)."""


def collective_bytes(events) -> int:
    """Bytes this rank hands to ``all_reduce`` and ``all_gather`` in the profiled ``events`` (the
    backend's own events, e.g. ``gloo:all_reduce``, whose inputs are the tensor handed over)."""
    total = 0
    for event in events:
        if event.name.split(":")[-1] in ("all_reduce", "all_gather"):
            for shape, dtype in zip(event.input_shapes, event.input_dtypes):
                total += math.prod(shape) * ELEMENT_BYTES.get(dtype, 1)
    return total


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from crosslens.architectures import defaults_for
    from crosslens.distributed import init_mesh, shard_batches, shutdown
    from crosslens.training.config import CrosscoderTrainerConfig
    from crosslens.training.factory import build_training_crosscoder
    from crosslens.training.trainer import CrosscoderTrainer

    S, D, F, B = args.snapshots, args.d_in, args.d_sae, args.batch
    layout, collectives, _ = init_mesh(S, snapshot_parallel=args.snapshot_parallel)
    torch.manual_seed(0)
    sae = build_training_crosscoder(
        args.arch,
        d_in=D,
        n_snapshots=S,
        d_sae=F,
        k=args.k,
        sparsity_coefficient=defaults_for(args.arch).sparsity_coefficient,
        sparsity_warm_up_steps=0,  # a run's steady state: lambda whole, and no resampling below
    )
    cfg = CrosscoderTrainerConfig(
        total_steps=args.warmup + args.steps,
        lr=1e-4,
        lr_decay_steps=0,
        checkpoint_dir=args.out,
        seed=0,
        resample_dead=0,
    )
    trainer = CrosscoderTrainer(sae, cfg, mesh=(layout, collectives))

    def global_batches():
        for step in range(args.warmup + args.steps):
            gen = torch.Generator().manual_seed(step)
            yield torch.randn(B, S, D, generator=gen)

    times, bytes_sent = [], 0
    for i, batch in enumerate(shard_batches(global_batches(), layout)):
        if i == args.warmup - 1:  # every step hands over the same tensors: count the last untimed one's
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
                trainer.step(batch)
            bytes_sent = collective_bytes(prof.events())
            continue
        dist.barrier()
        start = time.perf_counter()
        trainer.step(batch)
        dist.barrier()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    final = trainer.full_crosscoder()
    if layout.is_main:
        final.save_inference_model(Path(args.out) / "final")
        Path(args.out, "result.json").write_text(
            json.dumps({"step_s": times, "bytes_per_step": bytes_sent, "tokens": B})
        )
    shutdown()


# ------------------------------------------------------------------ the machine
MATMUL = (
    "import time, torch\n"
    "torch.set_num_threads(1)\n"
    "a, b = torch.randn(1024, 1024), torch.randn(1024, 4096)\n"
    "a @ b\n"
    "t = time.perf_counter()\n"
    "for _ in range(40): a @ b\n"
    "print(time.perf_counter() - t)\n"
)


def two_process_ceiling() -> float:
    """How much faster two single-threaded processes run a matmul loop than one: the most
    any 2-process speed-up of a compute-bound step can reach on this machine (2.0 with two
    free physical cores; less when the cores share execution units or are busy)."""

    def run(n: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", MATMUL], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return max(float(p.communicate()[0]) for p in procs)

    one = run(1)
    return 2 * one / run(2)


# ---------------------------------------------------------------------- launcher
def launch(args: argparse.Namespace, arch: str, mode: tuple[int, int], out: Path) -> dict:
    nproc, snapshot_parallel = mode
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        __file__,
        "--worker",
        "--arch",
        arch,
        "--snapshot-parallel",
        str(snapshot_parallel),
        "--out",
        str(out),
        "--snapshots",
        str(args.snapshots),
        "--d-in",
        str(args.d_in),
        "--d-sae",
        str(args.d_sae),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--k",
        str(args.k),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{arch} {mode} failed:\n{done.stderr[-4000:]}")
    return json.loads((out / "result.json").read_text())


def max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "final" / "sae_weights.safetensors"), load_file(b / "final" / "sae_weights.safetensors")
    return max((wa[n].double() - wb[n].double()).abs().max().item() for n in wa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["crosscoder", "jumprelu_crosscoder"], choices=ARCHS)
    parser.add_argument("--snapshots", type=int, default=8)
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the last counts the bytes)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--snapshot-parallel", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error(
            f"--warmup {args.warmup}, --steps {args.steps}: give 1 or more of each (the last warm-up step counts the bytes)"
        )
    if args.worker:
        args.arch = args.arch[0]
        return worker(args)

    S, D, F, B = args.snapshots, args.d_in, args.d_sae, args.batch
    print(
        f"machine: {os.cpu_count()} CPUs; two single-threaded processes run a matmul loop "
        f"{two_process_ceiling():.2f}x as fast as one (the ceiling for the speed-ups below)"
    )
    print(
        f"shape: {S} snapshots, d_in {D}, d_sae {F}, batch {B}; 1 torch thread per process; "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            results = {}
            for label, mode in MODES.items():
                out = Path(tmp) / arch / label.replace(" ", "_")
                results[label] = launch(args, arch, mode, out)
                results[label]["out"] = out
            base = results["1 process"]
            base_rate = B / (sum(base["step_s"]) / len(base["step_s"]))
            print(f"\n{arch}")
            print(
                f"  {'mode':24s} {'tokens/s':>10s} {'speed-up':>9s} {'efficiency':>10s} "
                f"{'MB/step measured':>17s} {'MB/step formula':>16s} {'max |dW|':>9s}"
            )
            for label, mode in MODES.items():
                r = results[label]
                rate = B / (sum(r["step_s"]) / len(r["step_s"]))
                formula = bytes_per_step(arch, mode, S, D, F, B, args.k)
                diff = 0.0 if label == "1 process" else max_weight_difference(r["out"], base["out"])
                print(
                    f"  {label:24s} {rate:10.0f} {rate / base_rate:8.2f}x {rate / base_rate / mode[0]:9.0%} "
                    f"{r['bytes_per_step'] / 1e6:17.2f} {formula / 1e6:16.2f} {diff:9.1e}"
                )


if __name__ == "__main__":
    main()
