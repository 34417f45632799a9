"""``crosslens explain RUN --endpoint URL --model NAME``: every live feature explained in words at its
code and at each phase of its life (emergence, peak, last snapshot), each explanation given a
detection score and each phase's explanation scored on the other phases' contexts (drift), by a
model behind an OpenAI-compatible API (vLLM, llama.cpp's server, Ollama, a hosted one), into
``RUN/explanations.sqlite``; ``crosslens browse RUN`` then searches them.

The key is read from the environment variable ``--api-key-env`` names (default OPENAI_API_KEY) and
goes nowhere else. ``--dry-run`` counts requests and prompt tokens without sending any; Ctrl-C keeps
what was answered, and the same command goes on from there. ``--import FILE`` reads explanations
made by delphi or exported from Neuronpedia instead.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from crosslens.cli.flags import Subcommand, build, explicit, field_flags
from crosslens.core.errors import run_again
from crosslens.dashboards.explanation_schema import EXPLANATIONS_NAME
from crosslens.explain.config import ExplainConfig, ExplainError


@dataclass
class ExplainFlags:
    run_dir: str = field(metadata={"positional": True, "metavar": "RUN"})
    """The run folder whose feature database (RUN/dashboards.sqlite, from crosslens dashboards) is explained."""


NOT_WITH_IMPORT = ("dry_run", "features", "classes", "max_features")
"""The settings ``--import`` does not read: it stores every explanation of its file, and counts nothing
first, so a dry run of it would write (with ``--overwrite``, delete) what a dry run promises to leave."""


def explain(args: argparse.Namespace) -> int:
    given = explicit(args, ExplainConfig)
    config = build(ExplainConfig, given)
    if config.import_file is not None:
        _refuse_unread_with_import(given)
        return _import(args.run_dir, config)
    if config.dry_run:
        return _dry_run(args.run_dir, config)
    from crosslens.explain.run import explain_run

    summary = explain_run(args.run_dir, config)
    stored = summary.stored
    print(
        f"asked {summary.explain_requests} explanations and {summary.score_requests} scores of {summary.features} "
        f"features ({summary.traffic.prompt_tokens:,} prompt and {summary.traffic.completion_tokens:,} answer tokens, "
        f"{summary.traffic.retried} retries, {summary.traffic.failed} failed)"
    )
    print(
        f"{args.run_dir}/{EXPLANATIONS_NAME} holds {stored['explanations']} explanations of {stored['features']} features, "
        f"{stored['scores']} scores, {stored['flagged']} features whose meaning drifted"
    )
    if summary.failures:
        again = run_again(replacing="--overwrite" if config.overwrite else None)
        print(f"{summary.failures} requests failed (table failures); {again} to ask them again")
    if stored["failures"] > summary.failures:
        print(
            f"{stored['failures'] - summary.failures} more failed requests (table failures) are of features, phases "
            "or scores this command does not ask for; a command whose --features, --classes, --max-features and "
            "--phases select them (and, for drift scores, without --no-drift) asks them again"
        )
    if summary.unscorable:
        print(f"{summary.unscorable} scores were not asked: their contexts hold no stretch where the feature is silent")
    print(f"search them: crosslens browse {args.run_dir}")
    return 0


def _dry_run(run_dir: str, config: ExplainConfig) -> int:
    from crosslens.explain.run import dry_run

    summary = dry_run(run_dir, config)
    requests = summary.explain_requests + summary.score_requests
    print(
        f"dry run: {summary.features} features need {requests} requests ({summary.explain_requests} explanations, "
        f"{summary.score_requests} detection scores) of about {summary.traffic.prompt_tokens:,} prompt tokens "
        f"(4 characters a token; explanations not yet written counted as twelve words), and at most "
        f"{requests * config.max_tokens:,} answer tokens (--max-tokens {config.max_tokens}); nothing was sent"
    )
    if summary.stored.get("explanations"):
        print(
            f"already stored, not asked again: {summary.stored['explanations']} explanations, {summary.stored['scores']} scores"
        )
    if summary.unscorable:
        print(
            f"{summary.unscorable} scores cannot be asked: their contexts hold no stretch where the feature is silent"
        )
    return 0


def _refuse_unread_with_import(given: dict) -> None:
    """Refuse, before the explanations file is touched, the flags ``--import`` would not read."""
    flags = field_flags((ExplainConfig,))
    unread = [flags[name] for name in NOT_WITH_IMPORT if name in given]
    if unread:
        keep = "; without --overwrite it keeps every explanation stored" if given.get("overwrite") else ""
        raise ExplainError(
            f"--import takes no {', '.join(unread)}: it stores every explanation of its file and asks for "
            f"nothing, so leave {'it' if len(unread) == 1 else 'them'} out{keep}"
        )


def _import(run_dir: str, config: ExplainConfig) -> int:
    from crosslens.explain.imports import import_explanations

    summary = import_explanations(run_dir, config.import_file or "", config)
    print(
        f"{summary.format}: read {summary.read} explanations: {summary.added} added, {summary.kept} already stored "
        f"(kept), {summary.skipped} without an explanation (skipped); {summary.scores} detection scores added"
    )
    if summary.unverified:
        print(
            f"{summary.unverified} of them are typed as crosslens's own, but no crosslens export manifest "
            "ties them to this run's crosscoder: stored as Neuronpedia's"
        )
    stored = summary.stored
    print(
        f"{run_dir}/{EXPLANATIONS_NAME} holds {stored['explanations']} explanations of {stored['features']} features; "
        f"search them: crosslens browse {run_dir}"
    )
    return 0


COMMAND = Subcommand(
    ("explain",),
    "explain every feature in words at its code and each phase of its life, scored, with an LLM endpoint",
    (ExplainFlags, ExplainConfig),
    explain,
)
