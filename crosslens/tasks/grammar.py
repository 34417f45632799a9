"""A small probabilistic English-like grammar: the pico suite's training text and its probes.

Everything the pico model ever reads comes from here, so the phenomena we later look
for in its features are planted on purpose:

- subject-verb agreement, right after the subject ("The dogs run.");
- agreement across an *attractor*, a noun of the other number between the subject and
  its verb: a prepositional phrase ("The key to the cabinets is old.") or a relative
  clause ("The dog that the cats chase runs.");
- indirect-object identification with names ("When Anna and Ben went to the park,
  Ben gave a book to Anna.");
- repeated spans, which reward induction (copying what followed the last occurrence).

In training text the attractor's number is random, so "agree with the nearest noun" is
right most of the time but not always: a model first learns that shortcut and only
later tracks the true subject. The probes (:meth:`PicoGrammar.agreement_pairs`) always
put the attractor at the other number, so the shortcut gives the wrong answer there.

To extend the grammar, add words to :class:`~crosslens.tasks.lexicon.Lexicon` or a sentence kind to
:attr:`PicoGrammar.sentence_weights` (and a ``_sentence_<kind>`` method).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from crosslens.tasks.base import MinimalPair
from crosslens.tasks.lexicon import PUNCTUATION, Lexicon, Pair

AgreementKind = Literal["simple", "pp", "rc"]
AGREEMENT_KINDS: tuple[AgreementKind, ...] = ("simple", "pp", "rc")


@dataclass(frozen=True)
class AgreementSentence:
    """An agreement sentence cut at its agreeing verb (what a minimal pair needs)."""

    prefix: tuple[str, ...]
    """Words before the verb that must agree with the subject."""
    verb: Pair
    """(singular, plural) forms of that verb."""
    rest: tuple[str, ...]
    """Words after the verb (object, adjective, ...), without the final full stop."""
    subject_plural: bool
    """Number of the subject the verb agrees with."""
    attractor_plural: bool | None
    """Number of the noun between subject and verb, or None when there is none."""
    corrupted_prefix: tuple[str, ...]
    """The prefix with the subject's number flipped (determiner included), nothing else changed."""


def render(words: Sequence[str]) -> str:
    """Join words into text: spaces between words, none before punctuation."""
    out: list[str] = []
    for word in words:
        if out and word not in PUNCTUATION:
            out.append(" ")
        out.append(word)
    return "".join(out)


def _capitalize(words: list[str]) -> list[str]:
    return [words[0][:1].upper() + words[0][1:], *words[1:]] if words else words


