"""Benchmark: crosslens harvesting against the naive multi-snapshot baseline.

The baseline is what public crosscoder code tends to do: load every snapshot at once,
then call ``run_with_cache`` with no ``names_filter`` and no ``stop_at_layer`` and keep
the hook's activations in memory. crosslens loads one snapshot at a time, runs only up
to the deepest hooked block, caches only the hooks, and writes shards to disk.

Prints, in one run:
  2. peak resident memory with 4 and 16 snapshots, each in a fresh process (goal: crosslens
     within 10% across the two, while the baseline grows);
  1. throughput (tokens x snapshots per second) of both, and their ratio (goal >= 2x);
  3. bytes on disk per token per snapshot for each storage dtype.

    python benchmarks/harvest.py                      # the pico suite (built if missing)
    python benchmarks/harvest.py --suite PATH         # any local suite
    python benchmarks/harvest.py --synthetic 512      # also a random 6-layer, d_model 512 suite
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from crosslens.activations import harvest_activations
from crosslens.activations.tokens import (
    build_token_ids,
    default_excluded_ids,
    keep_mask,
)
from crosslens.checkpoints import weights_cache


# --------------------------------------------------------------------------- suites
def open_suite(spec: str):
    if spec == "pico":
        from crosslens.pico import pico_suite

        return pico_suite()
    from crosslens.checkpoints import CheckpointSuite

    return CheckpointSuite.local(spec)


def write_synthetic_suite(root: Path, d_model: int, n_snapshots: int = 16, n_layers: int = 6) -> Path:
    """Random GPT-NeoX checkpoints (distinct seeds) sharing one word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    if (root / "done").exists():
        return root
    vocab = {"<|endoftext|>": 0, "<unk>": 1} | {f"w{i}": i + 2 for i in range(4094)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    config = GPTNeoXConfig(
        vocab_size=len(vocab),
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=max(1, d_model // 64),
        intermediate_size=4 * d_model,
        max_position_embeddings=2048,
        rotary_pct=0.25,
    )
    for i in range(n_snapshots):
        torch.manual_seed(i)
        folder = root / f"step{i * 100}"
        GPTNeoXForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    (root / "done").write_text("ok")
    return root


def token_table(suite, n_tokens: int, seq_len: int) -> torch.Tensor:
    """Pico corpus rows when the suite speaks pico, else random ids (the models cost the same)."""
    tokenizer = suite.tokenizer()
    ids = build_token_ids(tokenizer, n_tokens, seq_len)
    unknown = tokenizer.unk_token_id
    if unknown is not None and (ids == unknown).float().mean() > 0.05:  # not a pico vocabulary
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(2, len(tokenizer), ids.shape, generator=generator)
        ids[:, 0] = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    return ids


# --------------------------------------------------------------------------- the two methods
def run_crosslens(suite, hook: str, ids: torch.Tensor, out: Path, batch_size: int, dtype: str = "float32"):
    return harvest_activations(
        suite, hook, ids, out, dtype=dtype, batch_size=batch_size, overwrite=True, progress=False
    )


@torch.inference_mode()
def run_baseline(suite, hook: str, ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """All snapshots resident; full forward passes caching every hook; results kept in memory."""
    keep = keep_mask(ids, exclude_bos=True, exclude_token_ids=default_excluded_ids(suite.tokenizer()))
    models = [suite.load(ref) for ref in suite.snapshots]
    per_snapshot = []
    for model in models:
        rows = []
        for start in range(0, ids.shape[0], batch_size):
            _, cache = model.run_with_cache(ids[start : start + batch_size])
            rows.append(cache[hook][keep[start : start + batch_size]].clone())
            del cache
        per_snapshot.append(torch.cat(rows))
    return per_snapshot


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over from the parent through fork, so a child would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; bytes on macOS


def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process, so peak RSS is this method's alone."""
    suite = open_suite(args.suite)
    if args.n_snapshots:
        suite = suite.select(n=args.n_snapshots)
    ids = token_table(suite, args.n_tokens, args.seq_len)
    suite.tokenizer()
    base_rss = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        if args.child == "crosslens":
            run_crosslens(suite, args.hook, ids, Path(tmp) / "store", args.batch_size)
        else:
            run_baseline(suite, args.hook, ids, args.batch_size)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "rss_before_mb": base_rss, "n_snapshots": len(suite)}))


