"""What a subcommand is: its words, its help, the dataclasses its flags come from, and the
library function that runs it (imported only when the command runs, so ``--help`` stays light)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subcommand:
    """One ``crosslens`` subcommand."""

    words: tuple[str, ...]
    """The command's words: ("train",) or ("suite", "build")."""
    help: str
    """One line for ``crosslens --help``."""
    flags: tuple[type, ...]
    """Dataclasses whose fields are the flags, in order; a field name an earlier one declares is
    taken from the earlier one (a command overriding a shared flag's meaning)."""
    run: str
    """``module:function`` that runs the command with the parsed namespace."""
    description: str | None = None
    """Longer text for the command's own ``--help``."""
