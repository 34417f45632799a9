"""What a feature is explained and scored on, read from the feature database (nothing recomputed).

For each reading (a snapshot's per-snapshot code, or -1: the crosscoder's own code) the database
holds the feature's top contexts and contexts across its activation quantiles, each a window of
tokens with the feature's activation on every one (:mod:`crosslens.dashboards.schema`). They are
split once, the same way for every request:

* **shown**: the top contexts of even rank (0, 2, 4, ...), whole windows, marked; the explanation
  is written from these alone;
* **held-out activating**: the other top contexts and the quantile contexts, each cut to
  ``span`` tokens (the budget's window) around its focus token, where the feature fires;
* **held-out non-activating**: stretches of ``span`` tokens inside those held-out windows on which
  the feature's stored activation is 0 on every token (special tokens such as ``<|endoftext|>``,
  whose activation a store does not keep, left out).

No held-out passage holds a token of a shown window (the same sequence and position): a quantile
context can be a shown top context again, or a few tokens from one, and judging text the
explanation was written from would score recall, not the explanation (delphi, too, draws the
explained and the scored examples from disjoint sets). Unlike random text, each non-activating
passage is *known* not to
  activate the feature at that reading; being text near where it fires, it is also harder to
  tell apart than random text. Where a feature fires on so many tokens of its windows that
  stretches of ``span`` are too few, both kinds are cut shorter, down to half of ``span``
  (:func:`held_out_passages`).

A feature's phases (:data:`~crosslens.dashboards.explanation_schema.PHASES`) are its readings at
the crosscoder's code, its emergence snapshot, its peak snapshot and the last snapshot, where it
fires there; a phase whose shown contexts are those of an earlier phase (the same snapshot, or
the same windows) shares that phase's explanation.
"""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from crosslens.dashboards.explanation_schema import LIFE_PHASES
from crosslens.dashboards.schema import ALL_SNAPSHOTS
from crosslens.explain.prompts import PROMPT_FORMAT, Window, passage

HELD_OUT = "held-out/1"
"""The name and version of the rule :func:`held_out_passages` chooses passages by (a new rule is a
new version); each score records it with the settings that feed it (:func:`score_prompt`)."""

SPECIAL = re.compile(r"^<\|.*\|>$|^<[a-z]+>$|^\[[A-Z]+\]$")
"""Special tokens (BOS and the like): a store keeps no activation for them, so a stretch holding
one is not known to be silent."""


@dataclass(frozen=True)
class Context:
    """One stored context: where its focus token is, and its window."""

    kind: str
    rank: int
    seq: int
    pos: int
    focus: int
    """The focus token's index in the window."""
    window: Window


@dataclass
class Reading:
    """A feature's contexts at one reading, split into shown and held-out ones."""

    snapshot: int
    contexts: list[Context]

    @property
    def shown(self) -> list[Context]:
        return [c for c in self.contexts if c.kind == "top" and c.rank % 2 == 0]

    @property
    def held_out(self) -> list[Context]:
        return [c for c in self.contexts if not (c.kind == "top" and c.rank % 2 == 0)]

    def shown_tokens(self) -> set[tuple[int, int]]:
        """(sequence, position) of every token of the shown windows."""
        return {(c.seq, c.pos - c.focus + k) for c in self.shown for k in range(len(c.window.tokens))}

    @property
    def examples(self) -> list[list[int]]:
        """The shown contexts' (sequence, position): which contexts an explanation was written from."""
        return [[c.seq, c.pos] for c in self.shown]


@dataclass(frozen=True)
class Phase:
    phase: str
    snapshot: int
    explained: int
    """The reading whose explanation stands for this phase."""


