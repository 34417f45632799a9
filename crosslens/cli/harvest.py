"""``crosslens harvest``: activations at hooks across snapshots, to disk."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.cli.common import DeviceFlags, SuiteFlags, TokenBudgetFlags, TokenFlags
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
    store_dtype: str | None = None
    """dtype the store is written in (default: the recipe's store dtype with --recipe, else --dtype)."""
    overwrite: bool = False
    """Discard whatever store --out holds, and its OUT-heldout, and harvest afresh."""


COMMAND = Subcommand(
    ("harvest",),
    "harvest activations at hooks across snapshots, to disk",
    (SuiteFlags, HarvestFlags, TokenBudgetFlags, TokenFlags, DeviceFlags),
    "crosslens.commands.harvest:harvest",
)
