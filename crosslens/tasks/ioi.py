"""Indirect-object identification (IOI) minimal pairs, from crosslens's own templates.

Two people are introduced; one of them (the subject) is named again and gives
something to "...". The model should continue with the other person (the
indirect object), not the repeated subject. The corrupted prompt replaces the
repeated subject with a third name, which removes the cue that tells the two
first names apart.
"""

from __future__ import annotations

import random

from crosslens.tasks.agreement import sample_distinct
from crosslens.tasks.base import MinimalPair, TaskDataset

NAMES: tuple[str, ...] = (
    "Mary",
    "John",
    "Anna",
    "Paul",
    "Sarah",
    "Mark",
    "Laura",
    "James",
    "Emma",
    "David",
    "Kate",
    "Peter",
    "Lucy",
    "Tom",
    "Alice",
    "Daniel",
)
PLACES: tuple[str, ...] = ("store", "park", "school", "office", "station", "garden", "beach", "library")
OBJECTS: tuple[str, ...] = ("book", "drink", "letter", "ring", "key", "bag", "ball", "gift")
# {io}/{s} are the two people, in either order; {s2} is the repeated subject slot.
TEMPLATES: tuple[str, ...] = (
    "When {first} and {second} went to the {place}, {s2} gave a {object} to",
    "After {first} and {second} arrived at the {place}, {s2} handed the {object} to",
    "While {first} and {second} were at the {place}, {s2} passed a {object} to",
    "{first} and {second} walked into the {place}. {s2} offered the {object} to",
    "Then {first} and {second} met at the {place}, and {s2} threw the {object} to",
)


def ioi_pairs(n: int = 64, seed: int = 0) -> TaskDataset:
    """IOI minimal pairs: correct is the indirect object's name, wrong the subject's."""

    def draw(rng: random.Random) -> MinimalPair:
        io, subject, third = rng.sample(NAMES, 3)
        template = rng.choice(TEMPLATES)
        io_first = rng.random() < 0.5
        first, second = (io, subject) if io_first else (subject, io)
        slots = {"first": first, "second": second, "place": rng.choice(PLACES), "object": rng.choice(OBJECTS)}
        return MinimalPair(
            clean=template.format(s2=subject, **slots),
            correct=" " + io,
            wrong=" " + subject,
            corrupted=template.format(s2=third, **slots),
            meta={"task": "ioi", "template": TEMPLATES.index(template), "order": "ABBA" if io_first else "BABA"},
        )

    return TaskDataset(
        name="ioi",
        pairs=sample_distinct(draw, n, seed, "ioi"),
        description="indirect-object identification: name the person who did not repeat",
    )
