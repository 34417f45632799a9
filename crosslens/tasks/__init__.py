"""Minimal-pair tasks for attribution: generators, file loaders, tokenization checks.

Shipped generators (crosslens's own lexicon and templates):

=====================  ====================================================
``agreement_simple``   subject-verb agreement right after the subject
``agreement_pp``       ... across a prepositional phrase with an attractor
``agreement_rc``       ... across an object relative clause with an attractor
``ioi``                indirect-object identification
``pico_*``             the pico grammar's own tasks (see :func:`pico_task`)
=====================  ====================================================

Bring your own with :func:`load_blimp_jsonl` (BLiMP, or any JSONL of sentence
pairs), :func:`load_clams` or :func:`load_pairs_jsonl`; a multilingual
(MultiBLiMP-style) file gives one task per language with :func:`load_multilingual_blimp`.

Shipped multilingual data: ``agreement_multilingual`` (:func:`multilingual_agreement`),
30 subject-verb agreement pairs each in English, French and Spanish, written for
crosslens; ``agreement_multilingual_en`` (``_fr``, ``_es``) name one language's task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from crosslens.tasks.agreement import agreement_pairs
from crosslens.tasks.base import MinimalPair, TaskDataset, TaskTokenizationError
from crosslens.tasks.blimp import (
    MinimalPairFormatError,
    load_blimp_jsonl,
    load_clams,
    load_multilingual_blimp,
    load_pairs_jsonl,
)
from crosslens.tasks.grammar import PicoGrammar
from crosslens.tasks.ioi import ioi_pairs

__all__ = [
    "MinimalPair",
    "MinimalPairFormatError",
    "TaskDataset",
    "TaskTokenizationError",
    "get_task",
    "list_tasks",
    "load_blimp_jsonl",
    "load_clams",
    "load_multilingual_blimp",
    "load_pairs_jsonl",
    "task_for_tokenizer",
]

PICO_TASKS = ("pico_agreement_simple", "pico_agreement_pp", "pico_agreement_rc", "pico_ioi")
MULTILINGUAL_AGREEMENT = "agreement_multilingual"
MULTILINGUAL_LANGUAGES = ("en", "fr", "es")
MULTILINGUAL_TASKS = tuple(f"{MULTILINGUAL_AGREEMENT}_{lang}" for lang in MULTILINGUAL_LANGUAGES)


def multilingual_agreement_path():
    """The shipped multilingual agreement file (BLiMP-format JSONL with a ``language`` field)."""
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "data" / f"{MULTILINGUAL_AGREEMENT}.jsonl"


def multilingual_agreement(languages=None) -> dict[str, TaskDataset]:
    """The shipped English, French and Spanish subject-verb agreement pairs, one task per
    language (``agreement_multilingual_en``, ...): a singular or plural subject, alone or
    followed by a phrase with a plural attractor noun, then the verb."""
    return load_multilingual_blimp(multilingual_agreement_path(), languages=languages)


def multilingual_tasks(spec: str) -> list[str]:
    """Task names for ``crosslens attribute --task``: a comma-separated list in which
    ``agreement_multilingual`` stands for every language's task."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        expanded = list(MULTILINGUAL_TASKS) if part == MULTILINGUAL_AGREEMENT else [part]
        names.extend(n for n in expanded if n not in names)
    return names


def pico_task(name: str, n: int = 64, seed: int = 0, *, grammar=None) -> TaskDataset:
    """A task from the pico grammar (its own vocabulary, so its words are single pico tokens).

    ``name`` is one of ``pico_agreement_simple``, ``pico_agreement_pp``,
    ``pico_agreement_rc`` or ``pico_ioi``; ``grammar`` defaults to ``PicoGrammar()``,
    the grammar the default pico suite is trained on.
    """
    if name not in PICO_TASKS:
        raise ValueError(f"unknown pico task {name!r}; choose one of {', '.join(PICO_TASKS)}")
    grammar = grammar if grammar is not None else PicoGrammar()
    if name == "pico_ioi":
        produced = grammar.ioi_pairs(n=n, seed=seed)
        description = "pico grammar: indirect-object identification"
    else:
        kind = name.removeprefix("pico_agreement_")
        produced = grammar.agreement_pairs(kind, n=n, seed=seed)
        description = f"pico grammar: subject-verb agreement ({kind})"
    return as_task(name, produced, description)


