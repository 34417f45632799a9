"""The words of the pico grammar (:mod:`crosslens.tasks.grammar`), grouped by the role they play.

Every word becomes one token of the pico tokenizer, so what the pico model can read is fixed
here; :class:`Lexicon` checks, when built, that each word is one token's worth of text and that
each number-marked word comes as a (singular, plural) pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from crosslens.tasks.agreement import PLACE_NOUNS, SUBJECT_NOUNS
from crosslens.tasks.ioi import NAMES, OBJECTS, PLACES

Pair = tuple[str, str]
"""A (singular, plural) word pair: noun forms, or present-tense verb forms."""

PUNCTUATION = (".", ",")
"""The punctuation the grammar writes, each its own token."""


@dataclass(frozen=True)
class Lexicon:
    """The words of the pico grammar, grouped by the role they play.

    Every word here becomes exactly one token of the pico tokenizer. Number-marked
    words come as (singular, plural) pairs so that flipping a phrase's number is a
    lookup. The word lists include those of ``crosslens.tasks`` so its probes stay
    in-vocabulary and in-distribution for the pico model.
    """

    neutral_determiner: str = "the"
    """The determiner used for either number (most noun phrases)."""
    numbered_determiners: tuple[Pair, ...] = (("this", "these"), ("a", "some"), ("every", "all"), ("one", "two"))
    """(singular, plural) determiners, which also mark a phrase's number."""
    animate_nouns: tuple[Pair, ...] = (
        *SUBJECT_NOUNS,
        ("dog", "dogs"),
        ("cat", "cats"),
        ("horse", "horses"),
        ("bird", "birds"),
        ("child", "children"),
        ("man", "men"),
        ("woman", "women"),
        ("king", "kings"),
        ("queen", "queens"),
        ("wolf", "wolves"),
        ("mouse", "mice"),
        ("fox", "foxes"),
    )
    """People and animals: subjects of action verbs, and the subjects inside relative clauses."""
    thing_nouns: tuple[Pair, ...] = (
        *PLACE_NOUNS,
        ("key", "keys"),
        ("cabinet", "cabinets"),
        ("book", "books"),
        ("box", "boxes"),
        ("door", "doors"),
        ("car", "cars"),
        ("tree", "trees"),
        ("bottle", "bottles"),
        ("chair", "chairs"),
        ("lamp", "lamps"),
        ("letter", "letters"),
        ("picture", "pictures"),
        ("ring", "rings"),
        ("bag", "bags"),
        ("ball", "balls"),
        ("gift", "gifts"),
        ("drink", "drinks"),
        ("office", "offices"),
        ("station", "stations"),
        ("library", "libraries"),
        ("park", "parks"),
        ("store", "stores"),
        ("beach", "beaches"),
    )
    """Objects and places."""
    adjectives: tuple[str, ...] = (
        "old",
        "young",
        "tall",
        "quiet",
        "busy",
        "famous",
        "tired",
        "big",
        "small",
        "red",
        "happy",
        "brave",
        "green",
        "new",
        "heavy",
        "dark",
    )
    """Adjectives; any of them may modify any noun."""
    prepositions: tuple[str, ...] = (
        "near",
        "behind",
        "beside",
        "by",
        "above",
        "below",
        "under",
        "with",
        "of",
        "to",
        "on",
    )
    """Prepositions that attach a noun phrase to a noun ("the key to the cabinets")."""
    intransitive_verbs: tuple[Pair, ...] = (
        ("runs", "run"),
        ("sleeps", "sleep"),
        ("smiles", "smile"),
        ("waits", "wait"),
        ("laughs", "laugh"),
        ("works", "work"),
        ("swims", "swim"),
        ("sings", "sing"),
        ("arrives", "arrive"),
        ("talks", "talk"),
    )
    """Present-tense (singular, plural) verbs without an object, for animate subjects."""
    transitive_verbs: tuple[Pair, ...] = (
        ("sees", "see"),
        ("likes", "like"),
        ("chases", "chase"),
        ("follows", "follow"),
        ("helps", "help"),
        ("finds", "find"),
        ("knows", "know"),
        ("watches", "watch"),
        ("admires", "admire"),
        ("visits", "visit"),
        ("calls", "call"),
        ("meets", "meet"),
    )
    """Present-tense (singular, plural) verbs with an object, for animate subjects."""
    thing_verbs: tuple[Pair, ...] = (
        ("falls", "fall"),
        ("breaks", "break"),
        ("shines", "shine"),
        ("moves", "move"),
        ("stands", "stand"),
    )
    """Present-tense (singular, plural) verbs without an object, for inanimate subjects."""
    copulas: tuple[Pair, ...] = (("is", "are"), ("was", "were"))
    """(singular, plural) forms of "be", followed by an adjective or a prepositional phrase."""
    possessive_verb: Pair = ("has", "have")
    """(singular, plural) forms of "have", followed by a noun phrase."""
    past_transitive_verbs: tuple[str, ...] = (
        "saw",
        "liked",
        "met",
        "helped",
        "called",
        "followed",
        "knew",
        "found",
        "watched",
        "visited",
    )
    """Past-tense verbs with an object; they carry no number, so they leak no agreement cue."""
    past_intransitive_verbs: tuple[str, ...] = ("ran", "slept", "smiled", "waited", "laughed", "worked", "walked")
    """Past-tense verbs without an object, for filler sentences."""
    names: tuple[str, ...] = (
        *NAMES,
        "Ben",
        "Clara",
        "Leo",
        "Rosa",
    )
    """First names for the indirect-object (IOI) sentences."""
    ioi_places: tuple[str, ...] = PLACES
    """Places two people go to in an IOI sentence (singular thing nouns)."""
    ioi_objects: tuple[str, ...] = OBJECTS
    """Things handed over in an IOI sentence (singular thing nouns)."""
    transfer_verbs: tuple[str, ...] = ("gave", "handed", "passed", "offered", "threw", "sent", "showed")
    """Past-tense verbs of giving: "{subject} gave a book to {indirect object}"."""
    function_words: tuple[str, ...] = (
        "that",
        "and",
        "when",
        "after",
        "while",
        "then",
        "went",
        "arrived",
        "were",
        "walked",
        "into",
        "at",
        "met",
        "to",
        "a",
    )
    """Glue words of the sentence templates (some also appear above)."""
    subordinators: tuple[str, ...] = ("when", "after", "while")
    """Words that open an IOI sentence's first clause ("When A and B went ..., B gave ...")."""

    def __post_init__(self) -> None:
        for name in ("animate_nouns", "thing_nouns", "intransitive_verbs", "transitive_verbs", "thing_verbs"):
            for pair in getattr(self, name):
                if len(pair) != 2 or pair[0] == pair[1]:
                    raise ValueError(
                        f"Lexicon.{name}: {pair!r} must be a (singular, plural) pair of two different "
                        "words; words with one form for both numbers cannot show agreement"
                    )
        thing_words = {singular for singular, _ in self.thing_nouns}
        for name in ("ioi_places", "ioi_objects"):
            missing = sorted(set(getattr(self, name)) - thing_words)
            if missing:
                raise ValueError(f"Lexicon.{name}: {missing} are not singular thing_nouns; add them there too")
        for word in self.words():
            if not word or any(ch.isspace() for ch in word) or any(p in word for p in PUNCTUATION):
                raise ValueError(f"Lexicon word {word!r} must be a single word without spaces or punctuation")

    def words(self) -> tuple[str, ...]:
        """Every word the grammar can emit (lower-case forms; see
        :meth:`~crosslens.tasks.grammar.PicoGrammar.vocabulary`)."""
        out: set[str] = {self.neutral_determiner}
        for pairs in (
            self.numbered_determiners,
            self.animate_nouns,
            self.thing_nouns,
            self.intransitive_verbs,
            self.transitive_verbs,
            self.thing_verbs,
            self.copulas,
            (self.possessive_verb,),
        ):
            for pair in pairs:
                out.update(pair)
        for words in (
            self.adjectives,
            self.prepositions,
            self.past_transitive_verbs,
            self.past_intransitive_verbs,
            self.names,
            self.transfer_verbs,
            self.function_words,
        ):
            out.update(words)
        return tuple(sorted(out))