@dataclass
class FeaturePlan:
    """What one feature is explained at and scored on."""

    feature: int
    phases: list[Phase]
    readings: dict[int, Reading] = field(repr=False)
    judged: dict[int, Judged | None] = field(default_factory=dict, repr=False)
    """Each reading's held-out passages, once worked out (every explanation judged there sees the same)."""

    @property
    def explained(self) -> list[int]:
        """The readings explained, each once, in phase order."""
        return list(dict.fromkeys(p.explained for p in self.phases))

    @property
    def life_readings(self) -> list[int]:
        """The distinct readings of its life phases that are explained (the drift matrix's axes)."""
        return list(dict.fromkeys(p.explained for p in self.phases if p.phase in LIFE_PHASES))

    def targets(self, explained: int, drift: bool) -> list[int]:
        """The readings an explanation of reading ``explained`` is scored on: its own, and with
        ``drift`` every other life reading where it is one itself."""
        life = self.life_readings
        others = [r for r in life if r != explained] if drift and explained in life else []
        return [explained, *others]


class FeatureContexts:
    """Reads features' contexts from an open feature database."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        size = connection.execute("SELECT coalesce(max(token_id) + 1, 0) FROM vocabulary").fetchone()[0]
        self.vocabulary = [f"<{i}>" for i in range(size)]
        for token_id, text in connection.execute("SELECT token_id, text FROM vocabulary"):
            self.vocabulary[token_id] = text
        self.n_snapshots = connection.execute("SELECT count(*) FROM snapshots").fetchone()[0]

    def token(self, token_id: int) -> str:
        return self.vocabulary[token_id] if 0 <= token_id < len(self.vocabulary) else f"<{token_id}>"

    def readings(self, feature: int, snapshots: Sequence[int]) -> dict[int, Reading]:
        """The feature's contexts at each of ``snapshots`` that has any (top, then quantile, by rank)."""
        wanted = sorted(set(snapshots))
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        rows = self.connection.execute(
            "SELECT snapshot, kind, rank, seq, pos, first_pos, token_ids, activations FROM contexts "
            f"WHERE feature = ? AND snapshot IN ({marks}) ORDER BY snapshot, kind DESC, rank",
            (feature, *wanted),
        )
        found: dict[int, Reading] = {}
        for snapshot, kind, rank, seq, pos, first_pos, token_ids, activations in rows:
            ids = struct.unpack(f"<{len(token_ids) // 4}i", token_ids)
            acts = struct.unpack(f"<{len(activations) // 2}e", activations)
            window = Window(tuple(self.token(t) for t in ids), tuple(float(a) for a in acts))
            context = Context(kind, rank, seq, pos, pos - first_pos, window)
            found.setdefault(snapshot, Reading(snapshot, [])).contexts.append(context)
        return found


def phase_snapshots(emergence: int | None, peak: int | None, n_snapshots: int, wanted: Sequence[str]) -> list:
    """(phase, snapshot) of each wanted phase the feature has, in :data:`PHASES` order."""
    at = {"code": ALL_SNAPSHOTS, "emergence": emergence, "peak": peak, "last": n_snapshots - 1}
    return [(phase, at[phase]) for phase in ("code", *LIFE_PHASES) if phase in wanted and at[phase] is not None]


def plan_feature(
    contexts: FeatureContexts,
    feature: int,
    emergence: int | None,
    peak: int | None,
    wanted: Sequence[str],
    extra: Sequence[int] = (),
) -> FeaturePlan:
    """The feature's phases where it fires (each pointing at the reading whose explanation stands
    for it) and their contexts, with those of the ``extra`` readings (where explanations made
    elsewhere were stored)."""
    at = phase_snapshots(emergence, peak, contexts.n_snapshots, wanted)
    readings = contexts.readings(feature, [snapshot for _, snapshot in at] + list(extra))
    phases: list[Phase] = []
    explained_by: dict[tuple, int] = {}
    for phase, snapshot in at:
        reading = readings.get(snapshot)
        if reading is None or not reading.shown:
            continue  # it does not fire there: nothing to explain
        key = tuple(map(tuple, reading.examples))
        explained = explained_by.setdefault(key, snapshot)
        phases.append(Phase(phase, snapshot, explained))
    return FeaturePlan(feature, phases, readings)


