"""The causal stage as report sections, the way the demo and ``crosslens attribute`` run it:
for one task (:func:`attribution_sections`) or one task per language
(:func:`language_attribution_sections`), with what each snapshot showed printed as it goes."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crosslens.causal import defaults
from crosslens.causal.behaviour import SnapshotBehaviour, behaving_columns, chance_note
from crosslens.causal.languages import language_of, run_language_tasks
from crosslens.causal.relative_ie import RelIEThresholds
from crosslens.causal.snapshot_models import context_length
from crosslens.causal.stage import load_crosscoder, metric_formula, run_causal_stage
from crosslens.checkpoints.on_device import on_device
from crosslens.core.paths import crosslens_home
from crosslens.tasks import TaskTokenizationError, task_for_tokenizer

if TYPE_CHECKING:
    from crosslens.checkpoints.suite import CheckpointSuite
    from crosslens.crosscoders.protocol import Crosscoder


def causal_out_dir(out: str | Path | None, task: str) -> Path:
    """Where the causal files go: ``out`` itself if a folder, ``<stem>_causal/`` beside a ``.json`` path."""
    if out is None:
        return crosslens_home() / "causal" / task
    out = Path(out)
    if out.suffix == ".json":
        return out.with_name(f"{out.stem}_causal")
    return out / f"causal-{task}"


def attribution_sections(
    suite: CheckpointSuite,
    crosscoder: Crosscoder | str | Path,
    *,
    task: str = defaults.TASK,
    n_examples: int = defaults.N_EXAMPLES,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    results: list | None = None,
    model_lines: bool = True,
    **stage_kwargs: Any,
) -> list:
    """Run :func:`run_causal_stage` for one named task; return its report as a section list.

    ``suite`` is the (selected) suite the crosscoder was trained on; ``crosscoder`` an
    object or a saved folder. When ``out`` ends in ``.json`` the IE table is also
    written there (the ``crosslens attribute --out`` convention). ``stage_kwargs`` go to
    :func:`run_causal_stage` (``config``, ``top_k``, ``ks``, ``ablation``, ``progress``,
    ``allow_chance``, ...), whose defaults hold otherwise. The snapshot models load on ``device`` in ``dtype``; a crosscoder folder loads on ``device``.
    The stage's :class:`~crosslens.causal.stage.CausalStageResult` (its summary with
    ``claims_final``, its tokenized task and activations) is appended to ``results`` when given.
    ``model_lines=False`` leaves out the per-snapshot metric lines, which describe the model,
    not the crosscoder (a second crosscoder of the same suite prints only its own findings).
    A snapshot where the model is at chance on the pairs is printed as such, with no feature
    counts; ``allow_chance=False`` refuses a task at chance at every snapshot
    (:class:`crosslens.causal.behaviour.NoBehaviourError`), and is what ``crosslens attribute``
    passes unless told otherwise.
    """
    crosscoder = load_crosscoder(crosscoder, device=str(device))
    suite = on_device(suite, device, dtype)
    dataset = _task_dataset(task, suite.tokenizer(), n_examples, seed, context_length(suite))
    out_dir = causal_out_dir(out, dataset.name)
    result = run_causal_stage(suite, crosscoder, dataset, out_dir, **stage_kwargs)
    if out is not None and Path(out).suffix == ".json":
        result.table.save(out)
    summary = result.summary
    if results is not None:
        results.append(result)
    print(f"causal stage ({dataset.name}, {summary.n_examples} examples): files in {out_dir}")
    if summary.n_multi_token:
        print(
            f"  {summary.n_multi_token} of {summary.n_examples} examples have continuations of several tokens: "
            "features are patched at the prompt's positions and both continuations scored under teacher forcing"
        )
    if model_lines:
        print(f"  metric = {metric_formula(summary.metric)}: negative means the model prefers the correct continuation")
    specific = stage_kwargs.get("thresholds", RelIEThresholds()).specific
    _print_snapshots(summary, model_lines=model_lines, specific_line=specific)
    return [result.report]


def _print_snapshots(
    summary: Any, *, model_lines: bool = True, specific_line: float = RelIEThresholds.specific
) -> None:
    """The per-snapshot lines and the final keep-only restoration; a snapshot at chance is
    printed with its accuracy instead of a feature count, and no restoration of it is shown.
    Where no snapshot has a snapshot-specific feature, a line says what that zero means."""
    behaviours = [SnapshotBehaviour.from_dict(b) for b in summary.behaviour]
    behaving = behaving_columns(behaviours, len(summary.snapshots))
    specific = summary.specific_per_snapshot
    any_specific = any(specific[c] for c in behaving)
    if model_lines:
        note = chance_note(behaviours)
        if note is not None:
            print(f"  {note}")
        for column, (label, clean) in enumerate(zip(summary.snapshots, summary.metric_clean)):
            if column not in behaving:
                print(
                    f"  {label:>12s}  metric {clean:+.3f} (no behaviour: {behaviours[column].describe(with_mean=False)})"
                )
                continue
            side = "prefers correct" if clean < 0 else "prefers wrong"
            print(f"  {label:>12s}  metric {clean:+.3f} ({side})  snapshot-specific features {specific[column]}")
    elif any_specific:
        counts = ", ".join(f"{summary.snapshots[c]} {specific[c]}" for c in behaving)
        print(f"  snapshot-specific features: {counts}")
    if not any_specific and behaving:
        print(
            f"  no feature is snapshot-specific (RelIE > {specific_line:g}, above the noise floor) at any snapshot with "
            "a behaviour: each top feature's effect is spread over several snapshots"
        )
    where = f"keep-only restoration at {summary.snapshots[-1]} ({summary.ablation}-ablation)"
    if behaviours and behaviours[-1].at_chance:
        print(f"  {where}: not shown, no behaviour there")
        return
    restored = ", ".join(  # a share that rounds to zero is 0%, whichever side of it
        f"top-{k} {value:.0%}".replace("-0%", "0%")
        for k, value in summary.keep_only_restored_final.items()
        if value is not None
    )
    if not summary.keep_only_restored_final and summary.features_with_effect:
        restored = (
            f"no top-k row, {summary.features_with_effect[-1]} features have a nonzero IE there (the most ranked)"
        )
    print(f"  {where}: {restored}")


def language_attribution_sections(
    suite: CheckpointSuite,
    crosscoder: Crosscoder | str | Path,
    tasks: Sequence[Any],
    *,
    n_examples: int = defaults.N_EXAMPLES,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    **stage_kwargs: Any,
) -> list:
    """The causal stage for several tasks together, one per language (task names such as
    ``agreement_multilingual_fr``, or loaded :class:`TaskDataset` s, e.g. from
    ``load_multilingual_blimp``), with RelIE per language side by side
    (:func:`crosslens.causal.languages.run_language_tasks`). The models and a crosscoder folder
    load on ``device`` (the models in ``dtype``), as for :func:`attribution_sections`. Returns the
    comparison section followed by each language's own report."""
    crosscoder = load_crosscoder(crosscoder, device=str(device))
    suite = on_device(suite, device, dtype)
    tokenizer = suite.tokenizer()
    n_ctx = context_length(suite)
    datasets = [_task_dataset(task, tokenizer, n_examples, seed, n_ctx) for task in tasks]
    out_dir = causal_out_dir(out, "languages")
    combined = run_language_tasks(suite, crosscoder, datasets, out_dir, **stage_kwargs)
    print(f"causal stage for {len(datasets)} languages: files in {out_dir}")
    labels = next(iter(combined["results"].values())).summary.snapshots
    width = 1 + max(9, *(len(language_of(d)) for d in datasets))
    header = "".join(f"{language_of(d):>{width}s}" for d in datasets)
    print(f"  {'metric':>12s}{header}")
    for column, label in enumerate(labels):
        values = "".join(f"{r.summary.metric_clean[column]:+{width}.3f}" for r in combined["results"].values())
        print(f"  {label:>12s}{values}")
    for language, result in combined["results"].items():
        chance = [b["label"] for b in result.summary.behaviour if b["at_chance"]]
        if chance:
            print(f"  {language}: no behaviour (at chance) at {', '.join(chance)}; no feature classed there")
    print(f"  RelIE per language: {combined['paths']['report']}")
    return [combined["report"], *(r.report for r in combined["results"].values())]


