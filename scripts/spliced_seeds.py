"""Spliced-model loss of the demo's crosscoder and of per-snapshot SAEs of the same width and
L0, over crosscoder seeds: mean and spread of the figures in benchmarks/README.md ("Spliced-model loss").

Each seed trains the demo's JumpReLU crosscoder (``DemoConfig()``: 12 pico snapshots, d_sae
1024, 1500 steps) on the demo's training store, and the per-snapshot JumpReLU and TopK SAEs
(same seed) at 3 snapshots; all are spliced into their snapshots' models on the first
``--rows`` rows of the demo's held-out store. Seed 0 is the demo's own crosscoder. Runs are
resumable (each seed's folder is reused).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/spliced_seeds.py --out /tmp/spliced-seeds   # ~15 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from crosslens.cli.demo_stages import (
    DemoConfig,
    choose_steps,
    harvest_or_reuse,
    quality_stage,
    suite_stage,
    train_stage,
)

FIGURES = ("ce_loss_score", "kl_div_with_sae")


def _seed_record(out: Path, seed: int, config: DemoConfig, suite, train_store, eval_store, steps) -> dict:
    record_file = out / f"seed{seed}" / "spliced.json"
    if record_file.exists():
        return json.loads(record_file.read_text())
    seeded = replace(config, seed=seed)
    crosscoder = train_stage(train_store, out / f"seed{seed}", seeded)
    quality = quality_stage(crosscoder, train_store, eval_store, seeded, suite)
    record_file.write_text(json.dumps(quality["spliced_loss"], indent=1, default=str))
    return quality["spliced_loss"]


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} +/- {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the stores and each seed's run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=64, help="held-out rows spliced (the demo uses 16)")
    args = parser.parse_args()

    config = replace(DemoConfig(), spliced_seqs=args.rows, extra_seeds=())
    suite, _ = suite_stage()
    steps = choose_steps(suite.steps, config.n_snapshots)
    suite = suite.select(steps=steps)
    common = dict(hooks=[config.hook], seq_len=config.seq_len, force=False, device="cpu", model_dtype="float32")
    train_store = harvest_or_reuse(suite, n_seqs=config.n_train_seqs, out_dir=args.out / "acts-train", seed=0, **common)
    eval_store = harvest_or_reuse(suite, n_seqs=config.n_eval_seqs, out_dir=args.out / "acts-eval", seed=1, **common)
    records = [_seed_record(args.out, seed, config, suite, train_store, eval_store, steps) for seed in args.seeds]

    print(f"\nover seeds {args.seeds}, {args.rows} held-out rows, zero-ablation floor: mean +/- sd")
    for model in ("crosscoder", *records[0].get("baselines", {})):
        for snapshot in [row["snapshot"] for row in records[0]["baselines"][next(iter(records[0]["baselines"]))]]:
            per_seed = []
            for record in records:
                rows = record["crosscoder"] if model == "crosscoder" else record["baselines"][model]
                per_seed.append(next(row for row in rows if row["snapshot"] == snapshot))
            cells = "  ".join(f"{name} {_mean_sd([row[name] for row in per_seed])}" for name in FIGURES)
            print(f"{model:>12s} {snapshot:>8s}  {cells}")


if __name__ == "__main__":
    main()
