"""``crosslens attribute``: integrated-gradient attribution of crosscoder features on a task."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.cli.common import DeviceFlags, SuiteFlags
from crosslens.cli.spec import Subcommand
from crosslens.commands.attribute import TASK_DEFAULT


@dataclass
class AttributeFlags:
    crosscoder: str = field(metadata={"flag": "--crosscoder"})
    """RUN_DIR of crosslens train (its final/ folder also works), or RELEASE/ID of a pretrained release."""
    suite: str | None = None
    """The suite to attribute on (default: the one recorded with the crosscoder). Its snapshots (--steps,
    --n-snapshots; default: the crosscoder's) must be the crosscoder's, revisions, steps and weights: they
    are checked before any model loads (a local suite's weight files are hashed for it)."""
    task: str = TASK_DEFAULT
    """Task name (see crosslens.tasks) or a pairs file (BLiMP or crosslens JSONL, CLAMS text); several,
    comma-separated, run together, one per language (agreement_multilingual = its en, fr and es tasks), with
    RelIE per language side by side."""
    task_file: str | None = None
    """A MultiBLiMP-style JSONL file (sentence_good, sentence_bad, language): one task per language."""
    skip_invalid: bool = False
    """Drop the lines of a pairs file that do not parse, instead of refusing the file. Pairs the suite's
    tokenizer cannot score are dropped either way, with a warning naming the first."""
    n_examples: int = field(default=64, metadata={"min": 1})
    """Minimal pairs to score."""
    out: str = "attribution.json"
    """The IE table (a .json file); the report is written beside it with .html, plots and tables in a
    STEM_causal/ folder. With several tasks, each task's IE table goes in that folder instead."""
    ie_threshold: float | None = field(default=None, metadata={"min": 0})
    """Zero each per-token |IE| at or below this before averaging over a prompt's positions, as Bayazit et
    al. do at 0.1 (their code makes it optional); unset, every effect is kept. Either way a feature is
    classed only where its IE clears a noise floor (2% of the mean clean-to-patched metric gap, with a
    bootstrap interval), which the paper does not have, so the classes are not exactly the paper's."""
    allow_chance: bool = False
    """Attribute even when the model is at chance on the pairs at every snapshot (accuracy's 95% interval
    contains 50%), which is refused by default: there is no behaviour to attribute. Every snapshot at chance
    is marked 'no behaviour', with no feature classed there and no keep-only restoration shown."""


COMMAND = Subcommand(
    ("attribute",),
    "integrated-gradient attribution of crosscoder features",
    (AttributeFlags, SuiteFlags, DeviceFlags),
    "crosslens.commands.attribute:attribute",
)
