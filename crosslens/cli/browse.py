"""``crosslens browse RUN``: the run's feature database as a local web app, started the way
TensorBoard is: it prints its URL (``http://127.0.0.1:PORT/``) and serves until Ctrl-C. It listens
on 127.0.0.1 only and loads nothing from the network."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from crosslens.browser.config import BrowseConfig
from crosslens.cli.flags import Subcommand, build, explicit


@dataclass
class BrowseFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN"})
    """The run folder whose feature database (RUN/dashboards.sqlite, from crosslens dashboards) is served."""


def browse(args: argparse.Namespace) -> int:
    from crosslens.browser import browse as serve

    config = build(BrowseConfig, explicit(args, BrowseConfig))
    serve(
        args.run_dir,
        port=config.port,
        database=config.database,
        page_size=config.page_size,
        log_requests=config.log_requests,
    )
    return 0


COMMAND = Subcommand(
    ("browse",),
    "browse every feature of a run in a local web app (http://127.0.0.1:PORT/)",
    (BrowseFlags, BrowseConfig),
    browse,
)
