"""``crosslens demo``: every stage on the embedded pico suite, each one cached and resumable.

Stages (outputs under ``--out``, default ``$CROSSLENS_HOME/demo``):

1. suite      build (or reuse) the pico suite; print its per-checkpoint learning table
2. harvest    activations at the middle residual stream for every chosen snapshot
              (a training store and a held-out store)
3. train      a multi-snapshot crosscoder; quality table vs per-snapshot SAELens SAEs
4. attribute  integrated-gradient attribution, RelIE and ablation curves for agreement
              across an attractor
5. analyze    feature evolution from decoder norms -> crosscoder/report.html (with stage 4's
              sections)
6. dashboards every feature at every snapshot -> crosscoder/dashboards.sqlite, for
              ``crosslens browse``

A second run reuses every finished stage; ``--force`` recomputes them. The demo's settings and
its stages are in :mod:`crosslens.cli.demo_stages`, the pipeline running them in
:mod:`crosslens.cli.demo_run`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from crosslens.cli.common import device_and_dtype
from crosslens.cli.flags import Subcommand
from crosslens.cli.inputs import check_output_folder
from crosslens.cli.options import DeviceFlags


@dataclass
class DemoFlags:
    out: str | None = None
    """Output folder (default: $CROSSLENS_HOME/demo, or demo-fast with --fast)."""
    fast: bool = False
    """Small settings, for a quick look."""
    force: bool = False
    """Recompute every stage."""


def demo(args: argparse.Namespace) -> int:
    from crosslens.cli.demo_run import run_demo
    from crosslens.training.runfolder import refuse_store_folder

    if args.out is not None:
        check_output_folder(args.out, holds="the demo's stores and runs")
        refuse_store_folder(Path(args.out).expanduser(), fix="pass a folder of its own for the demo (--out)")
    device, dtype = device_and_dtype(args)
    run_demo(out_dir=args.out, fast=args.fast, force=args.force, device=device, dtype=dtype)
    return 0


COMMAND = Subcommand(("demo",), "the whole pipeline on the embedded pico suite", (DemoFlags, DeviceFlags), demo)
