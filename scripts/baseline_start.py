"""Where the demo's per-snapshot JumpReLU SAEs start their thresholds, and what it changes.

Trains the demo's JumpReLU baseline (SAELens's ``JumpReLUTrainingSAE``, quadratic target-L0
loss, d_sae 1024, 1000 steps of 512 tokens) on the demo's stores at each snapshot, seed and
threshold start: a number is a fixed start for every latent (SAELens's default is 0.01);
``target`` is crosslens's default, the threshold at which the first batch fires the target L0
(:func:`crosslens.training.baselines.threshold_at_l0`). The target is the demo crosscoder's mean
L0 on the held-out store, as the demo's table sets it. Prints held-out explained variance, L0
and dead latents, mean and spread over seeds. Run the demo first (it writes the stores).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/baseline_start.py --snapshots 0 6 11 --starts 0.01 target
"""

from __future__ import annotations

import argparse
import statistics
import sys

from crosslens.activations import ActivationStore
from crosslens.core.paths import crosslens_home
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.training.baselines import evaluate_sae, train_snapshot_sae
from crosslens.training.metrics import evaluate_crosscoder

HOOK = "blocks.0.hook_resid_post"


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean = statistics.fmean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} +/- {sd:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--snapshots", type=int, nargs="+", default=[0, 6, 11], help="store indices (the demo's: 0 6 11)"
    )
    parser.add_argument("--starts", nargs="+", default=["0.01", "target"], help="fixed thresholds, or target")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    demo = crosslens_home() / "demo"
    if not (demo / "crosscoder" / "final").is_dir():
        print(f"no demo under {demo}: run `make demo` first", file=sys.stderr)
        return 2
    train, held = ActivationStore.open(demo / "acts-train"), ActivationStore.open(demo / "acts-eval")
    crosscoder = load_crosscoder_folder(demo / "crosscoder" / "final", device="cpu")
    target = float(evaluate_crosscoder(crosscoder, held, HOOK)["l0"])
    print(f"target L0 {target:.2f} (the demo crosscoder's on the held-out store)")
    print(f"{'snapshot':>9} {'start':>8} {'EV %':>14} {'L0':>14} {'dead':>16}")
    for snapshot in args.snapshots:
        for start in args.starts:
            fixed = {} if start == "target" else {"jumprelu_init_threshold": float(start)}
            results = []
            for seed in args.seeds:
                sae = train_snapshot_sae(
                    train,
                    HOOK,
                    snapshot,
                    "jumprelu",
                    1024,
                    target_l0=target,
                    n_steps=1000,
                    batch_size=512,
                    seed=seed,
                    **fixed,
                )
                results.append(evaluate_sae(sae, held, HOOK, snapshot))
            ev = spread([r["explained_variance"] for r in results], 100.0)
            l0 = spread([r["l0"] for r in results])
            dead = spread([r["dead_features"] for r in results], digits=0)
            print(f"{snapshot:>9} {start:>8} {ev:>14} {l0:>14} {dead:>16}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
