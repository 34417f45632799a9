"""``crosslens harvest``: activations at hooks across snapshots, to disk."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.cli.common import DeviceFlags, SuiteFlags
from crosslens.cli.spec import Subcommand


@dataclass
class HarvestFlags:
    out: str = field(metadata={"flag": "--out"})
    """Store folder."""
    recipe: str | None = None
    """A shipped recipe (crosslens plan --list-recipes): its suite, hook, token budget, context and dataset
    become the defaults."""
    hook: list[str] | None = field(default=None, metadata={"action": "append"})
    """Hook name; repeat for several."""
    n_tokens: int | None = field(default=None, metadata={"min": 1})
    """Token budget (before exclusions; default 200000)."""
    seq_len: int | None = field(default=None, metadata={"min": 2})
    """Tokens per sequence (default 64)."""
    store_dtype: str | None = None
    """dtype the store is written in (default: --dtype, or the recipe's)."""
    text: list[str] | None = field(default=None, metadata={"nargs": "+", "metavar": "FILE|DIR"})
    """Harvest on your text: text files or folders of .txt files (split into documents at blank lines, or
    every ~2000 characters)."""
    encoding: str = "utf-8"
    """Encoding of the --text files (e.g. latin-1, cp1252); a file that does not decode in it is refused."""
    dataset: str | None = None
    """NAME:COLUMN of a datasets dataset (a text file or folder also works; default: the pico grammar)."""
    heldout_tokens: int | None = field(default=None, metadata={"min": 0})
    """Tokens (a seeded random sample of rows) harvested into OUT-heldout instead, for train's held-out
    quality table (default: 10% of --n-tokens, at most 16384; 0: none). OUT-heldout records the seal of
    OUT, and readers refuse it for any other store."""
    overwrite: bool = False
    """Discard whatever store --out holds, and its OUT-heldout, and harvest afresh."""


COMMAND = Subcommand(
    ("harvest",),
    "harvest activations at hooks across snapshots, to disk",
    (SuiteFlags, HarvestFlags, DeviceFlags),
    "crosslens.commands.harvest:harvest",
)
