"""What a pico crosscoder's lineage events join: each event's latents by the word they fire on most,
and whether those words are of one class of the pico grammar.

Reads a run's saved lineage (``crosslens analyze`` wrote it), finds every event latent's top tokens
on the run's store, and names the classes of the pico lexicon (:class:`crosslens.tasks.lexicon.Lexicon`:
names, animate nouns, thing nouns, adjectives, copulas, ...) holding its most frequent top word. It
prints each held event, then per kind how many join latents whose words share a class, apart for
events whose latents all peak at the first snapshot (step 0, the untrained model, where a latent
carries one token's direction).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python scripts/lineage_word_classes.py ~/.cache/crosslens/demo/crosscoder
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter
from pathlib import Path

import torch

from crosslens.activations import ActivationStore
from crosslens.analysis import EvolutionAnalysis, read_emergence, strongest_at_first_snapshot, top_activating_contexts
from crosslens.analysis.lineage_events import EVENT_KINDS
from crosslens.causal import load_crosscoder
from crosslens.checkpoints import CheckpointSuite
from crosslens.core.errors import CrosslensError
from crosslens.core.metadata import crosscoder_suite_record
from crosslens.tasks.lexicon import PUNCTUATION, Lexicon
from crosslens.training.runfolder import run_folder, run_store


def word_classes() -> dict[str, set[str]]:
    """Each pico word, lower-cased, to the lexicon fields that hold it (and punctuation)."""
    classes: dict[str, set[str]] = {mark: {"punctuation"} for mark in PUNCTUATION}
    lexicon = Lexicon()
    for field in dataclasses.fields(lexicon):
        value = getattr(lexicon, field.name)
        words = (
            [value]
            if isinstance(value, str)
            else [w for item in value for w in (item if isinstance(item, tuple) else (item,))]
        )
        for word in words:
            classes.setdefault(word.lower(), set()).add(field.name)
    return classes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a crosslens train run folder of a pico crosscoder, analysed")
    parser.add_argument("--k", type=int, default=20, help="top tokens read per latent")
    parser.add_argument("--pairs", type=int, default=2000, help="random pairs of latents for the chance rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random pairs")
    args = parser.parse_args(argv)
    try:
        run_dir = run_folder(args.run)
        store_path = run_store(run_dir)
        if run_dir is None or store_path is None:
            raise CrosslensError(f"{args.run}: not a run folder with its store; pass the folder crosslens train wrote")
        result = read_emergence(run_dir)
        root = crosscoder_suite_record(run_dir / "final").get("root")
        if not root or not Path(root).is_dir():
            raise CrosslensError(
                f"{args.run}: its crosscoder names no local suite folder; this script reads a pico suite's words "
                "(train on --suite pico, as the demo does)"
            )
    except CrosslensError as error:
        print(error, file=sys.stderr)
        return 2
    crosscoder = load_crosscoder(str(run_dir / "final"))
    peak_F = EvolutionAnalysis.from_crosscoder(crosscoder, result.steps).lifetimes.peak
    tokenizer = CheckpointSuite.local(root).tokenizer()
    # the events' latents, and for the chance rate every latent strongest at the first snapshot
    latents = sorted(
        {i for e in result.lineage.events for i in e.latents} | set(torch.nonzero(peak_F == 0).flatten().tolist())
    )
    contexts = top_activating_contexts(
        ActivationStore.open(store_path), crosscoder, latents, k=args.k, tokenizer=tokenizer
    )
    classes = word_classes()
    word = {
        i: Counter(c.tokens[c.focus].strip().lower() for c in contexts[i]).most_common(1)[0][0]
        for i in latents
        if contexts[i]
    }
    tally: Counter = Counter()
    for e in result.lineage.events:
        shared = set.intersection(*(classes.get(word.get(i, ""), set()) for i in e.latents))
        first = strongest_at_first_snapshot(e, peak_F)
        tally[(e.kind, first, bool(shared))] += 1
        words = ", ".join(f"#{i} {word.get(i, '(never fires)')}" for i in e.latents)
        print(
            f"{e.kind:<8} step {result.steps[e.snapshot]:>5}  {words}  ->  {', '.join(sorted(shared)) or '(no class shared)'}"
        )
    print(
        f"\nevents whose latents' words share a pico word class (all latents strongest at step {result.steps[0]} / the rest):"
    )
    for kind in EVENT_KINDS:
        cells = []
        for first in (True, False):
            n = tally[(kind, first, True)] + tally[(kind, first, False)]
            cells.append(f"{tally[(kind, first, True)]} of {n}")
        print(f"  {kind + 's':<9} {cells[0]:>9}  /  {cells[1]}")
    firing = [i for i in word if int(peak_F[i]) == 0]
    generator = torch.Generator().manual_seed(args.seed)
    pairs = torch.randint(len(firing), (args.pairs, 2), generator=generator).tolist()
    pairs = [(firing[a], firing[b]) for a, b in pairs if a != b]
    share = sum(bool(classes.get(word[a], set()) & classes.get(word[b], set())) for a, b in pairs)
    print(
        f"chance: {share} of {len(pairs)} random pairs of the {len(firing)} firing latents strongest at step "
        f"{result.steps[0]} share a class ({share / max(1, len(pairs)):.0%})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
