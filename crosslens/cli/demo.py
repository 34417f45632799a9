"""``crosslens demo``: the whole pipeline on the embedded pico suite."""

from __future__ import annotations

from dataclasses import dataclass

from crosslens.cli.common import DeviceFlags
from crosslens.cli.spec import Subcommand


@dataclass
class DemoFlags:
    out: str | None = None
    """Output folder (default: $CROSSLENS_HOME/demo, or demo-fast with --fast)."""
    fast: bool = False
    """Small settings, for a quick look."""
    force: bool = False
    """Recompute every stage."""


COMMAND = Subcommand(
    ("demo",), "the whole pipeline on the embedded pico suite", (DemoFlags, DeviceFlags), "crosslens.commands.demo:demo"
)
