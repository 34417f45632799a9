"""Model diffing's latent scaling against planted truth: two models, every architecture.

A two-snapshot ``weak-early`` set stands for a base model (snapshot 0) and its fine-tune
(snapshot 1): of its 24 features, 4 are alike in both, 8 are shared concepts the base holds at
10-30% of the fine-tune's magnitude (weak-early features stepping up at snapshot 1: what Complete
Shrinkage calls the fine-tune's alone), 9 are born in the fine-tune and 3 fade from the base.
Each architecture is trained at the defaults a user gets (as ``scripts/planted_emergence.py``
trains the small sets), latent scaling reads the planted activations, and
:class:`~crosslens.analysis.diffing.DiffingAnalysis` classes and judges the recovered latents:

- **weak in the base**: of those the decoder norms call fine-tune-only, the share latent scaling
  finds in the base (``shrinkage`` or ``decoupling``), beside the share the decoder norms alone
  class right (not fine-tune-only);
- **one model's own**: of the planted one-model features classed one-model-only, the share latent
  scaling calls ``specific`` (the rest are false flags).

    PYTHONPATH=. python scripts/planted_diffing.py --cache CACHE --jobs 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from crosslens.analysis.diffing import DiffingAnalysis, diffing_scaling
from crosslens.analysis.emergence_check import EmergenceCheckConfig
from crosslens.analysis.planted_match import match_planted
from crosslens.analysis.probes import firing_frequency
from crosslens.analysis.scaling import latent_scaling
from crosslens.crosscoders.folding import training_space_decoder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from planted_benchmark import ARCHITECTURES
from planted_cache import SMALL_TRAINING, trained
from planted_emergence import N_TOKENS
from planted_generators import build_planted, run_grid

TWO_MODELS = {"n_snapshots": 2, "n_transient": 0, "transient_lengths": None}
"""The ``weak-early`` preset's overrides that make it two models."""
LABELS = ("base", "tuned")
PRESENCE_LINES = (0.05, 0.1, 0.2, 0.3)
"""The presence lines the verdict is scored at (the emergence check's, 0.1, among them)."""


def planted_two_models(seed: int):
    return build_planted("weak-early", seed, TWO_MODELS)


def run_one(arch: str, seed: int, cache: str | None) -> dict:
    torch.set_num_threads(1)
    planted = planted_two_models(seed)
    crosscoder, _ = trained("two-models", arch, seed, planted, Path(cache) if cache else None, SMALL_TRAINING)
    acts, _ = planted.sample(N_TOKENS, torch.Generator().manual_seed(5))
    scaling = latent_scaling(crosscoder, acts)
    diffing = DiffingAnalysis.from_crosscoder(crosscoder, labels=LABELS, frequency=firing_frequency(acts, crosscoder))
    at_line = {
        line: diffing_scaling(
            diffing, scaling, EmergenceCheckConfig(presence_threshold=line, fade_threshold=min(line, 0.05))
        )
        for line in PRESENCE_LINES
    }
    match = match_planted(training_space_decoder(crosscoder).float().cpu(), planted)
    latent_of = {feature: latent for latent, feature in match.recovered}
    magnitude = planted.magnitudes
    weak = set(planted.event_truth.weak_early)
    own = {
        int(i): f"{LABELS[0]}-only" if float(magnitude[i, 1]) == 0 else f"{LABELS[1]}-only"
        for i in range(len(magnitude))
        if (float(magnitude[i, 0]) == 0) != (float(magnitude[i, 1]) == 0)
    }
    verdicts = at_line[EmergenceCheckConfig().presence_threshold].verdicts
    weak_recovered = [latent_of[i] for i in weak if i in latent_of]
    weak_tuned_only = [j for j in weak_recovered if diffing.classes[j] == f"{LABELS[1]}-only"]
    own_classed = [latent_of[i] for i, name in own.items() if i in latent_of and diffing.classes[latent_of[i]] == name]
    found_elsewhere = {
        str(line): tuple(
            sum(reading.verdicts[j] in ("shrinkage", "decoupling") for j in js) for js in (weak_tuned_only, own_classed)
        )
        for line, reading in at_line.items()
    }
    return {
        "arch": arch,
        "seed": seed,
        "lines": found_elsewhere,
        "weak_planted": len(weak),
        "weak_recovered": len(weak_recovered),
        "weak_called_tuned_only": len(weak_tuned_only),
        "weak_found_in_base": sum(verdicts[j] in ("shrinkage", "decoupling") for j in weak_tuned_only),
        "weak_shrinkage": sum(verdicts[j] == "shrinkage" for j in weak_tuned_only),
        "own_planted": len(own),
        "own_recovered": sum(i in latent_of for i in own),
        "own_classed_only": len(own_classed),
        "own_specific": sum(verdicts[j] == "specific" for j in own_classed),
        "own_not_measured": sum(verdicts[j] == "not measured" for j in own_classed),
    }


def share(n: int, total: int) -> str:
    return f"{n}/{total} ({n / total:.0%})" if total else "-"


def table(runs: list[dict]) -> str:
    rows = [
        "| architecture | weak in the base, recovered | the decoder norm calls them tuned-only (per seed) | of those, "
        "latent scaling finds them in the base (in its error) | one model's own, classed one-model-only | of "
        "those, called specific |",
        "|---|---|---|---|---|---|",
    ]
    for arch in dict.fromkeys(r["arch"] for r in runs):
        mine = [r for r in runs if r["arch"] == arch]
        total = {k: sum(r[k] for r in mine) for k in mine[0] if k not in ("arch", "seed", "lines")}
        per_seed = ", ".join(str(r["weak_called_tuned_only"]) for r in mine)
        rows.append(
            f"| {arch} | {share(total['weak_recovered'], total['weak_planted'])} "
            f"| {share(total['weak_called_tuned_only'], total['weak_recovered'])} ({per_seed}) "
            f"| {share(total['weak_found_in_base'], total['weak_called_tuned_only'])} ({total['weak_shrinkage']}) "
            f"| {share(total['own_classed_only'], total['own_recovered'])} "
            f"| {share(total['own_specific'], total['own_classed_only'])} |"
        )
    return "\n".join(rows)


def line_table(runs: list[dict]) -> str:
    """The verdict at each presence line, over every architecture: weak shared features found in the
    base of those the decoder norms call tuned-only, and one-model features flagged as present in the
    other model (false flags) of those classed one-model-only."""
    weak = sum(r["weak_called_tuned_only"] for r in runs)
    own = sum(r["own_classed_only"] for r in runs)
    rows = [
        "| presence line | weak in the base found, of those called tuned-only | one model's own flagged, of those classed one-model-only |",
        "|---|---|---|",
    ]
    for line in map(str, PRESENCE_LINES):
        found, flagged = (sum(r["lines"][line][k] for r in runs) for k in (0, 1))
        rows.append(
            f"| {line}{' (default)' if float(line) == 0.1 else ''} | {share(found, weak)} | {share(flagged, own)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--cache", help="folder keeping the trained crosscoders")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    args = parser.parse_args(argv)
    grid = [(arch, seed, args.cache) for arch in args.arch for seed in args.seeds]
    runs = run_grid(run_one, grid, args.jobs)
    print(table(runs))
    print()
    print(line_table(runs))


if __name__ == "__main__":
    main()
