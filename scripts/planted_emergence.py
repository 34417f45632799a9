"""Is an emergence real? Latent scaling and lineage against planted truth, every architecture.

Trains each architecture at the defaults a user gets (:func:`crosslens.training.planted.train_planted`,
as ``scripts/planted_generators.py`` does) on each planted generator, then scores what
:mod:`crosslens.analysis.emergence_check` and :mod:`crosslens.analysis.lineage_events` report:

- ``weak-early``: the share of the planted weak-early features (recovered ones) whose reported
  emergence is within one snapshot of their planted birth (snapshot 0), beside the share the
  decoder norm alone dates there;
- every family: the share of recovered features flagged contested (false flags on the eight
  families without weak features);
- ``split``, ``handoff`` and ``merge``: the share of planted events found within one snapshot of their
  step, beside the share the crosscoder's latents carry on both sides (an event no latent
  carries is lost before lineage reads the decoder) and the share found of those; on every
  family the reported events that match no planted event, per recovered feature;
- two sensitivity tables: the emergence check's lines (:data:`SENSITIVITY`) and lineage's
  (:data:`LINEAGE_SENSITIVITY`), each changed beside the defaults on the same crosscoders.

    PYTHONPATH=. python scripts/planted_emergence.py --cache CACHE --jobs 1       # the full grid
    PYTHONPATH=. python scripts/planted_emergence.py --generator weak-early --seeds 0 --arch crosscoder

``--cache DIR`` keeps each trained crosscoder (``scripts/planted_cache.py``), so scoring again with
other thresholds does not train again. ``--steps``, ``--batch-size`` and ``--k`` change the
training protocol for every family scored; each protocol keeps its own files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from crosslens.analysis import EvolutionAnalysis, EvolutionConfig
from crosslens.analysis.composition import CoFiring, composition_pairs
from crosslens.analysis.emergence_check import EmergenceCheckConfig, check_emergence
from crosslens.analysis.emergence_record import compute_emergence
from crosslens.analysis.evolution import NO_STEP, feature_lifetimes
from crosslens.analysis.lineage_events import LineageConfig, lineage_of
from crosslens.analysis.planted_generators import EVENT_GENERATORS, GENERATORS
from crosslens.analysis.planted_lineage import planted_lineage_scores
from crosslens.analysis.planted_match import match_planted
from crosslens.analysis.probes import firing_frequency
from crosslens.analysis.scaling import codes_and_reconstruction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from planted_benchmark import ARCHITECTURES
from planted_cache import cache_settings, cached_as, other_settings, trained
from planted_generators import INDEPENDENT, build_planted, run_grid

N_TOKENS = 32_768
"""Sampled tokens the analysis, latent scaling and firing rates read (planted_generators reads 20,000)."""

EVENT_FAMILIES = ("split", "handoff", "merge")
"""The families with planted lineage events."""

GOAL_FAMILIES = ("split", "handoff")
"""Of them, those whose planted events lineage is to find 90% of; merges are scored without a goal."""

GOAL_KINDS = ("split", "handoff")
"""The events whose reports on the families without them are to be at most 5% false; merges, which
no goal names, are counted beside them."""

WITHOUT_EVENTS = ("hard", "zipf", "correlated", "wide", "rare", "cofiring", "late", INDEPENDENT)
"""The eight families with neither weak early presence nor lineage events."""


def within(a: int, b: int) -> bool:
    return a != NO_STEP and abs(a - b) <= 1


def event_scores(planted, analysis, lin, n_recovered: int) -> dict:
    """:func:`~crosslens.analysis.planted_lineage.planted_lineage_scores` as the score's columns,
    with the false events per recovered feature, and the events of the goal's kinds
    (:data:`GOAL_KINDS`) reported and false."""
    scored = planted_lineage_scores(planted, analysis, lin)
    scores = scored.to_dict()
    goal = [label for e, label in zip(lin.events, scored.labels) if e.kind in GOAL_KINDS]
    return {
        **scores,
        "false_events_per_recovered": scores["false_events"] / max(1, n_recovered),
        "goal_events": len(goal),
        "goal_false_events": goal.count("false"),
        "event_kinds": lin.counts(),
    }


SENSITIVITY = (
    (0.05, 2, 0.5),
    (0.2, 2, 0.5),
    (0.1, 1, 0.5),
    (0.1, 3, 0.5),
    (0.1, 2, 0.3),
    (0.1, 2, 0.7),
    (0.1, 2, -1.0),
)
"""(presence line, contested margin, carrier line) scored beside the defaults (0.1, 2, 0.5); a
carrier line of -1 counts every other latent's reconstruction (the activation target everywhere)."""


