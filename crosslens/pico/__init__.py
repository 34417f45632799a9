"""The pico suite: a tiny Pythia-architecture model trained offline on a generated grammar.

``build_pico_suite`` trains it from scratch and saves log-spaced checkpoints as local
Hugging Face models; ``pico_suite`` returns them as a ``CheckpointSuite``. The grammar
(``crosslens.tasks.grammar``) also makes the minimal pairs that probe what it learned.
"""

from crosslens.pico.build import build_pico_suite, pico_suite
from crosslens.pico.evals import evaluate_pairs, format_eval_table
from crosslens.tasks.grammar import Lexicon, PicoGrammar
from crosslens.pico.train import PicoConfig


def sample_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` documents of the default grammar (the pico training distribution), reproducible by ``seed``."""
    return PicoGrammar().sample_documents(n, seed)


__all__ = [
    "PicoConfig",
    "build_pico_suite",
    "evaluate_pairs",
    "format_eval_table",
    "pico_suite",
]
