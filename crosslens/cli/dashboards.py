"""``crosslens dashboards RUN``: every feature of a trained crosscoder at every snapshot, in one pass
over the tokens, into the run's feature database (``RUN/dashboards.sqlite``, read by ``crosslens
browse`` and ``crosslens export``).

The tokens come from the run's activation store (the one its run.json records, or ``--store``), or
with ``--stream`` from the suite's snapshot models kept resident, harvested as they are read: the
suite, snapshot and token flags are ``train --stream``'s and mean the same (without them, the
crosscoder's own snapshots and the pico grammar's tokens, as ``train --stream`` takes by default);
of them only ``--n-tokens`` applies to a store too, capping the tokens the pass reads from it.
The pass is resumable: Ctrl-C saves it, and the same command (without --overwrite) continues it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from crosslens.activations.config import TokenSource
from crosslens.cli.common import CLIError, check_suite_processing, device_and_dtype, resolve_suite, tokens_of
from crosslens.cli.flags import Subcommand, build, explicit
from crosslens.cli.options import (
    DEFAULT_SUITE,
    DeviceFlags,
    SuiteFlags,
    TokenBudgetFlags,
    data_flags_given,
    data_flags_refusal,
)
from crosslens.core.metadata import crosscoder_suite_record, trained_steps
from crosslens.dashboards.config import DashboardsConfig


@dataclass
class DashboardsFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN"})
    """The run folder (crosslens train's --out) whose final crosscoder the dashboards describe."""
    store: str | None = None
    """Activation store to read the tokens from (default: the store the run was trained on, as its
    run.json records it); refused unless it holds the crosscoder's snapshots and hook."""
    stream: bool = False
    """Read the tokens from the suite's snapshot models kept in memory, no store on disk (the suite,
    snapshot and token flags as for train --stream)."""


def dashboards(args: argparse.Namespace) -> int:
    from crosslens.core.units import format_bytes
    from crosslens.dashboards import compute_dashboards

    run = Path(args.run_dir)
    if args.stream and args.store is not None:
        raise CLIError("--store and --stream each say where the tokens come from: pass one of them")
    # --n-tokens is also DashboardsConfig's: it caps the tokens the pass reads, from a store as from a stream
    given = [flag for flag in data_flags_given(args) if flag != "--n-tokens"]
    if given and not args.stream:
        raise CLIError(data_flags_refusal(given, "--stream", "the run's store"))
    config = build(DashboardsConfig, explicit(args, DashboardsConfig))
    device, model_dtype = device_and_dtype(args, produces_activations=args.stream)
    stream = _stream_source(args, run) if args.stream else None
    path = compute_dashboards(
        run, store=args.store, stream=stream, config=config, device=device, model_dtype=model_dtype
    )
    print(f"feature database: {path} ({format_bytes(path.stat().st_size)})")
    print(f"browse it: crosslens browse {run}")
    return 0


def _stream_source(args: argparse.Namespace, run: Path):
    """The :class:`~crosslens.dashboards.StreamSource` of ``train --stream``'s flags: by default the
    suite and snapshots the crosscoder records."""
    from crosslens.activations.tokens import token_tables
    from crosslens.dashboards import StreamSource
    from crosslens.training.runfolder import crosscoder_folder

    record = crosscoder_suite_record(crosscoder_folder(run))  # the run's final/ holds the crosscoder
    spec = args.suite or record.get("root") or record.get("model_id") or DEFAULT_SUITE
    steps, recorded = args.steps, args.steps is None and args.n_snapshots is None
    if recorded:  # the crosscoder's steps, which the suite is refused for lacking, as no --steps gave them
        steps = trained_steps(record)
    flag = "--models" if getattr(args, "models", None) is not None else "--suite"
    named = f"{flag} {args.suite}: the suite" if args.suite else f"the suite the crosscoder records, {spec},"
    suite = resolve_suite(
        spec,
        steps,
        args.n_snapshots,
        processing=record.get("processing"),  # a suite of models loads as the crosscoder read it
        steps_from="the crosscoder was trained on" if recorded else None,
        named=named,
    )
    check_suite_processing(args, record, suite, run)
    tokens, budget = tokens_of(args, None)
    train_NL, _ = token_tables(tokens, budget, suite.tokenizer())
    spec = {**tokens.record(), "n_tokens": budget.n_tokens, "seq_len": budget.seq_len}
    return StreamSource(suite, train_NL, spec=spec)


COMMAND = Subcommand(
    ("dashboards",),
    "every feature at every snapshot (contexts, densities, logit effects, causal scores) into RUN/dashboards.sqlite",
    (DashboardsFlags, DashboardsConfig, SuiteFlags, TokenBudgetFlags, TokenSource, DeviceFlags),
    dashboards,
)