def setting_key(line: float, margin: int, carrier: float) -> str:
    """A (presence line, contested margin, carrier line) setting as the sensitivity table names it."""
    return f"{line} / {margin} / {carrier}"


def sensitivity(analysis, scaling, recovered, weak: dict[int, int]) -> dict[str, list[int]]:
    """For each of :data:`SENSITIVITY`: weak-early features reported within one snapshot of their birth,
    and contested flags among the other recovered features."""
    out = {}
    for line, margin, carrier in SENSITIVITY:
        config = EmergenceCheckConfig(
            presence_threshold=line, fade_threshold=min(0.05, line), contested_margin=margin, carrier_cosine=carrier
        )
        check = check_emergence(analysis, scaling, config)
        reported = sum(within(int(check.reported_emergence[j]), 0) for j, i in recovered if i in weak)
        out[setting_key(line, margin, carrier)] = [
            reported,
            sum(bool(check.contested[j]) for j, i in recovered if i not in weak),
        ]
    return out


def sensitivity_table(runs: list[dict]) -> None:
    print(
        "| presence line / contested margin / carrier line | weak-early reported | "
        "contested among the eight families' recovered |"
    )
    print("|---|---|---|")
    weak_runs = [r for r in runs if r["generator"] == "weak-early"]
    eight = [r for r in runs if r["generator"] in WITHOUT_EVENTS]
    n_weak, n_other = sum(r["weak_recovered"] for r in weak_runs), sum(r["n_other"] for r in eight)
    default = EmergenceCheckConfig()
    print(
        f"| {setting_key(default.presence_threshold, default.contested_margin, default.carrier_cosine)} (default) | "
        f"{_share(sum(r['weak_reported'] for r in weak_runs), n_weak)} | "
        f"{_share(sum(r['contested_other'] for r in eight), n_other)} |"
    )
    for key in (setting_key(*setting) for setting in SENSITIVITY):
        reported = sum(r["sensitivity"][key][0] for r in weak_runs)
        contested = sum(r["sensitivity"][key][1] for r in eight)
        print(f"| {key} | {_share(reported, n_weak)} | {_share(contested, n_other)} |")


LINEAGE_SENSITIVITY = (
    {"apart_cosine": 0.4},
    {"apart_cosine": 0.6},
    {"same_cosine": 0.9},
    {"same_cosine": 0.93},
    {"hold_margin": 0.0},
    {"hold_margin": 0.1},
    {"min_snapshots": 1},
    {"min_snapshots": 3},
    {"successor_cosine": 0.6},
    {"successor_cosine": 0.8},
    {"max_shared": 4},
    {"max_shared": 10},
    {"max_shared": 127},
    {"birth_splits": False},
    {"turns": False},
    {"turn_at_once": False},
    {"leave_for_good": False},
    {"own_share": 0.3},
    {"own_share": 0.7},
    {"held_by_activations": False},
    {"compositions": False},
    {"cofire_share": 0.3},
    {"cofire_share": 0.7},
    {"turn_balance": 0.0},
    {"turn_balance": 0.3},
    {"turn_balance": 0.7},
    {"steady_successions": False},
)
"""Lineage lines scored beside :class:`LineageConfig`'s defaults, one changed at a time."""


SENSITIVITY_COUNTS = ("events_found", "events", "false_events", "goal_events", "goal_false_events")
"""What the lineage sensitivity table keeps of a run's scores at each setting."""


def lineage_key(change: dict) -> str:
    """A lineage setting (the fields changed from the defaults) as the sensitivity table names it."""
    return ", ".join(f"{name} {value}" for name, value in change.items())


