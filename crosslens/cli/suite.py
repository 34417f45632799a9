"""``crosslens suite build`` and ``crosslens suite list``: model suites with training checkpoints.

Most build flags set a field of the pico suite's ``PicoConfig`` (``default_from``); the help
shows that field's default, so each default is written once, in the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.cli.spec import Subcommand
from crosslens.pico.config import PicoConfig


@dataclass
class SuiteBuildFlags:
    corpus: list[str] | None = field(default=None, metadata={"nargs": "+", "metavar": "FILE|DIR|dataset:NAME:COLUMN"})
    """Train on your text: text files, folders of .txt files, or dataset:NAME:COLUMN (a datasets dataset
    available offline); a BPE tokenizer is trained on it (default: crosslens's generated grammar)."""
    eval: str | None = field(default=None, metadata={"metavar": "PAIRS"})
    """Minimal pairs (BLiMP or crosslens JSONL, or CLAMS text) scored at every checkpoint by summed
    log-probability of each continuation."""
    n_layers: int | None = field(default=None, metadata={"default_from": (PicoConfig, "n_layers")})
    """Transformer blocks."""
    d_model: int | None = field(default=None, metadata={"default_from": (PicoConfig, "d_model")})
    """Residual width (the MLP is 4x this)."""
    n_heads: int | None = field(default=None, metadata={"default_from": (PicoConfig, "n_heads")})
    """Attention heads."""
    train_steps: int | None = field(default=None, metadata={"default_from": (PicoConfig, "n_steps")})
    """Optimizer steps."""
    checkpoints: int | None = field(default=None, metadata={"min": 16})
    """About how many checkpoints to save, log-spaced early then even (>= 16; default: the config's
    schedule, 21 at the default steps)."""
    seq_len: int | None = field(default=None, metadata={"default_from": (PicoConfig, "seq_len")})
    """Tokens per training row."""
    batch_size: int | None = field(default=None, metadata={"default_from": (PicoConfig, "batch_size")})
    """Rows per step."""
    bpe_vocab: int | None = field(default=None, metadata={"default_from": (PicoConfig, "bpe_vocab_size")})
    """Vocabulary of the BPE tokenizer trained on --corpus."""
    small: bool = False
    """The small, fast configuration used by tests."""
    long: bool = False
    """A longer build (1536 steps) that also learns IOI."""
    force: bool = False
    """Rebuild even if a cached build exists (at --root, with these flags)."""
    seed: int | None = field(default=None, metadata={"default_from": (PicoConfig, "seed")})
    """Seed of the build."""
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
    """Hub model id, local folder, or pico (the embedded suite)."""


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
