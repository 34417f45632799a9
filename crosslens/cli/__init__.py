"""The application layer: the ``crosslens`` command line, one module per command.

Each command module holds the command's flags (dataclass fields, or the config dataclasses
themselves: the docstring under a field is its ``--help``, its default is written once, see
:mod:`crosslens.cli.flags`), its :class:`Subcommand` declaration and the function that runs it:
:mod:`~crosslens.cli.demo`, :mod:`~crosslens.cli.suite` (build, list),
:mod:`~crosslens.cli.harvest`, :mod:`~crosslens.cli.train` (``--stream`` too),
:mod:`~crosslens.cli.evaluate`, :mod:`~crosslens.cli.analyze`, :mod:`~crosslens.cli.report`,
:mod:`~crosslens.cli.attribute`, :mod:`~crosslens.cli.dashboards`, :mod:`~crosslens.cli.browse`,
:mod:`~crosslens.cli.explain`, :mod:`~crosslens.cli.export`, :mod:`~crosslens.cli.plan` and
:mod:`~crosslens.cli.pretrained` (list, show, push). What several commands share is in a few
modules: :mod:`~crosslens.cli.flags` (flags from dataclasses), :mod:`~crosslens.cli.options` (flag
groups), :mod:`~crosslens.cli.common` (the CLIError, suites, recipes, a harvest's settings, devices,
torchrun jobs), :mod:`~crosslens.cli.inputs` (checks of the paths a command writes) and
:mod:`~crosslens.cli.quality` (the quality table a trained crosscoder is reported with). The work is
the stages': ``harvest`` builds a :class:`~crosslens.activations.config.HarvestConfig` and calls
:func:`~crosslens.activations.harvest_job.harvest_stores`, as ``train`` does too. The demo's stages
are in :mod:`~crosslens.cli.demo_stages`, its pipeline in :mod:`~crosslens.cli.demo_run`. What a run
costs is sized beside training (:mod:`crosslens.training.sizing`); recipes live there too
(:mod:`crosslens.training.recipes`), since a recipe is the settings of a training run and the
sizing, the library and the commands all read it, while nothing in it is about a command line.

Imports. ``crosslens --help`` imports every command module, and must stay quick: a command module,
and the shared modules it imports at its top (flags, options, common), import at their top only what
needs no torch. A command's functions import torch, TransformerLens, SAELens and the stages that
load them (and :mod:`~crosslens.cli.quality`, :mod:`~crosslens.cli.demo_stages` and
:mod:`~crosslens.cli.demo_run`, which import them) inside themselves. That is the one reason an
import stays inside a function in this package; wandb, whose import takes seconds, is imported only
where a run that logged to W&B needs it.

Errors. Every error reaches the user as one or two lines naming the flag to change (``--debug``
shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import crosslens
from crosslens.cli import (
    analyze,
    attribute,
    browse,
    dashboards,
    demo,
    evaluate,
    explain,
    export,
    harvest,
    plan,
    pretrained,
    report,
    suite,
    train,
)
from crosslens.cli.common import CLIError, suite_from_models
from crosslens.cli.flags import (
    Subcommand,
    add_flags,
    build,
    explicit,
    field_defaults,
    field_flags,
    iter_fields,
    name_flags,
)
from crosslens.cli.train import train_config
from crosslens.core.errors import CrosslensError, run_again  # CrosslensError: a ValueError, named for the reader
from crosslens.core.paths import checkpoint_folders

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SUBCOMMANDS: tuple[Subcommand, ...] = (
    demo.COMMAND,
    suite.BUILD,
    suite.LIST,
    harvest.COMMAND,
    train.COMMAND,
    analyze.COMMAND,
    report.COMMAND,
    evaluate.COMMAND,
    attribute.COMMAND,
    dashboards.COMMAND,
    browse.COMMAND,
    explain.COMMAND,
    export.COMMAND,
    plan.COMMAND,
    pretrained.LIST,
    pretrained.SHOW,
    pretrained.RUN,
    pretrained.PUSH,
)
GROUPS = {"suite": "model suites with training checkpoints", "pretrained": "registered pretrained crosscoder releases"}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are two lines: what is wrong, and where help is. The
    top-level parser also fills the generated flags' defaults after noting which were given."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists the options)\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        defaults = getattr(namespace, "field_defaults", None)
        if self.prog == "crosslens" and defaults is not None:
            namespace.explicit = {dest for dest, value in vars(namespace).items() if value is not None}
            for dest, default in defaults.items():
                if getattr(namespace, dest, None) is None:
                    setattr(namespace, dest, default)
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crosslens",
        description="Multi-snapshot crosscoders: how features form, change and die during pre-training.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"crosslens {crosslens.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in SUBCOMMANDS:
        head, *rest = command.words
        if rest:
            if head not in groups:
                group = sub.add_parser(head, help=GROUPS[head])
                groups[head] = group.add_subparsers(dest=f"{head}_command", required=True)
            where, name = groups[head], rest[0]
        else:
            where, name = sub, head
        command_parser = where.add_parser(name, help=command.help, description=command.description)
        declared: set[str] = set()
        for cls in command.flags:
            names = {f.name for _, f, _, _ in iter_fields(cls)}
            add_flags(command_parser, cls, skip=tuple(declared & names))
            declared |= names
        command_parser.set_defaults(run=command.run, field_defaults=field_defaults(command.flags))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CROSSLENS_DEBUG") == "1"
    if "--debug" in argv:  # accepted anywhere on the line, not only before the subcommand
        argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    formatwarning = warnings.formatwarning
    if not debug:  # warnings as one line each, without the source line that raised them
        warnings.formatwarning = lambda message, category, *_, **__: f"crosslens: warning: {message}\n"
    try:
        suite_from_models(args)  # --models A,B names the suite as --suite A,B does
        return int(args.run(args) or 0)
    except KeyboardInterrupt as interrupt:
        said = _interrupted(args, interrupt)
        print(f"crosslens {args.command}: {said}", file=sys.stderr)
        raise SystemExit(128 + getattr(interrupt, "signum", 2)) from None
    except SystemExit as exit_:
        if debug or exit_.code in (None, 0) or isinstance(exit_.code, int):
            raise
        _one_line_error(_command_name(args), str(exit_.code).removeprefix("crosslens: "), None)
    except Exception as err:  # noqa: BLE001 - every error is one line; --debug shows the traceback
        if debug:
            raise
        message = str(err)
        if isinstance(err, ValueError):  # a config's validation names its fields: name their flags
            message = name_flags(message, field_flags(next((c.flags for c in SUBCOMMANDS if c.run == args.run), ())))
        _one_line_error(_command_name(args), message, err)
    finally:
        warnings.formatwarning = formatwarning
    return 2


RESUMED_WITHOUT_REPLACING = ("harvest", "suite build")
"""Commands that, given --overwrite (--force), clear what they replace as they start and then go on
from what they kept when run without it: a stop tells them so."""


def _interrupted(args: argparse.Namespace, interrupt: KeyboardInterrupt) -> str:
    """What an interrupt kept and how to go on: training says it itself when it stopped between
    steps; a train stopped anywhere else goes on from its last checkpoint with --resume, or,
    stopped before its first one, starts again with it. A harvest or suite build given --overwrite
    (--force), which would throw away what it kept, is run again without it."""
    if str(interrupt):
        return str(interrupt)
    given = next((f"--{flag}" for flag in ("overwrite", "force") if getattr(args, flag, False)), None)
    replacing = given if args.command == "train" or _command_name(args) in RESUMED_WITHOUT_REPLACING else None
    if args.command == "train":
        resume = run_again(replacing=replacing, adding="--resume")
        out_dir = getattr(args, "out_dir", None)
        if out_dir is not None and not checkpoint_folders(out_dir):
            return f"interrupted before its first checkpoint; {resume} to start it again"
        return f"interrupted; {resume} to continue from its last checkpoint"
    return f"interrupted (finished work is kept; {run_again(replacing=replacing)} to resume)"


def _command_name(args: argparse.Namespace) -> str:
    """``suite list``, ``harvest``, ...: the words of the command that failed."""
    words = [args.command, getattr(args, "suite_command", None), getattr(args, "pretrained_command", None)]
    return " ".join(w for w in words if w)


def _one_line_error(command: str, message: str, err: BaseException | None) -> None:
    """Print an error as one or two lines and exit with status 2 (see --debug for the traceback)."""
    message = " ".join(message.split()) or type(err).__name__
    expected = err is None or isinstance(err, (CLIError, CrosslensError, ValueError, FileNotFoundError))
    if not expected:  # not a known input error: name its type, and where to see more
        message = f"{type(err).__name__}: {message}"
    print(f"crosslens {command}: error: {message}", file=sys.stderr)
    if not expected:
        print("(run again with --debug for the traceback)", file=sys.stderr)
    raise SystemExit(2) from None


__all__ = [
    "CLIError",
    "SUBCOMMANDS",
    "Subcommand",
    "add_flags",
    "build",
    "build_parser",
    "explicit",
    "main",
    "train_config",
]
