"""``crosslens suite build`` and ``crosslens suite list``: model suites with training checkpoints.

The build flags set fields of the pico suite's ``PicoConfig`` (named in each help line); its
defaults are that config's, shown by ``crosslens suite build --help``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.cli.spec import Subcommand


@dataclass
class SuiteBuildFlags:
    corpus: list[str] | None = field(default=None, metadata={"nargs": "+", "metavar": "FILE|DIR|dataset:NAME:COLUMN"})
    """Train on your text: text files, folders of .txt files, or dataset:NAME:COLUMN (a datasets dataset
    available offline); a BPE tokenizer is trained on it (default: crosslens's generated grammar)."""
    eval: str | None = field(default=None, metadata={"metavar": "PAIRS"})
    """Minimal pairs (BLiMP or crosslens JSONL, or CLAMS text) scored at every checkpoint by summed
    log-probability of each continuation."""
    n_layers: int | None = field(default=None, metadata={"min": 1})
    """Transformer blocks (PicoConfig.n_layers, default 2)."""
    d_model: int | None = field(default=None, metadata={"min": 1})
    """Residual width (PicoConfig.d_model, default 128; the MLP is 4x this)."""
    n_heads: int | None = field(default=None, metadata={"min": 1})
    """Attention heads (PicoConfig.n_heads, default 4)."""
    train_steps: int | None = field(default=None, metadata={"min": 1})
    """Optimizer steps (PicoConfig.n_steps, default 640)."""
    checkpoints: int | None = field(default=None, metadata={"min": 16})
    """About how many checkpoints to save, log-spaced early then even (>= 16; default 21)."""
    seq_len: int | None = field(default=None, metadata={"min": 8})
    """Tokens per training row (PicoConfig.seq_len, default 64)."""
    batch_size: int | None = field(default=None, metadata={"min": 1})
    """Rows per step (PicoConfig.batch_size, default 32)."""
    bpe_vocab: int | None = field(default=None, metadata={"min": 2})
    """Vocabulary of the BPE tokenizer trained on --corpus (PicoConfig.bpe_vocab_size, default 4096)."""
    small: bool = False
    """The small, fast configuration used by tests."""
    long: bool = False
    """A longer build (1536 steps) that also learns IOI."""
    force: bool = False
    """Rebuild even if a cached build exists (at --root, with these flags)."""
    seed: int | None = None
    """Seed of the build (PicoConfig.seed, default 0)."""
    root: str | None = None
    """Where to write the suite (default: $CROSSLENS_HOME/suites/pico-HASH); a complete suite there is used
    as it is unless flags or --force say otherwise."""
    device: str | None = None
    """cpu only: pico trains on the CPU (bitwise reproducible)."""
    dtype: str | None = None
    """float32 only: pico trains on the CPU in float32 (bitwise reproducible)."""


@dataclass
class SuiteListFlags:
    model: str = field(metadata={"positional": True})
    """Hub model id or local folder."""


BUILD = Subcommand(
    ("suite", "build"),
    "train a pico suite (a tiny Pythia-architecture model, checkpoints saved) on the grammar or your text",
    (SuiteBuildFlags,),
    "crosslens.commands.suite:suite_build",
)
LIST = Subcommand(
    ("suite", "list"),
    "list the revisions of a model (hub id or local folder)",
    (SuiteListFlags,),
    "crosslens.commands.suite:suite_list",
)