def lineage_sensitivity(planted, f_NF, analysis, scaling, scaled_present_FS, n_recovered: int) -> dict[str, list[int]]:
    """For each of :data:`LINEAGE_SENSITIVITY`: planted events found, and false events (``f_NF``: the
    crosscoder's codes of the tokens scored)."""
    out = {}
    for change in LINEAGE_SENSITIVITY:
        config = LineageConfig(**change)
        # the latents splits by composition ask about follow the lines changed, so they are counted again
        cofiring = CoFiring.zeros(*composition_pairs(analysis, config))
        cofiring.add(f_NF)
        lin = lineage_of(
            analysis,
            config,
            scaled_present_FS=scaled_present_FS,
            activation_share_FS=scaling.activation_share,
            cofiring=cofiring,
        )
        scores = event_scores(planted, analysis, lin, n_recovered)
        out[lineage_key(change)] = [scores[k] for k in SENSITIVITY_COUNTS]
    return out


def lineage_sensitivity_table(runs: list[dict]) -> None:
    """Planted splits, handoffs and merges found (the lowest architecture's share beside the total),
    and the false share of the events reported on the nine families without them, of every kind
    and of the goal's (:data:`GOAL_KINDS`), per lineage setting."""
    print(
        "| lineage setting | splits found (lowest architecture) | handoffs found (lowest architecture) | "
        "merges found (lowest architecture) | "
        "false of the events reported, nine families | false of the splits and handoffs reported (goal <= 5%) |"
    )
    print("|---|---|---|---|---|---|")
    default, varied = LineageConfig(), dict.fromkeys(name for change in LINEAGE_SENSITIVITY for name in change)
    default_key = lineage_key({name: getattr(default, name) for name in varied})
    settings = [(f"{default_key} (default)", lambda r: [r[k] for k in SENSITIVITY_COUNTS])]
    settings += [
        (key, lambda r, key=key: r["lineage_sensitivity"][key]) for key in map(lineage_key, LINEAGE_SENSITIVITY)
    ]
    nine = [r for r in runs if r["generator"] in (*WITHOUT_EVENTS, "weak-early")]
    for name, counts in settings:
        cells = []
        for family in EVENT_FAMILIES:
            groups = _by([r for r in runs if r["generator"] == family], "arch").values()
            found = [sum(counts(r)[0] for r in g) for g in groups]
            planted = [sum(r["planted_events"] for r in g) for g in groups]
            lowest = min((f / p for f, p in zip(found, planted) if p), default=None)
            cells.append(f"{_share(sum(found), sum(planted))}; {'-' if lowest is None else f'{lowest:.0%}'}")
        reported, false, goal, goal_false = (sum(counts(r)[i] for r in nine) for i in range(1, 5))
        print(f"| {name} | {' | '.join(cells)} | {_share(false, reported)} | {_share(goal_false, goal)} |")


def planted_analysis(crosscoder, planted, acts_NSD) -> EvolutionAnalysis:
    """The evolution analysis of a crosscoder trained on ``planted``, with its firing rates on ``acts_NSD``."""
    return EvolutionAnalysis.from_crosscoder(
        crosscoder,
        steps=planted.steps,
        frequency=firing_frequency(acts_NSD, crosscoder),
        snapshot_frequency=firing_frequency(acts_NSD, crosscoder, per_snapshot=True),
    )


def score(planted, crosscoder, check_config=None, lineage_config=None) -> dict:
    """Decoder-norm, latent-scaled and reported emergence of the recovered features, contested
    flags and lineage events, against the planted truth."""
    acts_NSD, _ = planted.sample(N_TOKENS, torch.Generator().manual_seed(5))
    analysis = planted_analysis(crosscoder, planted, acts_NSD)
    result = compute_emergence(crosscoder, analysis, acts_NSD, check_config=check_config, lineage_config=lineage_config)
    scaling, check, lin = result.scaling, result.check, result.lineage
    with torch.no_grad():
        f_NF = codes_and_reconstruction(crosscoder, acts_NSD)[0]
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
        "sensitivity": sensitivity(analysis, scaling, recovered, weak),
        "lineage_sensitivity": lineage_sensitivity(planted, f_NF, analysis, scaling, check.present, len(recovered)),
        "counts": check.counts(),
        **event_scores(planted, analysis, lin, len(recovered)),
    }


def run_one(generator: str, arch: str, seed: int, cache: str | None, train_only: bool, protocol: dict) -> dict:
    torch.set_num_threads(1)
    planted = build_planted(generator, seed, {})
    crosscoder, seconds = trained(generator, arch, seed, planted, Path(cache) if cache else None, protocol)
    result = {"generator": generator, "arch": arch, "seed": seed, "train_seconds": round(seconds, 1)}
    if train_only:
        return result
    return {**result, **score(planted, crosscoder)}


