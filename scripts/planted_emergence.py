"""Is an emergence real? Latent scaling and lineage against planted truth, every architecture.

Trains each architecture at the defaults a user gets (:func:`crosslens.training.planted.train_planted`,
as ``scripts/planted_generators.py`` does) on each planted generator, then scores what
:mod:`crosslens.analysis.emergence_check` and :mod:`crosslens.analysis.lineage` report:

- ``weak-early``: the share of the planted weak-early features (recovered ones) whose reported
  emergence is within one snapshot of their planted birth (snapshot 0), beside the share the
  decoder norm alone dates there;
- every family: the share of recovered features flagged contested (false flags on the eight
  families without weak features);
- ``split`` and ``handoff``: the share of planted events found within one snapshot of their
  step, and on every family the reported events that match no planted event, per recovered
  feature.

    PYTHONPATH=. python scripts/planted_emergence.py --cache CACHE --jobs 1       # the full grid
    PYTHONPATH=. python scripts/planted_emergence.py --generator weak-early --seeds 0 --arch crosscoder

``--cache DIR`` keeps each trained crosscoder (``GENERATOR-ARCH-seedN.pt``, with the settings it
was trained with), so scoring again with other thresholds does not train again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import crosslens.crosscoders as crosscoders
from crosslens.analysis import EvolutionAnalysis, EvolutionConfig
from crosslens.analysis.emergence_check import check_emergence
from crosslens.analysis.evolution import NO_STEP, feature_lifetimes
from crosslens.analysis.latent_scaling import latent_scaling
from crosslens.analysis.lineage import lineage_of, unit_rows
from crosslens.analysis.planted_generators import GENERATORS
from crosslens.analysis.probes import firing_frequency
from crosslens.analysis.synthetic import match_planted
from crosslens.training.planted import train_planted

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from planted_benchmark import ARCHITECTURES
from planted_generators import INDEPENDENT, build_planted, run_grid

N_TOKENS = 32_768
"""Sampled tokens the analysis, latent scaling and firing rates read (planted_generators reads 20,000)."""

SMALL = ("weak-early", "split", "handoff")
"""The families planted on a small set (:mod:`crosslens.analysis.planted_generators`' ``_SMALL``)."""
SMALL_TRAINING = {"d_sae": 64, "batch_size": 1024}
"""Their crosscoders: 64 latents (2.7 per planted feature, as 128 for 48) on batches of 256 tokens,
the rest ``train_planted``'s defaults (3000 steps)."""

WITHOUT_EVENTS = ("hard", "zipf", "correlated", "wide", "rare", "cofiring", "late", INDEPENDENT)
"""The eight families with neither weak early presence nor lineage events."""


def training(generator: str, batch_size: int | None) -> dict:
    """``train_planted``'s arguments for ``generator``: the small families' own, else ``batch_size`` where given."""
    if generator in SMALL:
        return dict(SMALL_TRAINING)
    return {} if batch_size is None else {"batch_size": batch_size}


def trained(generator: str, arch: str, seed: int, planted, cache: Path | None, batch_size: int | None = None):
    """The crosscoder ``train_planted`` gives, from ``cache`` when it holds one trained alike."""
    settings = {"generator": generator, "arch": arch, "seed": seed, **training(generator, batch_size)}
    path = None if cache is None else cache / f"{generator}-{arch}-seed{seed}.pt"
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved["settings"] == settings:
            train_cls, train_cfg_cls = crosscoders.ARCHITECTURES[arch][2:4]
            crosscoder = train_cls(train_cfg_cls.from_dict(saved["cfg"]))
            crosscoder.load_state_dict(saved["state"])
            return crosscoder.eval(), saved["seconds"]
    start = time.perf_counter()
    crosscoder = train_planted(planted, arch, seed=seed, **training(generator, batch_size))
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = {"settings": settings, "cfg": crosscoder.cfg.to_dict(), "state": crosscoder.state_dict()}
        torch.save({**saved, "seconds": seconds}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    return crosscoder, seconds


def within(a: int, b: int) -> bool:
    return a != NO_STEP and abs(a - b) <= 1


def carries(unit_FSD: torch.Tensor, latents, snapshots, directions_SD: torch.Tensor) -> bool:
    """Whether one of ``latents``' rows lies at cosine >= 0.9 to a planted feature's direction at one
    of ``snapshots`` (the event's snapshot and the next: a crosscoder's row can lag one snapshot)."""
    return any(float(unit_FSD[j, s] @ directions_SD[s]) >= 0.9 for j in latents for s in snapshots)


def carried_feature(unit_FSD: torch.Tensor, planted, latent: int, snapshot: int) -> int | None:
    """The planted feature whose direction a latent's row carries at cosine >= 0.9, if any."""
    cos_P = planted.directions[:, snapshot] @ unit_FSD[latent, snapshot]
    best = int(cos_P.argmax())
    return best if float(cos_P[best]) >= 0.9 else None


def event_scores(planted, analysis, lin, n_recovered: int) -> dict:
    """Planted splits and handoffs found: an event of the kind within one snapshot whose latents carry
    the planted directions on either side (cosine >= 0.9). The other reported events are
    *decouplings* where every latent in them carries one and the same planted feature (the crosscoder
    split one feature over latents: Latent Decoupling, a true event of the crosscoder) and *false*
    otherwise."""
    unit = lineage_unit(analysis)
    S = unit.shape[1]
    truth = getattr(planted, "event_truth", None)
    wanted = [("split", *e) for e in truth.splits] + [("handoff", *e) for e in truth.handoffs] if truth else []
    matched, found = set(), 0
    for kind, at, a, b in wanted:
        hits = []
        after = sorted({min(S - 1, at), min(S - 1, at + 1)})
        for k, e in enumerate(lin.events):
            if e.kind != kind or abs(e.snapshot - at) > 1:
                continue
            ahead = carries(unit, e.after, after, planted.directions[b])
            if kind == "split":
                ok = ahead and carries(unit, e.after, after, planted.directions[a])
            else:
                ok = ahead and carries(unit, e.before, [at - 1], planted.directions[a])
            if ok:
                hits.append(k)
        found += bool(hits)
        matched.update(hits)
    decoupling = 0
    for k, e in enumerate(lin.events):
        if k in matched:
            continue
        rows = [(j, max(0, e.snapshot - 1)) for j in e.before] + [(j, e.snapshot) for j in e.after]
        features = {carried_feature(unit, planted, j, s) for j, s in rows}
        decoupling += len(features) == 1 and None not in features
    false = len(lin.events) - len(matched) - decoupling
    return {
        "planted_events": len(wanted),
        "events_found": found,
        "events": len(lin.events),
        "decoupling_events": decoupling,
        "false_events": false,
        "false_events_per_recovered": false / max(1, n_recovered),
        "event_kinds": lin.counts(),
    }


def lineage_unit(analysis) -> torch.Tensor:
    """The decoder rows lineage reads, unit length, in the planted set's (normalised) space."""
    return unit_rows(analysis.W_dec)


def score(planted, crosscoder, check_config=None, lineage_config=None) -> dict:
    """Decoder-norm, latent-scaled and reported emergence of the recovered features, contested
    flags and lineage events, against the planted truth."""
    acts_NSD, _ = planted.sample(N_TOKENS, torch.Generator().manual_seed(5))
    analysis = EvolutionAnalysis.from_crosscoder(
        crosscoder,
        steps=planted.steps,
        frequency=firing_frequency(acts_NSD, crosscoder),
        snapshot_frequency=firing_frequency(acts_NSD, crosscoder, per_snapshot=True),
    )
    check = check_emergence(analysis, latent_scaling(crosscoder, acts_NSD), check_config)
    lin = lineage_of(analysis, lineage_config)
    match = match_planted(analysis.W_dec, planted)
    recovered = match.recovered
    truth = getattr(planted, "event_truth", None)
    weak = truth.weak_early if truth else {}
    low_line = EvolutionConfig(emergence_threshold=check.config.presence_threshold, fade_threshold=0.05)
    low = feature_lifetimes(analysis.norms, low_line, analysis.frequency, analysis.snapshot_frequency).emergence
    weak_pairs = [(j, i) for j, i in recovered if i in weak]
    other = [j for j, i in recovered if i not in weak]
    planted_emergence = {j: int(planted.emergence[i]) for j, i in recovered}
    absent = torch.cat(
        [check.presence[j][planted.magnitudes[i] == 0] for j, i in recovered if i not in weak] or [torch.zeros(0)]
    )
    weakest = [float(check.presence[j, :until].min()) for j, i in weak_pairs for until in [weak[i]]]
    return {
        "n_recovered": len(recovered),
        "n_planted": planted.config.n_features,
        "weak_planted": len(weak),
        "weak_recovered": len(weak_pairs),
        "weak_reported": sum(within(int(check.reported_emergence[j]), 0) for j, _ in weak_pairs),
        "weak_decoder": sum(within(int(check.decoder_emergence[j]), 0) for j, _ in weak_pairs),
        "weak_decoder_low_line": sum(within(int(low[j]), 0) for j, _ in weak_pairs),
        "weak_scaled": sum(within(int(check.scaled_emergence[j]), 0) for j, _ in weak_pairs),
        "low_line_early": sum(int(low[j]) != NO_STEP and int(low[j]) <= planted_emergence[j] - 2 for j in other),
        "absent_presence_max": float(absent.max()) if absent.numel() else 0.0,
        "absent_presence_q99": float(absent.quantile(0.99)) if absent.numel() else 0.0,
        "absent_above": {str(t): int((absent >= t).sum()) for t in (0.05, 0.1, 0.15, 0.2)},
        "n_absent": int(absent.numel()),
        "weak_presence_min": weakest,
        "contested_other": sum(bool(check.contested[j]) for j in other),
        "n_other": len(other),
        "contested_all": int(check.contested.sum()),
        "counts": check.counts(),
        **event_scores(planted, analysis, lin, len(recovered)),
    }


def run_one(generator: str, arch: str, seed: int, cache: str | None, train_only: bool, batch_size: int | None) -> dict:
    torch.set_num_threads(1)
    planted = build_planted(generator, seed, {})
    crosscoder, seconds = trained(generator, arch, seed, planted, Path(cache) if cache else None, batch_size)
    result = {"generator": generator, "arch": arch, "seed": seed, "train_seconds": round(seconds, 1)}
    if train_only:
        return result
    return {**result, **score(planted, crosscoder)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    families = ["hard", *GENERATORS, INDEPENDENT]
    parser.add_argument("--generator", nargs="+", default=families, choices=families)
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--cache", help="folder keeping the trained crosscoders")
    parser.add_argument("--train-only", action="store_true", help="train (into --cache) and score nothing")
    parser.add_argument(
        "--batch-size", type=int, help="tokens per training batch on the eight families (default: train_planted's 1024)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    parser.add_argument("--json", help="also write every run's scores here")
    args = parser.parse_args(argv)
    grid = [
        (g, a, s, args.cache, args.train_only, args.batch_size)
        for s in args.seeds
        for g in args.generator
        for a in args.arch
    ]
    runs = run_grid(run_one, grid, args.jobs)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
