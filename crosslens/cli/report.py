"""``crosslens report``: rebuild a training run's report.html from what is on disk: the
evolution analysis of its final crosscoder, with the sections ``crosslens attribute`` saved."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from crosslens.cli.analyze import write_report
from crosslens.cli.common import CLIError, crosscoder_folder_arg
from crosslens.cli.flags import Subcommand
from crosslens.cli.options import LoadedCrosscoderFlags


@dataclass
class ReportFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN_DIR"})
    """The --out folder of crosslens train."""
    store: str | None = None
    """Activation store (default: the one the run trained on); re-hashed against its manifest, and refused
    unless it holds the crosscoder's snapshots and hook."""
    out: str | None = None
    """Report file (default: RUN_DIR/report.html)."""


def report(args: argparse.Namespace) -> int:
    from crosslens.training.runfolder import run_folder

    folder = crosscoder_folder_arg(args.run_dir, "RUN_DIR")
    if run_folder(folder) is None:  # a pretrained release or a crosscoder saved by hand has no run's report
        raise CLIError(
            f"RUN_DIR {args.run_dir}: not a `crosslens train` run folder, so it has no report to rebuild; "
            f"for any crosscoder, `crosslens analyze --crosscoder {args.run_dir}` writes one"
        )
    return write_report(folder, args.store, args.out, args)


COMMAND = Subcommand(
    ("report",),
    "rebuild RUN_DIR/report.html from what is on disk (with attribute's sections)",
    (ReportFlags, LoadedCrosscoderFlags),
    report,
)