def _share(hits: int, total: int) -> str:
    return f"{hits}/{total} ({hits / total:.0%})" if total else "-"


def _spread(group: list[dict], hits: str, total: str) -> str:
    """The share ``hits / total`` of each run (a seed) in ``group``, as mean +/- sd over them."""
    shares = torch.tensor([r[hits] / r[total] for r in group if r[total]], dtype=torch.float64)
    if not len(shares):
        return "-"
    sd = float(shares.std()) if len(shares) > 1 else 0.0
    return f"{float(shares.mean()):.0%} +/- {sd:.0%} ({len(shares)} seeds)"


def _by(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run)
    return groups


def weak_table(runs: list[dict]) -> bool:
    """Weak-early features dated within one snapshot of their birth, summed over seeds."""
    print(
        "| weak-early | reported (goal >= 90%) | decoder norm alone (0.3 line) | decoder norm at the 0.1 line | latent scaling alone | contested among the others | reported, per seed | decoder norm alone, per seed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for (arch,), group in _by([r for r in runs if r["generator"] == "weak-early"], "arch").items():
        n = sum(r["weak_recovered"] for r in group)
        reported = sum(r["weak_reported"] for r in group)
        ok &= reported >= 0.9 * n
        cells = [
            _share(sum(r[k] for r in group), n)
            for k in ("weak_reported", "weak_decoder", "weak_decoder_low_line", "weak_scaled")
        ]
        others = _share(sum(r["contested_other"] for r in group), sum(r["n_other"] for r in group))
        per_seed = [_spread(group, k, "weak_recovered") for k in ("weak_reported", "weak_decoder")]
        print(f"| {arch} | {' | '.join(cells)} | {others} | {' | '.join(per_seed)} |")
    return ok


def event_table(runs: list[dict]) -> bool:
    """Planted splits, handoffs and merges found, and the other events, summed over seeds."""
    print(
        "| family | architecture | planted events found (goal >= 90%: splits, handoffs) | found, per seed | carried by the crosscoder | found of those | events reported | of them decouplings | false | false per recovered feature |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for (generator, arch), group in _by(
        [r for r in runs if r["generator"] in EVENT_FAMILIES], "generator", "arch"
    ).items():
        found, planted = sum(r["events_found"] for r in group), sum(r["planted_events"] for r in group)
        ok &= found >= 0.9 * planted or generator not in GOAL_FAMILIES
        carried = sum(r["events_carried"] for r in group)
        false, recovered = sum(r["false_events"] for r in group), sum(r["n_recovered"] for r in group)
        print(
            f"| {generator} | {arch} | {_share(found, planted)} | {_spread(group, 'events_found', 'planted_events')} | "
            f"{_share(carried, planted)} | {_share(sum(r['events_found_carried'] for r in group), carried)} | "
            f"{sum(r['events'] for r in group)} | "
            f"{sum(r['decoupling_events'] for r in group)} | {false} | {false / max(1, recovered):.3f} |"
        )
    return ok


def false_flag_table(runs: list[dict]) -> bool:
    """On the families without planted events: contested flags and features the decoder norm at the
    0.1 line dates two snapshots early or more, among the recovered features (weak-early: among the
    others than its weak ones, those ``score`` counts them over), and false events per recovered
    feature; then the false events as a share of the events reported there, of every kind and of
    the goal's kinds (:data:`GOAL_KINDS`: at most 5% of the splits and handoffs reported false),
    which the verdict counts."""
    print(
        "| family | architecture | runs | recovered | contested (goal <= 5%) | earlier by the decoder norm at the 0.1 line | false events (goal <= 5%) | decouplings |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for (generator, arch), group in _by(
        [r for r in runs if r["generator"] in (*WITHOUT_EVENTS, "weak-early")], "generator", "arch"
    ).items():
        recovered, others = sum(r["n_recovered"] for r in group), sum(r["n_other"] for r in group)
        contested, false = sum(r["contested_other"] for r in group), sum(r["false_events"] for r in group)
        ok &= contested <= 0.05 * others and false <= 0.05 * recovered
        print(
            f"| {generator} | {arch} | {len(group)} | {recovered} | {_share(contested, others)} | "
            f"{_share(sum(r['low_line_early'] for r in group), others)} | {_share(false, recovered)} | "
            f"{sum(r['decoupling_events'] for r in group)} |"
        )
    without = [r for r in runs if r["generator"] in (*WITHOUT_EVENTS, "weak-early")]
    reported, false = sum(r["events"] for r in without), sum(r["false_events"] for r in without)
    goal, goal_false = sum(r["goal_events"] for r in without), sum(r["goal_false_events"] for r in without)
    print(
        f"\nevents reported on these families: {reported} ({sum(r['decoupling_events'] for r in without)} "
        f"decouplings); false: {_share(false, reported)} of those reported; of the {goal} splits and handoffs, "
        f"{_share(goal_false, goal)} (goal <= 5%); of the {reported - goal} merges, {_share(false - goal_false, reported - goal)}"
    )
    return ok and goal_false <= 0.05 * goal


def floor_table(runs: list[dict]) -> None:
    """Latent-scaled presence where the planted feature is absent (the noise floor the presence line
    must stand above), against the weak features' weakest presence."""
    absent = [r for r in runs if r["generator"] in WITHOUT_EVENTS]
    n = sum(r["n_absent"] for r in absent)
    above = {t: sum(r["absent_above"][t] for r in absent) for t in ("0.05", "0.1", "0.15", "0.2")}
    weakest = sorted(v for r in runs for v in r["weak_presence_min"])
    print(
        f"latent-scaled presence at {n} (latent, snapshot) pairs where the planted feature is absent, eight families: "
        + ", ".join(f">= {t}: {_share(k, n)}" for t, k in above.items())
    )
    if weakest:
        q = lambda f: weakest[min(len(weakest) - 1, int(f * len(weakest)))]  # noqa: E731
        print(
            f"weak-early features' weakest latent-scaled presence before their step up: min {weakest[0]:.3f}, "
            f"5% {q(0.05):.3f}, median {q(0.5):.3f} ({len(weakest)} features)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    families = ["hard", *GENERATORS, *EVENT_GENERATORS, INDEPENDENT]
    parser.add_argument("--generator", nargs="+", default=families, choices=families)
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--cache", help="folder keeping the trained crosscoders")
    parser.add_argument("--train-only", action="store_true", help="train (into --cache) and score nothing")
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="score only the crosscoders --cache holds, train none, and name the runs left out",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="tokens per training batch, every family (default: the small families' 256, train_planted's 1024 elsewhere)",
    )
    parser.add_argument("--steps", type=int, help="training steps, every family (default: train_planted's 3000)")
    parser.add_argument(
        "--k", type=int, help="TopK's and BatchTopK's active latents per token, every family (default: planted_k's)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    parser.add_argument("--json", help="also write every run's scores here")
    args = parser.parse_args(argv)
    given = (("batch_size", args.batch_size), ("n_steps", args.steps), ("k", args.k))
    protocol = {k: v for k, v in given if v is not None}
    grid = [
        (g, a, s, args.cache, args.train_only, protocol) for s in args.seeds for g in args.generator for a in args.arch
    ]
    if args.cached_only:
        if not args.cache:
            parser.error("--cached-only reads --cache: name the folder of trained crosscoders")
        settings = {cell[:3]: cache_settings(*cell[:3], protocol) for cell in grid}
        left_out = [cell[:3] for cell in grid if cached_as(settings[cell[:3]], Path(args.cache)) is None]
        grid = [cell for cell in grid if cell[:3] not in left_out]
        if left_out:
            print(
                f"not in {args.cache} as trained now, left out ({len(left_out)} runs): "
                + ", ".join(f"{g} {a} seed {s}" for g, a, s in left_out)
            )
        for g, a, s in left_out:
            for other in other_settings(settings[g, a, s], Path(args.cache)):
                print(f"  {g} {a} seed {s}: held under other settings, {other}")
    runs = run_grid(run_one, grid, args.jobs)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    if args.train_only:
        return
    met = [weak_table(runs), print() or event_table(runs), print() or false_flag_table(runs)]
    print()
    floor_table(runs)
    print()
    sensitivity_table(runs)
    print()
    lineage_sensitivity_table(runs)
    print("\nall goals met" if all(met) else "\nsome goals missed")


if __name__ == "__main__":
    main()
