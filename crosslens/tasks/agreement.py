"""English subject-verb agreement minimal pairs, from crosslens's own small lexicon.

Three constructions, each harder than the last because a noun of the other
number stands between the subject and the verb:

- ``simple``: ``The (adjective) pilot`` -> ``is`` / ``are``
- ``pp``:     ``The pilot near the towers`` -> ``is`` / ``are``
- ``rc``:     ``The pilot that the farmers saw`` -> ``is`` / ``are``

The corrupted prompt flips the subject's number and nothing else, so the model
should then prefer the other verb form.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

from crosslens.tasks.base import MinimalPair, TaskDataset

# (singular, plural) forms; regular plurals keep token counts equal in most BPE vocabularies.
SUBJECT_NOUNS: tuple[tuple[str, str], ...] = (
    ("pilot", "pilots"),
    ("farmer", "farmers"),
    ("doctor", "doctors"),
    ("teacher", "teachers"),
    ("painter", "painters"),
    ("student", "students"),
    ("officer", "officers"),
    ("singer", "singers"),
    ("driver", "drivers"),
    ("baker", "bakers"),
    ("lawyer", "lawyers"),
    ("writer", "writers"),
    ("nurse", "nurses"),
    ("player", "players"),
    ("manager", "managers"),
    ("soldier", "soldiers"),
)
PLACE_NOUNS: tuple[tuple[str, str], ...] = (
    ("tower", "towers"),
    ("table", "tables"),
    ("house", "houses"),
    ("garden", "gardens"),
    ("window", "windows"),
    ("road", "roads"),
    ("bridge", "bridges"),
    ("market", "markets"),
    ("river", "rivers"),
    ("school", "schools"),
)
ADJECTIVES: tuple[str, ...] = ("old", "young", "tall", "quiet", "busy", "famous", "tired")
PREPOSITIONS: tuple[str, ...] = ("near", "behind", "beside", "by", "above", "below")
# Past-tense verbs inside the relative clause do not agree, so they leak no number cue.
CLAUSE_VERBS: tuple[str, ...] = ("saw", "liked", "met", "helped", "called", "followed", "knew")
# (singular, plural) forms of the verb whose number the model must choose.
AGREEING_VERBS: tuple[tuple[str, str], ...] = (("is", "are"), ("was", "were"), ("has", "have"))

AgreementKind = Literal["simple", "pp", "rc"]
Attractor = Literal["mismatch", "match", "random"]


def sample_distinct(
    draw: Callable[[random.Random], MinimalPair], n: int, seed: int, task: str
) -> tuple[MinimalPair, ...]:
    """``n`` distinct examples from ``draw``; raises if the template space is too small."""
    if n < 1:
        raise ValueError(f"{task}: n must be at least 1, got {n}")
    rng = random.Random(seed)
    seen: dict[tuple[str, str, str, str | None], MinimalPair] = {}
    for _ in range(50 * n):
        pair = draw(rng)
        seen.setdefault((pair.clean, pair.correct, pair.wrong, pair.corrupted), pair)
        if len(seen) == n:
            return tuple(seen.values())
    raise ValueError(f"{task}: found only {len(seen)} distinct examples after {50 * n} draws; ask for n <= {len(seen)}")


def _attractor_number(subject_plural: bool, attractor: Attractor, rng: random.Random) -> bool:
    if attractor == "mismatch":
        return not subject_plural
    if attractor == "match":
        return subject_plural
    return rng.random() < 0.5


def agreement_pairs(
    kind: AgreementKind = "simple",
    n: int = 64,
    seed: int = 0,
    *,
    attractor: Attractor = "mismatch",
) -> TaskDataset:
    """Subject-verb agreement minimal pairs.

    Args:
        kind: ``"simple"``, ``"pp"`` (across a prepositional phrase) or ``"rc"``
            (across an object relative clause).
        n: number of distinct examples.
        seed: sampling seed (same seed, same examples).
        attractor: number of the intervening noun relative to the subject
            (``"mismatch"``, the diagnostic case; ``"match"``; or ``"random"``).
            Ignored for ``simple``.
    """
    if kind not in ("simple", "pp", "rc"):
        raise ValueError(f"agreement kind must be 'simple', 'pp' or 'rc', got {kind!r}")
    if attractor not in ("mismatch", "match", "random"):
        raise ValueError(f"attractor must be 'mismatch', 'match' or 'random', got {attractor!r}")

    def draw(rng: random.Random) -> MinimalPair:
        subject = rng.choice(SUBJECT_NOUNS)
        plural = rng.random() < 0.5
        verb = rng.choice(AGREEING_VERBS)
        meta: dict = {"task": f"agreement_{kind}", "subject_plural": plural, "verb": verb[0]}
        if kind == "simple":
            adjective = rng.choice(("",) + ADJECTIVES)
            opener = f"The {adjective} " if adjective else "The "
            template = opener + "{subject}"
        else:
            other = rng.choice(PLACE_NOUNS if kind == "pp" else SUBJECT_NOUNS)
            other_plural = _attractor_number(plural, attractor, rng)
            meta["attractor_plural"] = other_plural
            noun = other[int(other_plural)]
            if kind == "pp":
                template = "The {subject} " + f"{rng.choice(PREPOSITIONS)} the {noun}"
            else:
                template = "The {subject} " + f"that the {noun} {rng.choice(CLAUSE_VERBS)}"
        return MinimalPair(
            clean=template.format(subject=subject[int(plural)]),
            correct=" " + verb[int(plural)],
            wrong=" " + verb[int(not plural)],
            corrupted=template.format(subject=subject[int(not plural)]),
            meta=meta,
        )

    descriptions = {
        "simple": "subject-verb agreement right after the subject",
        "pp": "subject-verb agreement across a prepositional phrase with an attractor noun",
        "rc": "subject-verb agreement across an object relative clause with an attractor noun",
    }
    return TaskDataset(
        name=f"agreement_{kind}",
        pairs=sample_distinct(draw, n, seed, f"agreement_{kind}"),
        description=descriptions[kind],
    )
