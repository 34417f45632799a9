"""``crosslens attribute``: features of a crosscoder attributed on a task, per snapshot."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from crosslens.commands.common import CLIError, crosscoder_folder_arg, device_and_dtype, resolve_suite


TASK_DEFAULT = "agreement_pp"


def attribute(args: argparse.Namespace) -> int:
    from crosslens.causal.demo import attribution_sections, causal_out_dir
    from crosslens.commands.inputs import check_output_file
    from crosslens.commands.runs import crosscoder_suite_record, run_folder, save_section

    folder = crosscoder_folder_arg(args.crosscoder, "--crosscoder")
    check_output_file(args.out, example="attribution.json")  # before any model loads
    device, dtype = device_and_dtype(args)
    steps = args.steps
    record = crosscoder_suite_record(folder)
    if steps is None and args.n_snapshots is None:  # the snapshots the crosscoder was trained on
        steps = [int(entry["step"]) for entry in record.get("snapshots") or []] or None
    tasks = _tasks_from_args(args)  # before any model loads
    suite_spec = args.suite or record.get("root") or record.get("model_id") or "pico"
    if args.suite is None and suite_spec != "pico":
        print(f"suite: {suite_spec} (recorded with the crosscoder; --suite overrides)")
    suite = resolve_suite(suite_spec, steps, args.n_snapshots)
    _check_snapshots(record, suite, folder, args)  # before any model loads
    if len(tasks) > 1:  # several languages: run together, RelIE per language side by side
        from crosslens.causal.demo import language_attribution_sections
        from crosslens.checkpoints.on_device import on_device

        with _task_flag_errors(args):
            sections = language_attribution_sections(
                on_device(suite, device, dtype), str(folder), tasks, n_examples=args.n_examples, out=args.out
            )
        report = Path(args.out).with_suffix(".html")
        sections[0].write(report)
        print(f"report: {report}")
        return 0
    task = tasks[0]
    print(metric_sign())
    summaries: list = []
    with _task_flag_errors(args):
        sections = attribution_sections(
            suite, str(folder), task=task, n_examples=args.n_examples, out=args.out, device=device, dtype=dtype,
            summaries=summaries, allow_chance=args.allow_chance,
        )  # fmt: skip
    report = Path(args.out).with_suffix(".html")
    sections[0].write(report)
    name = task if isinstance(task, str) else task.name
    if not isinstance(task, str):
        summary = summaries[0]
        print(
            f"pairs: {summary.n_examples} of the {len(task)} in the file scored (--n-examples caps it), "
            f"{summary.n_multi_token} of them with multi-token continuations"
        )
    print(f"IE table: {args.out}")
    print(f"plots and tables: {causal_out_dir(args.out, name)}")
    print(f"report: {report}")
    run_dir = run_folder(folder)
    if run_dir is not None:
        saved = save_section(sections[0], run_dir, f"attribution-{name}")
        print(f"section saved to {saved}; `crosslens report {run_dir}` puts it into report.html")
    return 0


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
    import sys

    from crosslens.activations.partners import snapshot_problem, unverifiable_snapshots
    from crosslens.activations.resume import snapshot_identities

    recorded = record.get("snapshots")
    if not recorded:
        raise CLIError(
            f"--crosscoder {folder}: it records no snapshots it was trained on (saved without that record), so "
            "the suite's snapshots cannot be checked against it; retrain it with this crosslens"
        )
    offered = [{**ref.to_dict(), "source": identity} for ref, identity in zip(suite.snapshots, snapshot_identities(suite))]
    problem = snapshot_problem(recorded, offered, require_identity=False)
    if problem:
        given = [f for f, v in (("--suite", args.suite), ("--steps", args.steps), ("--n-snapshots", args.n_snapshots)) if v]
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
    from crosslens.tasks import multilingual_tasks
    from crosslens.tasks.blimp import load_task_file

    tasks: list = []
    files = [args.task_file] if args.task_file else []
    for part in ([] if args.task_file and args.task == TASK_DEFAULT else multilingual_tasks(args.task)):
        looks_like_file = Path(part).suffix.lower() in (".jsonl", ".json", ".txt", ".tsv") or "/" in part
        if looks_like_file or Path(part).is_file():
            files.append(part)
        else:
            tasks.append(part)
    for path in files:
        if not Path(path).is_file():
            raise CLIError(f"--task {path}: no such file; pass a task name (e.g. agreement_pp) or a pairs file")
        try:
            on_invalid = "skip" if args.skip_invalid else "raise"
            tasks.extend(load_task_file(path, on_invalid=on_invalid).values())
        except ValueError as error:
            raise CLIError(f"--task {path}: {error}") from None
    if not tasks:
        raise CLIError("--task names no task; pass e.g. --task agreement_pp or --task PAIRS.jsonl")
    from crosslens.tasks import list_tasks

    unknown = [t for t in tasks if isinstance(t, str) and t not in list_tasks()]
    if unknown:
        raise CLIError(f"--task {unknown[0]}: unknown task; choose one of {', '.join(list_tasks())}, or pass a pairs file")
    return tasks
