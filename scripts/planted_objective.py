"""Does an architecture's objective prefer the planted code, or the code its training finds?

Trains each architecture twice through :func:`crosslens.training.planted.train_planted`,
with everything at its defaults but the starting point:

- ``default``: the usual initialisation;
- ``planted``: latents ``0 .. n_features - 1`` start as the planted features (decoder rows the
  planted decoder, each encoder column that row over its squared norm, so that the encoder
  reads the feature's coefficient where features do not overlap, encoder bias 0); the other
  latents start as usual.

For each run it prints the planted scores (recovered, exact emergence, absorbing fraction,
L0), the latents that never fire on the scoring sample, and the training objective at the
end with every coefficient at its full value: the reconstruction term, the sparsity terms and
their sum, on the same held-out tokens for both runs. Where the default run ends at a lower
objective than the planted run, the objective prefers the code the default run found, and no
training setting that minimises it better recovers the planted features.

    PYTHONPATH=. python scripts/planted_objective.py --generator correlated --seeds 0 1 2 --jobs 2
    PYTHONPATH=. python scripts/planted_objective.py --generator correlated --arch topk_crosscoder --k 6
    PYTHONPATH=. python scripts/planted_objective.py --arch crosscoder --set lr=1e-2   # a train_planted argument
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from sae_lens.saes.sae import TrainStepInput

from crosslens.analysis import PlantedConfig, PlantedEvolution
from crosslens.analysis.planted_generators import GENERATORS
from crosslens.training.planted import train_planted

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from planted_benchmark import ARCHITECTURES, score
from planted_generators import field_values, run_grid, with_k

INITS = ("default", "planted")
OBJECTIVE_TOKENS = 16_384
"""Held-out tokens the final objective is averaged over (in batches of 4096)."""


def planted_init(planted: PlantedEvolution):
    """An ``init`` for :func:`train_planted` that starts the first latents at the planted code."""
    decoder_FSD = planted.decoder

    def init(crosscoder) -> None:
        n_features = decoder_FSD.shape[0]
        if crosscoder.cfg.d_sae < n_features:
            raise ValueError(f"d_sae {crosscoder.cfg.d_sae} is below the {n_features} planted features; raise d_sae.")
        crosscoder.W_dec[:n_features] = decoder_FSD
        encoder_FSD = decoder_FSD / decoder_FSD.flatten(1).pow(2).sum(-1)[:, None, None]
        crosscoder.W_enc[:, :, :n_features] = encoder_FSD.permute(1, 2, 0)
        crosscoder.b_enc[:n_features] = 0

    return init


@torch.no_grad()
def final_objective(crosscoder, planted: PlantedEvolution) -> dict[str, float]:
    """The training loss terms on held-out tokens, every coefficient at its full value
    (a copy runs the training pass, so running statistics of the crosscoder stay as trained)."""
    model = copy.deepcopy(crosscoder).train()
    coefficients = {name: float(getattr(c, "value", c)) for name, c in model.get_coefficients().items()}
    acts_NSD, _ = planted.sample(OBJECTIVE_TOKENS, torch.Generator().manual_seed(11))
    totals: dict[str, float] = {}
    for x_BSD in acts_NSD.split(4096):
        out = model.training_forward_pass(
            TrainStepInput(
                sae_in=x_BSD,
                coefficients=coefficients,
                dead_neuron_mask=None,
                n_training_steps=10**9,
                is_logging_step=False,
            )
        )
        share = x_BSD.shape[0] / OBJECTIVE_TOKENS
        for name, value in {**out.losses, "total": out.loss}.items():
            totals[name] = totals.get(name, 0.0) + share * float(value)
    return totals


def run_one(generator: str, arch: str, seed: int, init: str, overrides: dict) -> dict:
    torch.set_num_threads(1)
    planted = PlantedEvolution.build(PlantedConfig.preset(generator, seed=seed))
    crosscoder = train_planted(
        planted, arch, seed=seed, init=planted_init(planted) if init == "planted" else None, **overrides
    )
    scores = score(planted, crosscoder, before=False, seconds=0.0)
    return dict(
        generator=generator,
        arch=arch,
        seed=seed,
        init=init,
        recovered=scores["recovered_fraction"],
        exact=scores["timeline_accuracy"],
        absorbing=scores["absorbing_fraction"],
        l0=scores["l0"],
        dead=scores["dead"],
        objective=final_objective(crosscoder, planted),
    )


def table(runs: list[dict]) -> None:
    print(
        "| generator | architecture | seed | start | recovered | exact | absorbing | L0 | dead | reconstruction | sparsity | objective |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        o = r["objective"]
        sparsity = sum(v for k, v in o.items() if k not in ("mse_loss", "total"))
        print(
            f"| {r['generator']} | {r['arch']} | {r['seed']} | {r['init']} | {r['recovered']:.3f} | {r['exact']:.3f} | "
            f"{r['absorbing']:.3f} | {r['l0']:.2f} | {r['dead']} | {o['mse_loss']:.2f} | {sparsity:.2f} | {o['total']:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", nargs="+", default=["correlated"], choices=["hard", *GENERATORS])
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--k", type=int, help="k of TopK/BatchTopK (default: train_planted's, from the set's mean L0)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override a train_planted argument")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    parser.add_argument("--json", help="also write every run here")
    args = parser.parse_args(argv)
    overrides = field_values(args.set)
    grid = [
        (g, a, s, i, with_k(a, args.k, overrides))
        for g in args.generator
        for a in args.arch
        for s in args.seeds
        for i in INITS
    ]
    runs = run_grid(run_one, grid, args.jobs)
    table(runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
