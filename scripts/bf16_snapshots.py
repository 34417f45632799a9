"""What running the snapshot models in bfloat16 changes: crosscoders trained on pico activations
harvested in float32 and in bfloat16, each measured on the same float32 held-out tokens.

For each dtype it harvests the pico suite's 12 demo snapshots at ``blocks.0.hook_resid_post``
(``crosslens harvest --dtype``; the store is written in that dtype, as a user's would be) and
trains the demo's JumpReLU crosscoder (d_sae 1024, lambda 0.5, 1500 steps of 512 tokens) for each
seed (``crosslens train``). Every crosscoder is then measured on the float32 store's held-out
rows: explained variance per snapshot and the spliced-model loss (the snapshot models in
float32), so the only difference between the rows is the dtype the training activations were
computed in. Prints mean and spread over seeds; writes ``OUT/bf16_snapshots.json``.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bf16_snapshots.py --out /tmp/bf16 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

DTYPES = ("float32", "bfloat16")
HOOK = "blocks.0.hook_resid_post"


def crosslens(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "crosslens", *args], check=True)


def harvest(out: Path, dtype: str, n_tokens: int) -> Path:
    store = out / f"store-{dtype}"
    if not (store / "manifest.json").exists():
        crosslens(
            "harvest",
            "--suite",
            "pico",
            "--n-snapshots",
            "12",
            "--hook",
            HOOK,
            "--n-tokens",
            str(n_tokens),
            "--dtype",
            dtype,
            "--device",
            "cpu",
            "--out",
            str(store),
        )
    return store


def train(out: Path, store: Path, dtype: str, seed: int) -> Path:
    run = out / f"run-{dtype}-seed{seed}"
    if not (run / "crosslens_run.json").exists():
        crosslens(
            "train",
            "--store",
            str(store),
            "--arch",
            "jumprelu_crosscoder",
            "--d-sae",
            "1024",
            "--sparsity",
            "0.5",
            "--n-steps",
            "1500",
            "--batch-size",
            "512",
            "--seed",
            str(seed),
            "--spliced-seqs",
            "0",
            "--device",
            "cpu",
            "--out",
            str(run),
            "--overwrite",
        )
    return run


def measure(run: Path, heldout: Path, n_seqs: int) -> dict:
    """Explained variance per snapshot and the spliced loss of ``run``'s crosscoder on ``heldout``."""
    from crosslens.activations import ActivationStore
    from crosslens.causal.spliced_loss_eval import spliced_record
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.crosscoders.saved import load_crosscoder_folder
    from crosslens.training.metrics import evaluate_crosscoder

    crosscoder = load_crosscoder_folder(run / "final", device="cpu")
    store = ActivationStore.open(heldout, verify="size")
    result = evaluate_crosscoder(crosscoder, store, HOOK)
    suite_root = store.manifest["spec"]["suite"]["root"]
    suite = CheckpointSuite.local(suite_root).select(steps=[int(s["step"]) for s in store.snapshots])
    spliced = spliced_record(suite, crosscoder, store, n_seqs, "zero")
    return {
        "explained_variance": [float(v) for v in result["explained_variance"]],
        "l0": float(result["l0"]),
        "ce_loss_score": [float(row["ce_loss_score"]) for row in spliced["crosscoder"]],
    }


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +/- {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bf16_snapshots"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-tokens", type=int, default=66_560)
    parser.add_argument("--spliced-seqs", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stores = {dtype: harvest(args.out, dtype, args.n_tokens) for dtype in DTYPES}
    heldout = Path(str(stores["float32"]) + "-heldout")
    results: dict[str, list[dict]] = {dtype: [] for dtype in DTYPES}
    for dtype in DTYPES:
        for seed in args.seeds:
            results[dtype].append(measure(train(args.out, stores[dtype], dtype, seed), heldout, args.spliced_seqs))
    (args.out / "bf16_snapshots.json").write_text(json.dumps(results, indent=1))
    print(f"on the float32 held-out rows of {heldout}, mean +/- sd over seeds {args.seeds}:")
    print(f"{'training activations':22s} {'explained variance':>22s} {'CE recovered':>22s} {'L0':>16s}")
    for dtype, runs in results.items():
        ev = [statistics.mean(r["explained_variance"]) for r in runs]
        ce = [statistics.mean(r["ce_loss_score"]) for r in runs]
        print(f"{dtype:22s} {spread(ev):>22s} {spread(ce):>22s} {spread([r['l0'] for r in runs]):>16s}")


if __name__ == "__main__":
    main()
