"""Seed stability of the demo's crosscoder against training length, width and architecture.

Each cell ``ARCH:D_SAE:STEPS[:LAMBDA]`` trains the demo's crosscoder (``DemoConfig()`` with that
architecture, width and step count; JumpReLU at the demo's lambda, TopK/ReLU at their
defaults, or LAMBDA when given) with every seed on the demo's training store, then matches live features (those
firing on sampled held-out tokens) between every pair of seeds on their concatenated
decoders. Printed per cell: matched share at decoder cos >= 0.7 and >= 0.9, mean +/- sd
over seed pairs, and the mean L0. Runs are cached in ``--out`` (a finished run is reused),
so the command can be stopped and resumed.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/seed_stability.py --out /tmp/seed-stability
    # reuse stores harvested by a demo run instead of harvesting again:
    ... --store DEMO/acts-train --eval-store DEMO/acts-eval
    # only compare crosscoders already trained on the same store (run folders or checkpoints);
    # --per-snapshot adds, for the first two, each snapshot's share of the decoders' squared
    # norm and the matched share of that snapshot's decoder rows alone:
    ... --folders DEMO/crosscoder DEMO/crosscoder-seed1 DEMO/crosscoder-seed2 [--per-snapshot]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from crosslens.analysis.stability import THRESHOLDS, seed_stability, stability_summary
from crosslens.cli.demo_stages import DemoConfig, _pico_jumprelu, stability_analyses, train_stage
from crosslens.training.config import ArchitectureConfig

GRID = ("jumprelu_crosscoder:1024:1500", "jumprelu_crosscoder:256:1500", "topk_crosscoder:1024:1500")
"""The default cells: the demo's crosscoder, a quarter of its width and TopK; with 3 seeds about
9 runs of 1500 steps, 15-20 minutes on one free core. Name other cells with ``--grid``."""


def _cell_config(cell: str, seed: int) -> DemoConfig:
    arch, d_sae, steps, *coefficient = cell.split(":")
    sae = (
        _pico_jumprelu(d_sae=int(d_sae))
        if arch == "jumprelu_crosscoder"
        else ArchitectureConfig(arch, d_sae=int(d_sae))
    )
    if coefficient:
        sae = replace(sae, sparsity_coefficient=float(coefficient[0]))
    return replace(DemoConfig(), sae=sae, n_steps=int(steps), seed=seed)


def _stores(args):
    from crosslens.activations import ActivationStore

    if args.store:
        return ActivationStore.open(args.store), ActivationStore.open(args.eval_store or args.store)
    from crosslens.cli.demo_stages import choose_steps, harvest_or_reuse, suite_stage

    config = DemoConfig()
    suite, _ = suite_stage()
    suite = suite.select(steps=choose_steps(suite.steps, config.n_snapshots))
    common = dict(hooks=[config.hook], seq_len=config.seq_len, force=False, device="cpu", model_dtype="float32")
    train = harvest_or_reuse(suite, n_seqs=config.n_train_seqs, out_dir=args.out / "acts-train", seed=0, **common)
    held_out = harvest_or_reuse(suite, n_seqs=config.n_eval_seqs, out_dir=args.out / "acts-eval", seed=1, **common)
    return train, held_out


def _row(cell: str, crosscoders: list, eval_store) -> dict:
    analyses, l0 = stability_analyses(crosscoders, eval_store)
    summary = stability_summary(seed_stability(analyses, thresholds=THRESHOLDS))
    row = {"cell": cell, "seeds": len(crosscoders), "l0": sum(l0) / len(l0)}
    for s in summary:
        row[f"cos>={s['min_cosine']:g}"] = f"{s['mean']:.1%} +/- {s['sd']:.1%} ({s['pairs']} pairs)"
    return row


def _per_snapshot(analyses) -> list[str]:
    """Per snapshot: share of the squared decoder norm (first run, live features) and the share
    of live features matched at each threshold on that snapshot's decoder rows alone."""
    from crosslens.analysis.evolution_analysis import EvolutionAnalysis

    a, b = analyses[:2]
    live_a = a.W_dec[~a.lifetimes.dead]
    share_S = (live_a.norm(dim=-1) ** 2 / (live_a.norm(dim=-1) ** 2).sum(1, keepdim=True)).mean(0)
    lines = []
    for s in range(a.n_snapshots):
        one = [
            EvolutionAnalysis.from_decoder(x.W_dec[:, s : s + 1], frequency=(~x.lifetimes.dead).float()) for x in (a, b)
        ]
        matched = stability_summary(seed_stability(one, thresholds=THRESHOLDS))
        lines.append(
            f"  snapshot {s} (step {a.steps[s]}): {share_S[s]:.1%} of the squared decoder norm; matched on its rows alone "
            + ", ".join(f"{m['mean']:.1%} at cos >= {m['min_cosine']:g}" for m in matched)
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the stores and every cell's runs")
    parser.add_argument("--store", help="training store to reuse (default: harvest the demo's into --out)")
    parser.add_argument("--eval-store", help="held-out store for firing frequencies (default: --store)")
    parser.add_argument("--grid", nargs="+", default=list(GRID), help="cells ARCH:D_SAE:STEPS[:LAMBDA]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--folders", nargs="+", help="only compare these trained crosscoders (run or checkpoint folders)"
    )
    parser.add_argument("--per-snapshot", action="store_true", help="with --folders: the per-snapshot view")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_store, eval_store = _stores(args)
    rows = []
    if args.folders:
        from crosslens.crosscoders.saved import load_crosscoder_folder

        folders = [Path(f) / "final" if (Path(f) / "final").is_dir() else Path(f) for f in args.folders]
        crosscoders = [load_crosscoder_folder(f) for f in folders]
        rows.append(_row("given folders", crosscoders, eval_store))
        if args.per_snapshot:
            print("\n".join(_per_snapshot(stability_analyses(crosscoders, eval_store)[0])))
    for cell in [] if args.folders else args.grid:
        crosscoders = [
            train_stage(train_store, args.out / cell.replace(":", "-") / f"seed{seed}", _cell_config(cell, seed))
            for seed in args.seeds
        ]
        rows.append(_row(cell, crosscoders, eval_store))
        print(json.dumps(rows[-1]), flush=True)
    print("\nmatched share of live features, mean +/- sd over seed pairs:")
    for row in rows:
        print("  " + "  ".join(f"{k} {v:.1f}" if k == "l0" else f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
