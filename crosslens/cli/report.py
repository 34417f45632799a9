"""``crosslens analyze``, ``crosslens report`` and ``crosslens evaluate``: what a trained
crosscoder learned, and how well it reconstructs."""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslens.cli.common import DeviceFlags
from crosslens.cli.spec import Subcommand


@dataclass
class LoadedCrosscoderFlags(DeviceFlags):
    dtype: str | None = None
    """dtype the crosscoder is loaded in (default: its saved dtype)."""


@dataclass
class AnalyzeFlags:
    crosscoder: str = field(metadata={"flag": "--crosscoder"})
    """The --out folder of crosslens train (RUN_DIR or RUN_DIR/final), or RELEASE/ID."""
    store: str | None = None
    """Activation store, for firing frequencies, probes and top contexts (default: the one the run trained on);
    re-hashed against its manifest, and refused unless it holds the crosscoder's snapshots and hook."""
    out: str | None = None
    """Report file (default: RUN_DIR/report.html, else report.html)."""


@dataclass
class ReportFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN_DIR"})
    """The --out folder of crosslens train."""
    store: str | None = None
    """Activation store (default: the one the run trained on); re-hashed against its manifest, and refused
    unless it holds the crosscoder's snapshots and hook."""
    out: str | None = None
    """Report file (default: RUN_DIR/report.html)."""


@dataclass
class EvaluateFlags:
    crosscoder: str = field(metadata={"positional": True, "metavar": "CROSSCODER"})
    """RUN_DIR, RUN_DIR/final or RELEASE/ID."""
    store: str = field(metadata={"flag": "--store"})
    """Activation store to measure on (best: tokens it was not trained on); re-hashed against its manifest,
    and refused unless it holds the crosscoder's snapshots and hook."""
    spliced_loss: bool = False
    """Also splice each snapshot's reconstruction into that snapshot's model and report the next-token
    cross-entropy it recovers and the KL divergence from the clean model, on the store's token rows
    (loads every snapshot model once)."""
    spliced_ablation: str = field(default="zero", metadata={"choices": ("zero", "mean")})
    """The floor of the recovered loss: the activation zeroed, or replaced by its mean over the tokens."""
    spliced_seqs: int = field(default=64, metadata={"min": 1})
    """Token rows of the store the spliced loss is measured on."""


ANALYZE = Subcommand(
    ("analyze",),
    "feature evolution report from a trained crosscoder",
    (AnalyzeFlags, LoadedCrosscoderFlags),
    "crosslens.commands.report:analyze",
)
REPORT = Subcommand(
    ("report",),
    "rebuild RUN_DIR/report.html from what is on disk (with attribute's sections)",
    (ReportFlags, LoadedCrosscoderFlags),
    "crosslens.commands.report:report",
)
EVALUATE = Subcommand(
    ("evaluate",),
    "explained variance per snapshot, L0 and dead features of a crosscoder on a store",
    (EvaluateFlags, DeviceFlags),
    "crosslens.commands.evaluate:evaluate",
)
