"""The pico suite: a tiny Pythia-architecture model trained offline on a generated grammar.

``build_pico_suite`` trains it from scratch and saves log-spaced checkpoints as local
Hugging Face models; ``pico_suite`` returns them as a ``CheckpointSuite``. The grammar
(``crosslens.tasks.grammar``) also makes the minimal pairs that probe what it learned.

:class:`PicoConfig` imports no torch; the other names are resolved on first use, so
``crosslens suite build --help`` reads the config without loading the trainer.
"""

from __future__ import annotations

from crosslens.core.lazy import lazy_attributes
from crosslens.pico.config import PicoConfig

_LAZY = {
    "build_pico_suite": "crosslens.pico.build",
    "pico_suite": "crosslens.pico.build",
    "evaluate_pairs": "crosslens.pico.evals",
    "format_eval_table": "crosslens.pico.evals",
    "PicoGrammar": "crosslens.tasks.grammar",
}


def sample_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` documents of the default grammar (the pico training distribution), reproducible by ``seed``."""
    from crosslens.tasks.grammar import PicoGrammar

    return PicoGrammar().sample_documents(n, seed)


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "PicoConfig",
    "build_pico_suite",
    "evaluate_pairs",
    "format_eval_table",
    "pico_suite",
]