@dataclass(frozen=True)
class PicoGrammar:
    """Samples pico documents and the minimal pairs that probe them.

    Every sampler takes a ``random.Random`` (or a seed), so text is reproducible and
    independent of global random state.
    """

    lexicon: Lexicon = field(default_factory=Lexicon)
    """The words."""
    sentence_weights: tuple[tuple[str, float], ...] = (
        ("simple", 0.18),
        ("pp", 0.16),
        ("rc", 0.12),
        ("subject_rc", 0.04),
        ("coordinated", 0.12),
        ("fronted", 0.08),
        ("ioi", 0.15),
        ("filler", 0.15),
    )
    """Relative frequency of each sentence kind in documents."""
    sentences_per_document: tuple[int, int] = (2, 6)
    """Inclusive range of sentences in a document."""
    p_numbered_determiner: float = 0.3
    """Chance that a noun phrase uses a number-marked determiner ("these") instead of "the"."""
    p_adjective: float = 0.25
    """Chance of an adjective before a noun."""
    p_past_clause_verb: float = 0.5
    """Chance that a relative clause's verb is past tense (no number cue) rather than agreeing."""
    p_repeat_sentence: float = 0.15
    """Chance that a document ends by repeating one of its earlier sentences verbatim."""
    p_span_document: float = 0.08
    """Chance that a document is a random word span repeated (pure induction)."""
    span_length: tuple[int, int] = (4, 12)
    """Inclusive range of the random span's length, in words."""

    def __post_init__(self) -> None:
        unknown = [kind for kind, _ in self.sentence_weights if not hasattr(self, f"_sentence_{kind}")]
        if unknown:
            raise ValueError(
                f"PicoGrammar.sentence_weights names unknown sentence kinds {unknown}; "
                "define a _sentence_<kind> method for each"
            )
        if not any(weight > 0 for _, weight in self.sentence_weights):
            raise ValueError("PicoGrammar.sentence_weights needs at least one positive weight")
        low, high = self.sentences_per_document
        if not 1 <= low <= high:
            raise ValueError(f"sentences_per_document={self.sentences_per_document} must satisfy 1 <= low <= high")

    # ------------------------------------------------------------------ vocabulary
    def vocabulary(self) -> tuple[str, ...]:
        """Every token the grammar can emit: the lexicon, capitalised sentence openers, punctuation."""
        lex = self.lexicon
        openers = [lex.neutral_determiner, "then", *lex.subordinators, *lex.prepositions]
        openers += [word for pair in lex.numbered_determiners for word in pair]
        capitalised = {word[:1].upper() + word[1:] for word in openers}
        return tuple(sorted(set(lex.words()) | capitalised | set(PUNCTUATION)))

    # ------------------------------------------------------------------ phrases
    def _noun_phrase(self, rng: random.Random, noun: Pair, plural: bool) -> list[str]:
        if rng.random() < self.p_numbered_determiner:
            determiner = rng.choice(self.lexicon.numbered_determiners)[plural]
        else:
            determiner = self.lexicon.neutral_determiner
        words = [determiner]
        if rng.random() < self.p_adjective:
            words.append(rng.choice(self.lexicon.adjectives))
        words.append(noun[plural])
        return words

    def _random_noun_phrase(self, rng: random.Random) -> list[str]:
        nouns = rng.choice((self.lexicon.animate_nouns, self.lexicon.thing_nouns))
        return self._noun_phrase(rng, rng.choice(nouns), rng.random() < 0.5)

    def _verb_phrase(self, rng: random.Random, animate: bool) -> tuple[Pair, list[str]]:
        """An agreeing verb and what follows it."""
        lex = self.lexicon
        roll = rng.random()
        if roll < 0.3:
            copula = rng.choice(lex.copulas)
            if rng.random() < 0.7:
                return copula, [rng.choice(lex.adjectives)]
            return copula, [rng.choice(lex.prepositions), *self._random_noun_phrase(rng)]
        if roll < 0.4:
            return lex.possessive_verb, self._random_noun_phrase(rng)
        if not animate:
            return rng.choice(lex.thing_verbs), []
        if roll < 0.7:
            return rng.choice(lex.intransitive_verbs), []
        return rng.choice(lex.transitive_verbs), self._random_noun_phrase(rng)

    def _flip_subject(self, words: list[str], subject: Pair, plural: bool) -> list[str]:
        """``words`` (starting with the subject's noun phrase) with the subject's number flipped."""
        flipped = list(words)
        determiner = words[0]
        for pair in self.lexicon.numbered_determiners:
            if determiner == pair[plural]:
                flipped[0] = pair[not plural]
        head = flipped.index(subject[plural])
        flipped[head] = subject[not plural]
        return flipped

    # ------------------------------------------------------------------ agreement
    def agreement_sentence(
        self,
        rng: random.Random,
        kind: AgreementKind | Literal["subject_rc"],
        *,
        attractor: Literal["random", "mismatch", "match"] = "random",
        numbers: tuple[bool, bool] | None = None,
    ) -> AgreementSentence:
        """One agreement sentence of ``kind`` ("simple", "pp", "rc" or "subject_rc").

        ``attractor`` sets the number of the intervening noun relative to the subject:
        "random" (training text), "mismatch" (the diagnostic probe) or "match".
        ``numbers`` = (subject plural, attractor plural) overrides both draws. The words
        drawn afterwards never depend on the numbers, so replaying ``rng`` with flipped
        ``numbers`` gives the same sentence in the other number.
        """
        lex = self.lexicon
        if numbers is not None:
            plural, attractor_plural = numbers
        else:
            plural = rng.random() < 0.5
            if attractor == "random":
                attractor_plural = rng.random() < 0.5
            else:
                attractor_plural = plural if attractor == "match" else not plural
        animate = kind in ("rc", "subject_rc") or rng.random() < 0.6
        subject = rng.choice(lex.animate_nouns if animate else lex.thing_nouns)
        prefix = self._noun_phrase(rng, subject, plural)
        if kind == "simple":
            attractor_number = None
        elif kind == "pp":
            other = rng.choice(rng.choice((lex.animate_nouns, lex.thing_nouns)))
            prefix += [rng.choice(lex.prepositions), *self._noun_phrase(rng, other, attractor_plural)]
            attractor_number = attractor_plural
        elif kind == "rc":
            # Object relative: "the dog that the cats chase": the clause's own subject is the attractor.
            other = rng.choice(lex.animate_nouns)
            if rng.random() < self.p_past_clause_verb:
                clause_verb = rng.choice(lex.past_transitive_verbs)
            else:
                clause_verb = rng.choice(lex.transitive_verbs)[attractor_plural]
            prefix += ["that", *self._noun_phrase(rng, other, attractor_plural), clause_verb]
            attractor_number = attractor_plural
        elif kind == "subject_rc":
            # Subject relative: "the dog that chases the cats": the clause's verb agrees with the head too.
            other = rng.choice(rng.choice((lex.animate_nouns, lex.thing_nouns)))
            prefix += [
                "that",
                rng.choice(lex.transitive_verbs)[plural],
                *self._noun_phrase(rng, other, attractor_plural),
            ]
            attractor_number = attractor_plural
        else:
            raise ValueError(f"agreement kind must be 'simple', 'pp', 'rc' or 'subject_rc', got {kind!r}")
        verb, rest = self._verb_phrase(rng, animate)
        return AgreementSentence(
            prefix=tuple(_capitalize(prefix)),
            verb=verb,
            rest=tuple(rest),
            subject_plural=plural,
            attractor_plural=attractor_number,
            corrupted_prefix=tuple(_capitalize(self._flip_subject(prefix, subject, plural))),
        )

    def agreement_pairs(self, kind: AgreementKind, n: int, seed: int) -> list[MinimalPair]:
        """``n`` agreement minimal pairs; attractors (pp, rc) always have the subject's other number.

        ``clean`` is the sentence up to the verb, ``correct``/``wrong`` the verb's agreeing and
        non-agreeing forms with a leading space, and ``corrupted`` the prefix with the subject's
        number flipped (so there the other form is right).

        Pairs come in twins (0 and 1, 2 and 3, ...): the same words with every number
        flipped, so each verb form is the right answer equally often and a model that
        ignores the subject scores 50% however its biases fall.
        """
        if kind not in AGREEMENT_KINDS:
            raise ValueError(f"agreement kind must be one of {AGREEMENT_KINDS}, got {kind!r}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        rng = random.Random(f"pico-agreement-{kind}-{seed}")
        pairs = []
        while len(pairs) < n:
            plural = rng.random() < 0.5
            state = rng.getstate()
            twins = []
            for subject_plural in (plural, not plural):
                rng.setstate(state)
                twins.append(self.agreement_sentence(rng, kind, numbers=(subject_plural, not subject_plural)))
            pairs += [self._agreement_pair(kind, sentence) for sentence in twins]
        return pairs[:n]

    @staticmethod
    def _agreement_pair(kind: str, sentence: AgreementSentence) -> MinimalPair:
        return MinimalPair(
            clean=render(sentence.prefix),
            correct=" " + sentence.verb[sentence.subject_plural],
            wrong=" " + sentence.verb[not sentence.subject_plural],
            corrupted=render(sentence.corrupted_prefix),
            meta={
                "task": f"agreement_{kind}",
                "subject_plural": sentence.subject_plural,
                "attractor_plural": sentence.attractor_plural,
                "verb": sentence.verb[0],
            },
        )

    # ------------------------------------------------------------------ IOI
    def ioi_sentence(self, rng: random.Random, *, swap: bool = False) -> tuple[list[str], str, str, str]:
        """An IOI sentence cut before the final name: (prefix words, indirect object, subject, third name).

        ``swap`` makes the other introduced person the repeated subject (same draws otherwise).
        """
        lex = self.lexicon
        io, subject, third = rng.sample(lex.names, 3)
        first, second = (io, subject) if rng.random() < 0.5 else (subject, io)
        if swap:
            io, subject = subject, io
        place, thing = rng.choice(lex.ioi_places), rng.choice(lex.ioi_objects)
        determiner = rng.choice(("a", "the"))
        giving = [subject, rng.choice(lex.transfer_verbs), determiner, thing, "to"]
        setting = rng.choice((["went", "to"], ["arrived", "at"], ["were", "at"], ["walked", "into"], ["met", "at"]))
        pair_at_place = [first, "and", second, *setting, "the", place]
        template = rng.randrange(3)
        if template == 0:  # "When A and B went to the park, B gave a book to"
            words = [rng.choice(lex.subordinators), *pair_at_place, ",", *giving]
        elif template == 1:  # "A and B went to the park. B gave a book to"
            words = [*pair_at_place, ".", *giving]
        else:  # "Then A and B met at the park, and B gave a book to"
            words = ["then", *pair_at_place, ",", "and", *giving]
        return _capitalize(words), io, subject, third

    def ioi_pairs(self, n: int, seed: int) -> list[MinimalPair]:
        """``n`` IOI pairs: correct is the indirect object's name, wrong the repeated subject's.

        ``corrupted`` replaces the repeated subject with a third name, which removes the cue.
        Pairs come in twins that differ only in which of the two people is repeated, so
        each name is the right answer as often as the wrong one.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        rng = random.Random(f"pico-ioi-{seed}")
        pairs: list[MinimalPair] = []
        while len(pairs) < n:
            state = rng.getstate()
            for swap in (False, True):
                rng.setstate(state)
                pairs.append(self._ioi_pair(*self.ioi_sentence(rng, swap=swap)))
        return pairs[:n]

    @staticmethod
    def _ioi_pair(words: list[str], io: str, subject: str, third: str) -> MinimalPair:
        corrupted = list(words)
        corrupted[len(words) - 5] = third  # the subject of the giving clause
        return MinimalPair(
            clean=render(words),
            correct=" " + io,
            wrong=" " + subject,
            corrupted=render(corrupted),
            meta={"task": "ioi", "order": "ABBA" if words.index(io) < words.index(subject) else "BABA"},
        )

    # ------------------------------------------------------------------ documents
    def _sentence_simple(self, rng: random.Random) -> list[str]:
        return self._agreement_words(rng, "simple")

    def _sentence_pp(self, rng: random.Random) -> list[str]:
        return self._agreement_words(rng, "pp")

    def _sentence_rc(self, rng: random.Random) -> list[str]:
        return self._agreement_words(rng, "rc")

    def _sentence_subject_rc(self, rng: random.Random) -> list[str]:
        return self._agreement_words(rng, "subject_rc")

    def _sentence_coordinated(self, rng: random.Random) -> list[str]:
        """Two clauses joined by "and": the second subject is the verb's nearest noun, not the sentence's first."""
        first = self._agreement_words(rng, rng.choice(("simple", "pp")), end=False)
        return [*first, "and", *self._agreement_words(rng, "simple", sentence_start=False)]

    def _sentence_fronted(self, rng: random.Random) -> list[str]:
        """A fronted prepositional phrase: "Near the towers, the pilot waits." """
        phrase = [rng.choice(self.lexicon.prepositions), *self._random_noun_phrase(rng), ","]
        return [*_capitalize(phrase), *self._agreement_words(rng, "simple", sentence_start=False)]

    def _agreement_words(
        self, rng: random.Random, kind: str, *, sentence_start: bool = True, end: bool = True
    ) -> list[str]:
        sentence = self.agreement_sentence(rng, kind)  # type: ignore[arg-type]
        prefix = list(sentence.prefix) if sentence_start else [sentence.prefix[0].lower(), *sentence.prefix[1:]]
        return [*prefix, sentence.verb[sentence.subject_plural], *sentence.rest, *(["."] if end else [])]

    def _sentence_ioi(self, rng: random.Random) -> list[str]:
        words, io, _, _ = self.ioi_sentence(rng)
        return [*words, io, "."]

    def _sentence_filler(self, rng: random.Random) -> list[str]:
        """Past-tense sentences: no agreement, names in other roles than IOI."""
        lex = self.lexicon
        if rng.random() < 0.4:
            subject = [rng.choice(lex.names)]
        else:
            subject = self._noun_phrase(rng, rng.choice(lex.animate_nouns), rng.random() < 0.5)
        if rng.random() < 0.5:
            words = [*subject, rng.choice(lex.past_intransitive_verbs)]
            if rng.random() < 0.5:
                words += [rng.choice(lex.prepositions), *self._random_noun_phrase(rng)]
        else:
            obj = [rng.choice(lex.names)] if rng.random() < 0.3 else self._random_noun_phrase(rng)
            words = [*subject, rng.choice(lex.past_transitive_verbs), *obj]
        return [*_capitalize(words), "."]

    def _span_document(self, rng: random.Random) -> list[str]:
        """A random word span, some filler, then the span again: only induction predicts the copy."""
        words = self.lexicon.words()
        span = [rng.choice(words) for _ in range(rng.randint(*self.span_length))]
        middle = self._sentence_filler(rng) if rng.random() < 0.5 else []
        return [*span, ".", *middle, *span, "."]

    def sample_document(self, rng: random.Random) -> str:
        """One document: a few sentences of mixed kinds (or, sometimes, a repeated random span)."""
        if rng.random() < self.p_span_document:
            return render(self._span_document(rng))
        kinds = [kind for kind, _ in self.sentence_weights]
        weights = [weight for _, weight in self.sentence_weights]
        sentences = [
            getattr(self, f"_sentence_{kind}")(rng)
            for kind in rng.choices(kinds, weights, k=rng.randint(*self.sentences_per_document))
        ]
        if rng.random() < self.p_repeat_sentence:
            sentences.append(rng.choice(sentences))
        return render([word for sentence in sentences for word in sentence])

    def sample_documents(self, n: int, seed: int | str) -> list[str]:
        """``n`` documents drawn with their own generator seeded by ``seed``."""
        rng = random.Random(f"pico-documents-{seed}")
        return [self.sample_document(rng) for _ in range(n)]