def measure_memory(args: argparse.Namespace, suite_spec: str, method: str, n_snapshots: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--suite",
        suite_spec,
        "--n-snapshots",
        str(n_snapshots),
        "--hook",
        args.hook,
        "--n-tokens",
        str(args.n_tokens),
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} with {n_snapshots} snapshots failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def bench_suite(args: argparse.Namespace, suite_spec: str, label: str) -> None:
    suite = open_suite(suite_spec)
    ids = token_table(suite, args.n_tokens, args.seq_len)
    n_snapshots = len(suite)
    keep = keep_mask(ids, exclude_bos=True, exclude_token_ids=default_excluded_ids(suite.tokenizer()))
    n_kept = int(keep.sum())
    print(f"\n=== {label}: {suite!r}")
    print(
        f"hook {args.hook}; {ids.shape[0]} x {ids.shape[1]} tokens ({n_kept} kept) x {n_snapshots} snapshots; "
        f"batch {args.batch_size} sequences; {torch.get_num_threads()} torch thread(s)"
    )

    if args.skip_memory:
        print("\n2. memory: skipped (--skip-memory)")
    elif n_snapshots < 16:
        print(f"\n2. memory: skipped, the suite has {n_snapshots} < 16 snapshots")
    else:
        print("\n2. peak resident memory (MB, VmHWM), median of 3 fresh processes per cell")
        print(f"   {'':10s} {'4 snapshots':>12s} {'16 snapshots':>13s} {'16 / 4':>8s}")
        for method in ("baseline", "crosslens"):
            # the median: one process's peak moves by up to ~90 MB from run to run (allocator
            # arenas, pages of the weight files), as much as the whole 4-to-16 difference
            four, sixteen = (
                sorted(measure_memory(args, suite_spec, method, n)["peak_rss_mb"] for _ in range(3))[1] for n in (4, 16)
            )
            print(f"   {method:10s} {four:12.0f} {sixteen:13.0f} {sixteen / four:8.3f}", flush=True)
        print("   goal: crosslens 16/4 <= 1.10 while the baseline grows")

    suite.load(0)  # warm-up: imports, allocator, file cache
    work = n_kept * n_snapshots
    with tempfile.TemporaryDirectory() as tmp:
        # crosslens twice per round: "cold" with an empty weights-hash cache (a suite's first
        # harvest loads every snapshot whole, to record its full hash) and "warm" with the
        # cache that run filled (later harvests load only the blocks up to the hook)
        ours: dict[str, list[float]] = {"cold": [], "warm": []}
        base = []
        for repeat in range(args.repeats):  # interleaved, best of each: the machine may be shared
            t0 = time.perf_counter()
            run_baseline(suite, args.hook, ids, args.batch_size)
            base.append(time.perf_counter() - t0)
            weights_cache.cache_dir = lambda repeat=repeat: Path(tmp) / f"weights-sha256-{repeat}"
            for state in ("cold", "warm"):
                store = Path(tmp) / f"store-{state}{repeat}"  # a new folder: an existing store would be reused
                t0 = time.perf_counter()
                run_crosslens(suite, args.hook, ids, store, args.batch_size)
                ours[state].append(time.perf_counter() - t0)
                shutil.rmtree(store)
        print(f"\n1. throughput (tokens x snapshots / s, model loading included, best of {args.repeats})")
        print(f"   baseline         {work / min(base):12,.0f}   ({min(base):.2f} s)")
        for state, label in (("cold", "first harvest"), ("warm", "later harvests")):
            print(
                f"   crosslens {state}   {work / min(ours[state]):12,.0f}   ({min(ours[state]):.2f} s, written to disk; {label})"
            )
        for state in ("cold", "warm"):
            print(f"   ratio {state}       {min(base) / min(ours[state]):12.2f}x   (goal >= 2x)")

        print("\n3. bytes on disk per token per snapshot")
        for dtype in ("float32", "bfloat16", "float16"):
            store = run_crosslens(suite, args.hook, ids, Path(tmp) / dtype, args.batch_size, dtype=dtype)
            per = store.nbytes() / (store.n_tokens * store.n_snapshots)
            print(
                f"   {dtype:9s} {per:8.1f}   (d_in {store.d_in}; data {store.d_in * (4 if dtype == 'float32' else 2)})"
            )
            shutil.rmtree(Path(tmp) / dtype)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows even through a pipe
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="pico", help="'pico' or a local suite folder")
    parser.add_argument("--hook", default=None, help="default: blocks.0.hook_resid_post (pico), else a middle block")
    parser.add_argument("--n-tokens", type=int, default=32768)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--synthetic", type=int, default=0, metavar="D_MODEL", help="also bench a random suite this wide"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, spinning OpenMP threads make timings erratic)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", choices=["crosslens", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--n-snapshots", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.child:
        child(args)
        return
    suites = [(args.suite, args.suite)]
    if args.synthetic:
        root = Path(tempfile.gettempdir()) / f"crosslens-bench-synthetic-{args.synthetic}"
        suites.append((str(write_synthetic_suite(root, args.synthetic)), f"synthetic d_model={args.synthetic}"))
    default_hook = args.hook
    for spec, label in suites:
        if default_hook is None:
            n_layers = open_suite(spec).load(0).cfg.n_layers
            args.hook = f"blocks.{max(0, n_layers // 2 - 1)}.hook_resid_post"
        bench_suite(args, spec, label)


if __name__ == "__main__":
    main()
