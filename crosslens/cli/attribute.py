"""``crosslens attribute``: integrated-gradient attribution of a crosscoder's features on a task,
per snapshot, with RelIE and ablation curves (:mod:`crosslens.causal.sections`); the report
section is saved into the run folder for ``crosslens report``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from crosslens.causal import defaults
from crosslens.cli.common import (
    CLIError,
    check_suite_processing,
    crosscoder_folder_arg,
    device_and_dtype,
    resolve_suite,
)
from crosslens.cli.flags import Subcommand
from crosslens.cli.inputs import check_output_file
from crosslens.cli.options import DEFAULT_SUITE, DeviceFlags, SuiteFlags
from crosslens.core.metadata import crosscoder_suite_record, trained_steps


@dataclass
class AttributeFlags:
    crosscoder: str = field(metadata={"flag": "--crosscoder"})
    """RUN_DIR of crosslens train (its final/ folder also works), or RELEASE/ID of a pretrained release."""
    suite: str | None = None
    """The suite to attribute on (default: the one recorded with the crosscoder). Its snapshots (--steps,
    --n-snapshots; default: the crosscoder's) must be the crosscoder's, revisions, steps and weights: they
    are checked before any model loads (a local suite's weight files are hashed for it)."""
    task: str = defaults.TASK
    """Task name (see crosslens.tasks) or a pairs file (BLiMP or crosslens JSONL, CLAMS text); several,
    comma-separated, run together, one per language (agreement_multilingual = its en, fr and es tasks), with
    RelIE per language side by side."""
    task_file: str | None = None
    """A MultiBLiMP-style JSONL file (sentence_good, sentence_bad, language): one task per language."""
    skip_invalid: bool = False
    """Drop the lines of a pairs file that do not parse, instead of refusing the file. Pairs the suite's
    tokenizer cannot score, or longer than its models' context, are dropped either way, with a warning
    naming the first."""
    n_examples: int = field(default=defaults.N_EXAMPLES, metadata={"min": 1})
    """Minimal pairs to score."""
    out: str = "attribution.json"
    """The IE table (a .json file); the report is written beside it with .html, plots and tables in a
    STEM_causal/ folder. With several tasks, each task's IE table goes in that folder instead."""
    ie_threshold: float | None = field(default=None, metadata={"min": 0})
    """Zero each per-token |IE| at or below this before averaging over a prompt's positions, as Bayazit et
    al. do at 0.1 (their code makes it optional); unset, every effect is kept. Either way a feature is
    classed only where its IE clears a noise floor ({causal.defaults.EFFECT_FLOOR_SHARE:.0%} of the mean clean-to-patched metric gap, with a
    bootstrap interval), which the paper does not have, so the classes are not exactly the paper's."""
    allow_chance: bool = False
    """Attribute even when the model is at chance on the pairs at every snapshot (accuracy's 95% interval
    contains 50%), which is refused by default: there is no behaviour to attribute. Every snapshot at chance
    is marked 'no behaviour', with no feature classed there and no keep-only restoration shown."""


def attribute(args: argparse.Namespace) -> int:
    from crosslens.causal.attribution import AttributionConfig
    from crosslens.causal.sections import attribution_sections, causal_out_dir, language_attribution_sections

    folder = crosscoder_folder_arg(args.crosscoder, "--crosscoder")
    # before any model loads; plots, tables and report.html go beside the table, named after it
    check_output_file(args.out, example="attribution.json", suffixes=(".json",), kind="the IE table is a .json file")
    device, dtype = device_and_dtype(args)
    steps = args.steps
    record = crosscoder_suite_record(folder)
    if steps is None and args.n_snapshots is None:  # the snapshots the crosscoder was trained on
        steps = trained_steps(record)
    tasks = _tasks_from_args(args)  # before any model loads
    suite_spec = args.suite or record.get("root") or record.get("model_id") or DEFAULT_SUITE
    if args.suite is None and suite_spec != DEFAULT_SUITE:
        print(f"suite: {suite_spec} (recorded with the crosscoder; --suite overrides)")
    try:
        processing = record.get("processing")  # a suite of models loads as the crosscoder read it
        suite = resolve_suite(suite_spec, steps, args.n_snapshots, processing=processing)
    except CLIError as error:
        if args.steps is not None or not str(error).startswith("--steps"):
            raise
        raise CLIError(  # the steps are the crosscoder's, not a flag the user gave
            f"--suite {suite_spec} does not hold the crosscoder's snapshots (steps {','.join(map(str, steps))}): "
            f"{str(error).removeprefix('--steps: ')}; pass the suite it was trained on"
        ) from None
    check_suite_processing(args, record, suite, folder)
    _check_snapshots(record, suite, folder, args)  # before any model loads
    print(metric_sign())
    config = AttributionConfig(threshold=args.ie_threshold)
    if len(tasks) > 1:  # several languages: run together, RelIE per language side by side
        with _task_flag_errors(args):
            sections = language_attribution_sections(
                suite,
                str(folder),
                tasks,
                n_examples=args.n_examples,
                out=args.out,
                device=device,
                dtype=dtype,
                allow_chance=args.allow_chance,
                config=config,
            )
        report = Path(args.out).with_suffix(".html")
        sections[0].write(report)
        print(f"IE tables: one per task, {causal_out_dir(args.out, 'languages')}/<task>/ie_table.json (not {args.out})")
        print(f"report: {report}")
        names = [t if isinstance(t, str) else t.name for t in tasks]
        _save_section(sections[0], folder, f"attribution-{'_'.join(names)}")
        return 0
    task = tasks[0]
    results: list = []
    with _task_flag_errors(args):
        sections = attribution_sections(
            suite,
            str(folder),
            task=task,
            n_examples=args.n_examples,
            out=args.out,
            device=device,
            dtype=dtype,
            results=results,
            allow_chance=args.allow_chance,
            config=config,
        )
    report = Path(args.out).with_suffix(".html")
    sections[0].write(report)
    name = task if isinstance(task, str) else task.name
    if not isinstance(task, str):
        summary = results[0].summary
        print(
            f"pairs: {summary.n_examples} of the {len(task)} read from the file scored (--n-examples caps them), "
            f"{summary.n_multi_token} of them with multi-token continuations"
        )
    print(f"IE table: {args.out}")
    print(f"plots and tables: {causal_out_dir(args.out, name)}")
    print(f"report: {report}")
    _save_section(sections[0], folder, f"attribution-{name}")
    return 0


def _save_section(section, folder: Path, name: str) -> None:
    """Save the report section in the run folder of ``folder`` for ``crosslens report``, when
    ``folder`` is the run's final crosscoder (a checkpoint's would join the final crosscoder's report)."""
    from crosslens.training.runfolder import is_final_crosscoder, run_folder, save_section

    run_dir = run_folder(folder)
    if run_dir is None:
        return
    if not is_final_crosscoder(folder, run_dir):
        print(f"section not saved: {folder} is a checkpoint of {run_dir}, whose report describes its final crosscoder")
        return
    saved = save_section(section, run_dir, name)
    print(f"section saved to {saved}; `crosslens report {run_dir}` puts it into report.html")


def metric_sign() -> str:
    """What the printed metric and effects mean, for one-token and longer continuations."""
    from crosslens.causal.continuations import SUMMED_LOGPROB_DIFF
    from crosslens.causal.stage import metric_formula

    return (
        f"metric = {metric_formula(None)} for one-token continuations, {metric_formula(SUMMED_LOGPROB_DIFF)} "
        "for longer ones: negative means the model prefers the correct continuation (more negative = more "
        "confident); an effect (IE) is the change in that metric"
    )


def _check_snapshots(record: dict, suite, folder: Path, args: argparse.Namespace) -> None:
    """Refuse snapshots other than the crosscoder's: its decoder for one snapshot would be spliced
    into another snapshot's model. Weights are compared where both sides know an identity (the
    suite's are read from its files: a local suite's are hashed)."""
    from crosslens.activations.partners import snapshot_problem, unverifiable_snapshots
    from crosslens.checkpoints.identity import identified, snapshot_identities

    recorded = record.get("snapshots")
    if not recorded:
        raise CLIError(
            f"--crosscoder {folder}: it records no snapshots it was trained on (saved without that record), so "
            "the suite's snapshots cannot be checked against it; retrain it with this crosslens"
        )
    offered = [identified(ref, identity) for ref, identity in zip(suite.snapshots, snapshot_identities(suite))]
    problem = snapshot_problem(recorded, offered, require_identity=False)
    if problem:
        given = [
            f for f, v in (("--suite", args.suite), ("--steps", args.steps), ("--n-snapshots", args.n_snapshots)) if v
        ]
        steps = ",".join(str(entry.get("step")) for entry in recorded)
        raise CLIError(
            f"the snapshots selected ({' '.join(given) or 'the recorded suite'}) are not the ones the crosscoder {folder} "
            f"was trained on: {problem}; pass --steps {steps} (the default) of the suite it was trained on"
        )
    unchecked = unverifiable_snapshots(recorded, offered)
    if unchecked:
        print(
            f"crosslens: the weights of snapshot(s) {', '.join(unchecked)} cannot be checked against the crosscoder "
            "(no weight identity recorded on both sides); only their revisions and steps were compared",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _task_flag_errors(args: argparse.Namespace):
    """A task the suite's tokenizer cannot score is an error in the --task (or --task-file) flag."""
    from crosslens.tasks import TaskTokenizationError

    try:
        yield
    except TaskTokenizationError as error:
        flag = f"--task-file {args.task_file}" if args.task_file else f"--task {args.task}"
        raise CLIError(f"{flag}: {error}") from None


def _tasks_from_args(args: argparse.Namespace) -> list:
    """Task names, or tasks loaded from files: --task takes names and pairs files (BLiMP, CLAMS or
    crosslens JSONL; a MultiBLiMP-style file gives one task per language), --task-file a file."""
    from crosslens.tasks import list_tasks, multilingual_tasks
    from crosslens.tasks.blimp import load_task_file

    tasks: list = []
    files = [("--task-file", args.task_file)] if args.task_file else []
    task_given = "task" in getattr(args, "explicit", ()) or not args.task_file  # the default joins no --task-file
    for part in multilingual_tasks(args.task) if task_given else []:
        looks_like_file = Path(part).suffix.lower() in (".jsonl", ".json", ".txt", ".tsv") or "/" in part
        if looks_like_file or Path(part).is_file():
            files.append(("--task", part))
        else:
            tasks.append(part)
    for flag, path in files:
        if not Path(path).is_file():
            fix = "pass a task name (e.g. agreement_pp) or a pairs file" if flag == "--task" else "pass a pairs file"
            raise CLIError(f"{flag} {path}: no such file; {fix}")
        try:
            on_invalid = "skip" if args.skip_invalid else "raise"
            tasks.extend(load_task_file(path, on_invalid=on_invalid).values())
        except ValueError as error:
            raise CLIError(f"{flag} {path}: {error}") from None
    if not tasks:
        raise CLIError("--task names no task; pass e.g. --task agreement_pp or --task PAIRS.jsonl")
    unknown = [t for t in tasks if isinstance(t, str) and t not in list_tasks()]
    if unknown:
        raise CLIError(
            f"--task {unknown[0]}: unknown task; choose one of {', '.join(list_tasks())}, or pass a pairs file"
        )
    return tasks


COMMAND = Subcommand(
    ("attribute",),
    "integrated-gradient attribution of crosscoder features",
    (AttributeFlags, SuiteFlags, DeviceFlags),
    attribute,
)
