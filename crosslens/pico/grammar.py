"""The pico grammar now lives in :mod:`crosslens.tasks.grammar` (pure text, no model), so that
``tasks`` sits below ``pico``; this module keeps the old import path working."""

from crosslens.tasks.grammar import (  # noqa: F401
    AGREEMENT_KINDS,
    PUNCTUATION,
    AgreementKind,
    AgreementSentence,
    Lexicon,
    Pair,
    PicoGrammar,
    render,
)