def _task_dataset(task: str | Any, tokenizer: Any, n_examples: int, seed: int, max_tokens: int | None) -> Any:
    """A named task's ``n_examples`` seeded pairs, or the pairs of a loaded TaskDataset (a BLiMP,
    CLAMS or crosslens pairs file) that the tokenizer can score within the models' context of
    ``max_tokens``, up to ``n_examples``."""
    if isinstance(task, str):
        return task_for_tokenizer(task, tokenizer, n=n_examples, seed=seed, max_tokens=max_tokens)
    return _fitting(task, tokenizer, n_examples, max_tokens)


def _fitting(task: Any, tokenizer: Any, n_examples: int, max_tokens: int | None = None) -> Any:
    """The first ``n_examples`` pairs of ``task`` that ``tokenizer`` can score (continuations of
    any length; see :meth:`TaskDataset.check_tokenizer`) within ``max_tokens`` (the models'
    context), with a warning naming why the first dropped one could not be."""
    problems = task.problems(tokenizer, max_tokens=max_tokens)
    if len(problems) == len(task):
        first = next(iter(problems.values()))
        raise TaskTokenizationError(f"none of the {len(task)} pairs can be scored with the suite's tokenizer; {first}")
    fitting = replace(task, pairs=tuple(pair for index, pair in enumerate(task.pairs) if index not in problems))
    if problems:
        first = next(iter(problems.values()))
        warnings.warn(
            f"task {task.name!r}: kept {len(fitting)} of {len(task)} pairs the models can score; {first}",
            stacklevel=2,
        )
    return fitting if len(fitting) <= n_examples else replace(fitting, pairs=fitting.pairs[:n_examples])
