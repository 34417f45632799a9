"""``crosslens train``: its flags are the fields of the runner config (and its nested
architecture and logging configs), plus what only the command needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.cli.common import DeviceFlags, SuiteFlags, TokenBudgetFlags, TokenFlags
from crosslens.cli.spec import Subcommand
from crosslens.training.config import CrosscoderRunnerConfig


@dataclass
class TrainFlags:
    store_path: str | None = field(default=None, metadata={"flag": "--store"})
    """Activation store (required unless --stream, or a --recipe that harvests one)."""
    stream: bool = False
    """Train on activations harvested as training goes from snapshot models kept in memory, no store
    on disk: the suite, snapshot and token flags say what, as for harvest."""
    recipe: str | None = None
    """A shipped recipe (crosslens plan --list-recipes): its settings are the defaults, explicit flags win;
    without --store, what harvest --recipe writes (the token and snapshot flags apply as there) is harvested
    into OUT/activations and OUT/activations-heldout first."""
    eval_store: str | None = None
    """Store for the final quality table (default: STORE-heldout written by harvest, else the training store).
    The store measured on is re-hashed against its manifest (the training store: sizes only), and a
    STORE-heldout is refused unless it was split from STORE."""
    spliced_seqs: int = field(default=16, metadata={"min": 0})
    """Token rows of the quality table's store on which each snapshot's spliced-model loss is measured
    (CE recovered against the --spliced-ablation floor, KL from the clean model); it loads every snapshot
    model once. 0 skips it."""
    spliced_ablation: str = field(default="zero", metadata={"choices": ("zero", "mean")})
    """The floor of the recovered loss: the activation zeroed, or replaced by its mean over the tokens."""
    resume: bool = False
    """Continue from the last checkpoint in --out (a run there that finished with these settings is
    reported, not trained again)."""
    overwrite: bool = False
    """Remove another run's results from --out (run.json, final/, checkpoints, quality.json, report
    sections) and train anew; without it, train refuses a folder holding them."""
    dtype: str | None = None
    """dtype of the snapshot models when a --recipe harvests or --stream keeps them resident (float32,
    bfloat16, float16); crosscoder parameters stay float32."""


COMMAND = Subcommand(
    ("train",),
    "train a crosscoder on an activation store, or streamed from resident snapshot models",
    (TrainFlags, CrosscoderRunnerConfig, SuiteFlags, TokenBudgetFlags, TokenFlags, DeviceFlags),
    "crosslens.commands.train:train",
)
