"""``crosslens export RUN --format neuronpedia|delphi|saebench --out FOLDER``: a run's features in
the formats other tools read: Neuronpedia's batch JSON (one source per snapshot, from the feature
database of ``crosslens dashboards``), EleutherAI delphi's latent cache (one hookpoint per
snapshot, from the run's activation store) and SAEBench's custom-SAE view of each snapshot."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from crosslens.cli.flags import Subcommand, build, explicit, field_flags
from crosslens.exports.config import ExportConfig, check_options_read


@dataclass
class ExportFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN"})
    """The run folder (crosslens train's --out) to export."""


def export(args: argparse.Namespace) -> int:
    from crosslens.core.devices import resolve_device
    from crosslens.exports import run_export

    given = explicit(args, ExportConfig)
    flags = field_flags((ExportConfig,))
    check_options_read(args.format, given, lambda name: flags.get(name, name))
    config = build(ExportConfig, given)
    resolve_device(config.device)  # a device torch does not know is refused before anything is read
    out = run_export(args.run_dir, config)
    print(f"{args.format} export written to {out}")
    return 0


COMMAND = Subcommand(
    ("export",),
    "export a run's features for Neuronpedia, delphi or SAEBench",
    (ExportFlags, ExportConfig),
    export,
)