@dataclass(frozen=True)
class Judged:
    """The held-out passages of one reading, as judged in a detection prompt."""

    passages: list[str]
    activating: list[bool]

    @property
    def n_activating(self) -> int:
        return sum(self.activating)

    @property
    def n_non_activating(self) -> int:
        return len(self.activating) - self.n_activating


def stable_random(*parts: object) -> random.Random:
    """A generator seeded from ``parts`` the same way in every process (Python's ``hash`` is not)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def score_prompt(span: int, n_examples: int, seed: int) -> str:
    """``scores.prompt`` of a score crosslens asks for: the prompt format, and what chose the
    passages judged (the rule, the window ``span``, ``n_examples``, the seed). Drift sets only
    scores of one model and prompt against each other, so scores judged on other passages (a run
    with another --seed or --n-examples) are never mixed in one feature's drift."""
    return f"{PROMPT_FORMAT} {HELD_OUT} window={span} n_examples={n_examples} seed={seed}"


def held_out_passages(reading: Reading, span: int, n_examples: int, seed: int, feature: int) -> Judged | None:
    """The reading's held-out passages in a seeded order: up to ``n_examples`` activating ones and
    at most as many non-activating ones, all of one length: ``span`` tokens, or where that leaves
    fewer non-activating passages than half the activating ones (a feature firing on many tokens
    of its windows), the longest length down to half of ``span`` that does not, else half of
    ``span`` with what it has. None where not one non-activating passage is found."""
    shortest = max(2, (span + 1) // 2)
    for length in range(span, shortest - 1, -1):
        judged = passages_of_length(reading, length, n_examples, seed, feature)
        if judged is not None and (2 * judged.n_non_activating >= judged.n_activating or length == shortest):
            return judged
    return None


def passages_of_length(reading: Reading, span: int, n_examples: int, seed: int, feature: int) -> Judged | None:
    """:func:`held_out_passages` at one length: each passage placed at random where it holds no
    token of a shown window (none where it cannot be)."""
    rng = stable_random(seed, feature, reading.snapshot, span)
    shown = reading.shown_tokens()
    activating, silent = [], []
    for context in reading.held_out:
        window, at = context.window, (context.seq, context.pos - context.focus)
        width = min(span, len(window.tokens))
        low, high = max(0, context.focus - width + 1), min(context.focus, len(window.tokens) - width)
        starts = [start for start in range(low, high + 1) if clear(shown, at, start, width)]
        if starts and window.acts[context.focus] > 0:
            start = rng.choice(starts)
            activating.append(passage(window.tokens[start : start + width]))
        for begin, stop in silent_stretches(window, span):
            starts = [start for start in range(begin, stop - span + 1) if clear(shown, at, start, span)]
            if starts:
                start = rng.choice(starts)
                silent.append(passage(window.tokens[start : start + span]))
    activating = activating[:n_examples]
    silent = rng.sample(silent, min(len(silent), len(activating))) if activating else []
    if not activating or not silent:
        return None
    items = [(text, True) for text in activating] + [(text, False) for text in silent]
    rng.shuffle(items)
    return Judged([text for text, _ in items], [label for _, label in items])


def clear(shown: set[tuple[int, int]], at: tuple[int, int], start: int, width: int) -> bool:
    """Whether tokens ``start`` .. ``start + width`` of a window whose first token is ``at``
    (sequence, position) hold none of ``shown``."""
    seq, first = at
    return all((seq, first + k) not in shown for k in range(start, start + width))


def silent_stretches(window: Window, span: int) -> list[tuple[int, int]]:
    """[start, stop) of each run of at least ``span`` tokens on which the feature is 0 (no special token)."""
    runs, start = [], None
    for k, (text, act) in enumerate([*zip(window.tokens, window.acts), ("", 1.0)]):
        quiet = act == 0 and not SPECIAL.match(text) and k < len(window.tokens)
        if quiet and start is None:
            start = k
        elif not quiet and start is not None:
            if k - start >= span:
                runs.append((start, k))
            start = None
    return runs
