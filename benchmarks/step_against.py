"""One architecture's training step in this checkout against the same step in another
checkout (a git worktree of an older commit, say), with the plain einsum reference of
``train.py`` beside both.

Each of the three steps lives in a worker process of its own, built once; the workers then
run one step each in turn, round after round, and time it themselves. A shared machine's
drift reaches the three alike within a round, so the per-round ratios hold where two runs of
``train.py`` one after the other differ by more than the change being measured. Each worker
imports crosslens and ``benchmarks/train.py`` from its own checkout, and has a heap of its
own, as a user's training process does.

    git worktree add ../before HEAD~1
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/step_against.py ../before
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/step_against.py ../before --arch crosscoder
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def worker(tree: str, arch: str, shape: list[int]) -> None:
    """Build one step in ``tree``, then time one call of it per line read from stdin."""
    sys.path[:0] = [str(Path(tree) / "benchmarks"), tree]
    import torch
    import train

    S, D, F_, B, k = shape
    torch.manual_seed(0)
    x = torch.randn(B, S, D)
    step = train.reference_step_fn(S, D, F_) if arch == "reference" else train.crosslens_step_fn(arch, S, D, F_, k)
    step(x)
    step(x)
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        step(x)
        print(time.perf_counter() - start, flush=True)


def spawn(tree: Path, arch: str, shape: list[int]) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", str(tree), arch, "--shape", *map(str, shape)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    process = subprocess.Popen(command, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "ready":
        raise SystemExit(f"the {arch} step in {tree} did not start (its error is above)")
    return process


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", nargs="?", help="the other checkout (a folder holding crosslens/ and benchmarks/)")
    parser.add_argument("--arch", default="jumprelu_crosscoder", help="the registered architecture to time")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--shape", type=int, nargs=5, default=[8, 128, 8192, 512, 32], metavar=("S", "D", "F", "B", "K")
    )
    parser.add_argument("--worker", nargs=2, metavar=("TREE", "ARCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is None and (args.other is None or not (Path(args.other) / "crosslens").is_dir()):
        parser.error(f"OTHER {args.other!r} holds no crosslens/ folder: pass a checkout, e.g. a git worktree")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(*args.worker, args.shape)
        return
    S, D, F_, B, k = args.shape
    print(f"{args.arch}, batch {B}, n_snapshots {S}, d_in {D}, d_sae {F_}; {args.rounds} rounds, each step in turn")
    workers = {
        "this checkout": spawn(HERE, args.arch, args.shape),
        "other checkout": spawn(Path(args.other).resolve(), args.arch, args.shape),
        "reference": spawn(HERE, "reference", args.shape),
    }
    seconds: dict[str, list[float]] = {name: [] for name in workers}
    for _ in range(args.rounds):
        for name, process in workers.items():
            process.stdin.write("step\n")
            process.stdin.flush()
            seconds[name].append(float(process.stdout.readline()))
    for process in workers.values():
        process.stdin.close()
        process.wait()
    for name, times in seconds.items():
        print(f"   {name:<16}{statistics.median(times) * 1e3:9.1f} ms a step (median)")

    def ratio(a: str, b: str) -> str:
        per_round = sorted(x / y for x, y in zip(seconds[a], seconds[b]))
        return f"{statistics.median(per_round):.3f} ({per_round[0]:.2f}-{per_round[-1]:.2f})"

    print(f"this checkout's time over the other's: {ratio('this checkout', 'other checkout')}")
    print(
        f"against the reference (its time over the step's): this {ratio('reference', 'this checkout')}, "
        f"other {ratio('reference', 'other checkout')}"
    )


if __name__ == "__main__":
    main()