def as_task(name: str, pairs, description: str = "") -> TaskDataset:
    """A :class:`TaskDataset` from any iterable of objects with clean/correct/wrong(/corrupted/meta) fields."""
    if isinstance(pairs, TaskDataset):
        return pairs
    converted = []
    for pair in pairs:
        if isinstance(pair, MinimalPair):
            converted.append(pair)
            continue
        converted.append(
            MinimalPair(
                clean=pair.clean,
                correct=pair.correct,
                wrong=pair.wrong,
                corrupted=getattr(pair, "corrupted", None),
                meta=dict(getattr(pair, "meta", {}) or {}),
            )
        )
    return TaskDataset(name=name, pairs=tuple(converted), description=description)


_GENERATORS: dict[str, Callable[[int, int], TaskDataset]] = {
    "agreement_simple": lambda n, seed: agreement_pairs("simple", n=n, seed=seed),
    "agreement_pp": lambda n, seed: agreement_pairs("pp", n=n, seed=seed),
    "agreement_rc": lambda n, seed: agreement_pairs("rc", n=n, seed=seed),
    "ioi": lambda n, seed: ioi_pairs(n=n, seed=seed),
}


def list_tasks() -> list[str]:
    """Names accepted by :func:`get_task`."""
    return [*_GENERATORS, *PICO_TASKS, *MULTILINGUAL_TASKS]


def task_for_tokenizer(
    name: str, tokenizer, n: int = 64, seed: int = 0, *, max_tokens: int | None = None
) -> TaskDataset:
    """:func:`get_task`, made to fit ``tokenizer`` and a context of ``max_tokens`` (BOS, prompt
    and continuation; the model's ``n_ctx``).

    Continuations may be several tokens. If the tokenizer cannot score the task (e.g. the
    English ``agreement_pp`` on the pico suite's word-level vocabulary, which lacks its
    words), its ``pico_`` counterpart is used when that fits; otherwise the examples that
    cannot be scored, or are longer than the context, are dropped with a warning.
    """
    import warnings

    dataset = get_task(name, n=n, seed=seed)
    try:
        dataset.check_tokenizer(tokenizer, max_tokens=max_tokens)
        return dataset
    except TaskTokenizationError as error:
        problem = error
    counterpart = f"pico_{name}"
    if counterpart in PICO_TASKS:
        alternative = get_task(counterpart, n=n, seed=seed)
        try:
            alternative.check_tokenizer(tokenizer, max_tokens=max_tokens)
            warnings.warn(f"task {name!r} does not fit this tokenizer ({problem}); using {counterpart!r}", stacklevel=2)
            return alternative
        except TaskTokenizationError:
            pass
    kept = dataset.filter_tokenizable(tokenizer, max_tokens=max_tokens)
    warnings.warn(
        f"task {name!r}: kept {len(kept)} of {len(dataset)} examples that fit this tokenizer ({problem})", stacklevel=2
    )
    return kept


def get_task(name: str, n: int = 64, seed: int = 0) -> TaskDataset:
    """A shipped task by name (see :func:`list_tasks`), ``n`` pairs of it (at least 1)."""
    if n < 1:
        raise ValueError(f"{name}: n must be at least 1, got {n}")
    if name in _GENERATORS:
        return _GENERATORS[name](n, seed)
    if name in PICO_TASKS:
        return pico_task(name, n=n, seed=seed)
    if name in MULTILINGUAL_TASKS:  # fixed sentences: the first n, seed unused
        task = multilingual_agreement([name.removeprefix(f"{MULTILINGUAL_AGREEMENT}_")]).popitem()[1]
        return task if n >= len(task) else replace(task, pairs=task.pairs[:n])
    raise ValueError(
        f"unknown task {name!r}; choose one of {', '.join(list_tasks())}, "
        "or load your own with load_blimp_jsonl / load_clams / load_pairs_jsonl"
    )
