"""``crosslens pretrained list|show`` and ``crosslens push``: sharing crosscoders."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.cli.spec import Subcommand


@dataclass
class NoFlags:
    pass


@dataclass
class ShowFlags:
    release: str = field(metadata={"positional": True})
    """A release name (crosslens pretrained list)."""


@dataclass
class PushFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN_DIR"})
    """The --out folder of crosslens train (or a crosscoder folder)."""
    repo: str = field(metadata={"flag": "--repo"})
    """Hub repo ORG/NAME (created if missing)."""
    private: bool = False
    """Create the repo private."""
    id: str | None = None
    """Crosscoder id / folder in the repo (default: its hook name)."""
    release: str | None = None
    """Release name for the registry entry (default: repo NAME)."""
    store: str | None = None
    """Activation store for the card's numbers (default: the run's)."""
    no_fold: bool = False
    """Upload with normalisation unfolded (reads normalised inputs)."""


LIST = Subcommand(
    ("pretrained", "list"),
    "list the releases (packaged and CROSSLENS_PRETRAINED files)",
    (NoFlags,),
    "crosslens.commands.pretrained:pretrained_list",
)
SHOW = Subcommand(
    ("pretrained", "show"),
    "one release: repo, suite revisions, crosscoders and their quality",
    (ShowFlags,),
    "crosslens.commands.pretrained:pretrained_show",
)
PUSH = Subcommand(
    ("push",),
    "upload a trained crosscoder to the Hugging Face hub with a model card",
    (PushFlags,),
    "crosslens.commands.pretrained:push",
)
