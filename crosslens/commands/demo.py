"""``crosslens demo``."""

from __future__ import annotations

import argparse

from crosslens.commands.common import device_and_dtype


def demo(args: argparse.Namespace) -> int:
    from crosslens.demo import run_demo

    device, dtype = device_and_dtype(args)
    run_demo(out_dir=args.out, fast=args.fast, force=args.force, device=device, dtype=dtype)
    return 0
