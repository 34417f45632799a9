"""What changes with torch's CPU thread count, and what does not.

Harvests the same tokens from the pico suite and trains the same crosscoder with 1 and 2
torch threads, twice each, then prints per stage whether repeats are byte-identical and
how far the thread counts drift apart (max |difference| and relative to the values' scale).

    python scripts/determinism.py            # about a minute on a free CPU core (pico suite cached)
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-snapshots", type=int, default=4)
    parser.add_argument("--n-seqs", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=300)
    parser.add_argument("--d-sae", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="thread count compared with 1")
    parser.add_argument("--save", default=None, help="write the 1-thread activations and W_dec here (safetensors)")
    parser.add_argument("--against", default=None, help="compare the 1-thread results with a file from --save")
    args = parser.parse_args()

    from crosslens.activations import harvest_activations, tokens_from_pico
    from crosslens.pico import pico_suite
    from crosslens.training.config import ArchitectureConfig
    from crosslens.training.runner import CrosscoderRunnerConfig, CrosscoderTrainingRunner

    suite = pico_suite()
    suite = suite.select(n=args.n_snapshots, spacing="log")
    tokens = tokens_from_pico(suite.tokenizer(), 64, args.n_seqs, seed=0)
    hook = "blocks.0.hook_resid_post"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        stores, runs = {}, {}
        many = args.threads
        # t1-*: one thread, t2-*: `many` threads; each twice
        labels = [("t1-0", 1), ("t1-1", 1), ("t2-0", many), ("t2-1", many)]
        for name, threads in labels:
            torch.set_num_threads(threads)
            stores[name] = harvest_activations(suite, hook, tokens, root / f"store-{name}", progress=False)
        for name, threads in labels:
            torch.set_num_threads(threads)
            config = CrosscoderRunnerConfig(
                store_path=str(stores["t1-0"].path),
                out_dir=str(root / f"run-{name}"),
                sae=ArchitectureConfig(d_sae=args.d_sae),
                n_steps=args.n_steps,
                train_batch_size_tokens=args.batch_size,
                checkpoint_every=0,
                progress=False,
            )
            runs[name] = CrosscoderTrainingRunner(config).run()

        acts = {name: store.read(hook, slice(None), normalize=False) for name, store in stores.items()}
        shard = "acts/blocks.0.hook_resid_post/snap003_shard0000.npy"
        print(
            f"stage    | repeat, 1 thread | repeat, {many} threads | 1 vs {many} threads: max |diff| (relative to max |value|)"
        )
        print("---------|------------------|-------------------|-----------------------------------------------")
        same1 = sha(stores["t1-0"].path / shard) == sha(stores["t1-1"].path / shard)
        same2 = sha(stores["t2-0"].path / shard) == sha(stores["t2-1"].path / shard)
        diff = (acts["t1-0"] - acts["t2-0"]).abs().max().item()
        scale = acts["t1-0"].abs().max().item()
        print(
            f"harvest  | {'identical' if same1 else 'DIFFERS':16} | {'identical' if same2 else 'DIFFERS':17} | "
            f"{diff:.3g} ({diff / scale:.2g})"
        )
        weights = "final/sae_weights.safetensors"
        same1 = sha(root / "run-t1-0" / weights) == sha(root / "run-t1-1" / weights)
        same2 = sha(root / "run-t2-0" / weights) == sha(root / "run-t2-1" / weights)
        w1, w2 = runs["t1-0"].W_dec.detach(), runs["t2-0"].W_dec.detach()
        diff, scale = (w1 - w2).abs().max().item(), w1.abs().max().item()
        print(
            f"train    | {'identical' if same1 else 'DIFFERS':16} | {'identical' if same2 else 'DIFFERS':17} | "
            f"{diff:.3g} ({diff / scale:.2g}) after {args.n_steps} steps (W_dec)"
        )
        mine = {"acts": acts["t1-0"].contiguous(), "W_dec": w1.contiguous()}
        if args.save:
            save_file(mine, args.save)
        if args.against:  # e.g. a run with ATEN_CPU_CAPABILITY=default: other vector kernels, as on another CPU
            other = load_file(args.against)
            for key, value in mine.items():
                diff = (value - other[key]).abs().max().item()
                print(
                    f"vs {args.against}: {key} max |diff| {diff:.3g} (relative {diff / value.abs().max().item():.2g})"
                )


if __name__ == "__main__":
    main()
