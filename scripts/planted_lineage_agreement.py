"""Lineage events kept where a crosscoder of another architecture, trained on the same planted set,
makes the same moves (:func:`crosslens.analysis.agreement`), against planted truth.

For every family and seed of the planted grid, each architecture's lineage (as
``scripts/planted_emergence.py`` reads it: latent scaling's presence beside the analysis's) is
scored against the planted events, keeping only the events whose agreement with the referee is at
or above each line. The referee is the first of ``--referees`` of another architecture than the
crosscoder's own, so the first referee's own events are checked against the second. Printed per
line: the planted splits, handoffs and merges found, per architecture, and the events reported on the
nine families without planted events, with how many are false. With ``--every-referee`` an event
is kept only where every other architecture's crosscoder makes it: what no choice of referee can
set aside.

    PYTHONPATH=. python scripts/planted_lineage_agreement.py --cache CACHE --jobs 2
    PYTHONPATH=. python scripts/planted_lineage_agreement.py --cache CACHE --jobs 2 --every-referee

``--cache`` is ``scripts/planted_emergence.py``'s (that script trains it); this script reads the
crosscoders of its default protocol (trained without ``--steps``, ``--batch-size`` or ``--k``), and
one it does not hold is trained here and kept there.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from crosslens.analysis import lineage_agreement
from crosslens.analysis.emergence_record import compute_emergence
from crosslens.analysis.lineage_events import Lineage
from crosslens.analysis.planted_generators import EVENT_GENERATORS, GENERATORS
from crosslens.analysis.planted_lineage import planted_lineage_scores

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from planted_benchmark import ARCHITECTURES  # noqa: E402
from planted_cache import trained  # noqa: E402
from planted_emergence import EVENT_FAMILIES, N_TOKENS, WITHOUT_EVENTS, planted_analysis  # noqa: E402
from planted_generators import INDEPENDENT, build_planted  # noqa: E402

LINES = (0.0, 0.4, 0.5, 0.7)
"""Agreement lines scored (0: every event kept, as lineage reports them)."""
FALSE_FAMILIES = (*WITHOUT_EVENTS, "weak-early")


def analysed(crosscoder, planted, acts_NSD):
    """The analysis, latent scaling's presence and the lineage, as ``scripts/planted_emergence.py``
    reads them."""
    analysis = planted_analysis(crosscoder, planted, acts_NSD)
    result = compute_emergence(crosscoder, analysis, acts_NSD)
    return analysis, result.check.present, result.lineage


def run_family(
    generator: str, seed: int, archs: list[str], referees: list[str], cache: str, every: bool = False
) -> list[dict]:
    """Every architecture's lineage on one planted set, scored at each agreement line (against the
    first other referee, or with ``every`` the least agreement over every other architecture)."""
    torch.set_num_threads(1)
    planted = build_planted(generator, seed, {})
    acts_NSD, _ = planted.sample(N_TOKENS, torch.Generator().manual_seed(5))
    read = {a: analysed(trained(generator, a, seed, planted, Path(cache))[0], planted, acts_NSD) for a in archs}
    rows = []
    for arch in archs:
        analysis, present, lin = read[arch]
        referee = next(r for r in referees if r != arch)
        others = [a for a in archs if a != arch] if every else [referee]
        each = [lineage_agreement(lin, analysis, read[other][0], present, read[other][1]) for other in others]
        agreement = [min(values) for values in zip(*each)] if each else []
        for line in LINES:
            kept = [e for e, a in zip(lin.events, agreement) if line == 0.0 or a >= line]
            scores = planted_lineage_scores(planted, analysis, Lineage(lin.relatives, lin.relative_cosine, kept))
            rows.append(
                {"generator": generator, "seed": seed, "arch": arch, "referee": referee, "line": line}
                | scores.to_dict()
            )
    return rows


def table(rows: list[dict], archs: list[str]) -> None:
    print(
        "| agreement line | "
        + " | ".join(f"{a}: splits, handoffs, merges found" for a in archs)
        + " | reported, nine families | false | false of reported, per seed |"
    )
    print("|---" * (len(archs) + 4) + "|")
    for line in LINES:
        at = [r for r in rows if r["line"] == line]
        cells = []
        for arch in archs:
            found = []
            for family in EVENT_FAMILIES:
                mine = [r for r in at if r["arch"] == arch and r["generator"] == family]
                found.append(f"{sum(r['events_found'] for r in mine)}/{sum(r['planted_events'] for r in mine)}")
            cells.append(", ".join(found))
        nine = [r for r in at if r["generator"] in FALSE_FAMILIES]
        reported, false = sum(r["events"] for r in nine), sum(r["false_events"] for r in nine)
        share = f"{false}/{reported} ({false / reported:.0%})" if reported else "-"
        seeds = sorted({r["seed"] for r in nine})
        per_seed = ", ".join(
            f"{sum(r['false_events'] for r in nine if r['seed'] == seed)}/{sum(r['events'] for r in nine if r['seed'] == seed)}"
            for seed in seeds
        )
        label = "none (every event)" if line == 0.0 else f">= {line}"
        print(f"| {label} | " + " | ".join(cells) + f" | {reported} | {share} | {per_seed} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    families = ["hard", *GENERATORS, *EVENT_GENERATORS, INDEPENDENT]
    parser.add_argument("--cache", required=True, help="scripts/planted_emergence.py's cache of trained crosscoders")
    parser.add_argument("--generator", nargs="+", default=families, choices=families)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument(
        "--referees",
        nargs=2,
        default=["crosscoder", "batchtopk_crosscoder"],
        choices=ARCHITECTURES,
        help="each crosscoder's events are checked against the first of these of another architecture",
    )
    parser.add_argument(
        "--every-referee",
        action="store_true",
        help="keep an event only where every other architecture's crosscoder makes it (the least agreement)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="planted sets at once, one thread each")
    args = parser.parse_args(argv)
    if args.referees[0] == args.referees[1]:
        parser.error("--referees: name two architectures, so that each has another to be checked against")
    archs = list(dict.fromkeys([*args.arch, *args.referees]))
    jobs = [(g, s, archs, args.referees, args.cache, args.every_referee) for g in args.generator for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [r for done in pool.map(run_family, *zip(*jobs)) for r in done]
    table([r for r in rows if r["arch"] in args.arch], args.arch)


if __name__ == "__main__":
    main()
