"""Bring-your-own minimal pairs: BLiMP-format JSONL, CLAMS-style text files, crosslens JSONL.

BLiMP, CLAMS and MultiBLiMP give whole sentence pairs (grammatical, ungrammatical).
Attribution needs a prompt and two continuations, so a sentence pair is turned into
a minimal pair by its longest common word prefix: the prefix is the prompt and the
first words that differ are the continuations::

    good: "The keys to the cabinet are on the table."
    bad:  "The keys to the cabinet is on the table."
    ->    clean="The keys to the cabinet", correct=" are", wrong=" is"

Words are runs of letters/digits (with inner apostrophes or hyphens) or single
punctuation marks; the prompt and continuations keep the original spacing.
Pairs with no such difference (identical sentences, or one a prefix of the other)
are rejected with the file and line that hold them. A continuation may be several
tokens (a word a BPE tokenizer splits); whether a tokenizer can score the pair at all
(:meth:`TaskDataset.check_tokenizer`: no unknown tokens, continuations that do not
merge with the prompt) is checked while loading when ``tokenizer=`` is given.

Formats:

- **BLiMP JSONL**: one JSON object per line with ``sentence_good`` and
  ``sentence_bad`` (other fields, e.g. ``UID`` and ``pairID``, go to ``meta``).
  Other pair datasets load through the same function with ``good_key``/``bad_key``
  naming their two sentence fields.
- **Multilingual (MultiBLiMP-style) JSONL**: the same, plus a ``language`` field per
  line (``language_key`` names another); ``load_blimp_jsonl(..., language="fr")`` keeps
  one language and :func:`load_multilingual_blimp` gives one task per language.
- **CLAMS**: plain text, one ``LABEL<TAB>sentence`` per line, LABEL ``True`` for the
  grammatical sentence and ``False`` for an ungrammatical one. Each ``True`` line
  starts a group and every ``False`` line after it pairs with it (CLAMS ships one
  ``False`` per ``True``). Blank lines and ``#`` comments are skipped. This is the
  layout of the CLAMS release's ``*.txt`` files as we understand it; files that
  differ can be converted to BLiMP JSONL.
- **crosslens JSONL**: one :meth:`MinimalPair.to_dict` per line (``clean``,
  ``correct``, ``wrong``, optional ``corrupted`` and ``meta``), as written by
  :meth:`TaskDataset.to_jsonl`.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from crosslens.tasks.base import MinimalPair, TaskDataset, TaskTokenizationError, resolve_tokenizer

_WORD = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")

OnInvalid = Literal["raise", "skip"]


class MinimalPairFormatError(ValueError):
    """A sentence pair cannot be turned into a prompt plus continuations."""


def pair_from_sentences(good: str, bad: str, meta: dict[str, Any] | None = None) -> MinimalPair:
    """The minimal pair at the first word where ``good`` and ``bad`` differ (see module docstring)."""
    good_words = list(_WORD.finditer(good))
    bad_words = list(_WORD.finditer(bad))
    split = 0
    while split < min(len(good_words), len(bad_words)) and good_words[split].group() == bad_words[split].group():
        split += 1
    if split == len(good_words) and split == len(bad_words):
        raise MinimalPairFormatError(f"the sentences have the same words ({good!r}); nothing to compare")
    if split == len(good_words) or split == len(bad_words):
        raise MinimalPairFormatError(
            f"one sentence is a word prefix of the other ({good!r} vs {bad!r}); the pair must differ "
            "in a word both sentences have at the same place"
        )
    # Prompt: everything before the differing word, trailing space moved onto the continuation.
    prompt_end = good_words[split - 1].end() if split else 0
    correct = good[prompt_end : good_words[split].end()]
    wrong = bad[prompt_end : bad_words[split].end()]
    suffix_identical = [m.group() for m in good_words[split + 1 :]] == [m.group() for m in bad_words[split + 1 :]]
    return MinimalPair(
        clean=good[:prompt_end],
        correct=correct,
        wrong=wrong,
        meta={**(meta or {}), "sentence_good": good, "sentence_bad": bad, "suffix_identical": suffix_identical},
    )


def pair_shape_problem(good: str, bad: str) -> str | None:
    """Why a sentence pair does not fit the prompt + continuation format, or None when it does.

    The format scores the first differing word after the shared prefix, so the sentences must
    share a prefix (the prompt) and differ in one place: one word swapped for another (or one
    inserted), the rest identical. With no shared prefix there is no prompt to decide the
    answer; with a second difference later on, what makes the bad sentence bad may lie there
    (e.g. the subject changed and the verb kept), and it is never scored.
    """
    good_words = [m.group() for m in _WORD.finditer(good)]
    bad_words = [m.group() for m in _WORD.finditer(bad)]
    start = 0
    while start < min(len(good_words), len(bad_words)) and good_words[start] == bad_words[start]:
        start += 1
    if start == 0:
        return (
            f"the sentences differ at their first word ({good_words[0]!r} vs {bad_words[0]!r}), so no prompt is "
            "shared and nothing decides the answer; pairs must share the words before the one that differs"
        )
    end = 0  # identical words at the end, not overlapping the shared prefix
    while end < min(len(good_words), len(bad_words)) - start and good_words[-1 - end] == bad_words[-1 - end]:
        end += 1
    good_diff, bad_diff = good_words[start : len(good_words) - end], bad_words[start : len(bad_words) - end]
    if len(good_diff) > 1 or len(bad_diff) > 1:
        return (
            f"the sentences differ in more than one place ({' '.join(good_diff)!r} vs {' '.join(bad_diff)!r} after "
            f"{' '.join(good_words[:start])!r}); only the first differing word would be scored, and whatever later "
            "makes the bad sentence bad would not; write the pair so that one word differs (e.g. the verb, "
            "after its subject), or give clean/correct/wrong as crosslens JSONL"
        )
    return None


def short_prompt(pair: MinimalPair) -> bool:
    """The prompt is one word (e.g. ``"The"``): when the differing word is the subject, the
    cue that makes the pair (its verb) comes after the continuation, and the score measures
    which noun the model expects rather than agreement."""
    return len(_WORD.findall(pair.clean)) == 1


# how to drop unusable pairs, for a library caller and for the command line
SKIP_HINT = "pass on_invalid='skip' (`crosslens attribute --skip-invalid`) to drop such"


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of each line of ``path`` that holds something: blank lines and
    ``#`` comments are skipped but counted, so the numbers are the ones an editor shows
    (lines end at ``\\n`` only; a line separator inside a sentence does not start a line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line_no = path.read_bytes()[: error.start].count(b"\n") + 1
        raise MinimalPairFormatError(f"{path}, line {line_no}: not UTF-8 text; save the file as UTF-8") from None
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip() and not line.lstrip().startswith("#"):
            yield line_no, line


def json_lines(path: Path, skip_invalid: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of each JSON object line of ``path`` (see :func:`numbered_lines`);
    a line that is not a JSON object raises naming its line, or is skipped with ``skip_invalid``."""
    for line_no, line in numbered_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problem = f"not valid JSON ({error.msg}, column {error.colno})"
        else:
            if isinstance(record, dict):
                yield line_no, record
                continue
            problem = f"a JSON {type(record).__name__}, not an object with the pair's fields"
        if not skip_invalid:
            raise MinimalPairFormatError(f"{path}, line {line_no}: {problem}; fix or remove the line")


def _check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")


def _finish(
    name: str,
    candidates: list[tuple[str, int, str, str, dict[str, Any]]],
    tokenizer: Any,
    on_invalid: OnInvalid,
    description: str,
    *,
    malformed: int = 0,
    limit: int | None = None,
) -> TaskDataset:
    """The task from a reader's parsed ``(path, line, good, bad, meta)`` candidates: each checked
    (and with ``tokenizer`` scored), the first ``limit`` usable ones kept. ``malformed``: lines
    already skipped while parsing (``on_invalid="skip"``)."""
    _check_on_invalid(on_invalid)
    tokenizer = resolve_tokenizer(tokenizer) if tokenizer is not None else None
    candidates = _limit_after_parsing(candidates, limit, tokenizer, on_invalid)
    pairs: list[MinimalPair] = []
    skipped = malformed
    short: list[str] = []
    for path, line, good, bad, meta in candidates:
        try:
            pair = pair_from_sentences(good, bad, {**meta, "source": path, "line": line})
            problem = pair_shape_problem(good, bad)
            if problem is not None:
                raise MinimalPairFormatError(problem)
            if tokenizer is not None:
                TaskDataset(name=name, pairs=(pair,)).check_tokenizer(tokenizer)
        except (MinimalPairFormatError, TaskTokenizationError) as error:
            if on_invalid == "skip":
                skipped += 1
                continue
            where = "" if str(error).startswith(f"{path}, line {line}:") else f"{path}, line {line}: "
            raise type(error)(f"{where}{error} ({SKIP_HINT} pairs)") from None
        pairs.append(pair)
        if short_prompt(pair):
            short.append(f"{path}, line {line}")
    if short:
        warnings.warn(
            f"{name}: {len(short)} of {len(pairs)} pairs have a one-word prompt (first: {short[0]}, prompt "
            f"{next(p.clean for p in pairs if short_prompt(p))!r}); if their sentences differ at the subject, the "
            "word that decides them comes after the scored continuation and the pair measures which noun the "
            "model expects, not agreement: make them differ at the verb",
            stacklevel=2,
        )
    total = len(candidates) + malformed
    if not pairs:
        raise MinimalPairFormatError(
            f"{name}: none of the {total} sentence pairs gives a usable minimal pair"
            + (" with this tokenizer" if tokenizer is not None else "")
        )
    if skipped:
        warnings.warn(
            f"{name}: skipped {skipped} of {total} sentence pairs that give no usable minimal pair"
            + (f" ({malformed} malformed lines)" if malformed else ""),
            stacklevel=2,
        )
    return TaskDataset(name=name, pairs=tuple(pairs), description=description)


def load_blimp_jsonl(
    path: str | Path,
    *,
    name: str | None = None,
    tokenizer: Any = None,
    on_invalid: OnInvalid = "raise",
    limit: int | None = None,
    good_key: str = "sentence_good",
    bad_key: str = "sentence_bad",
    language: str | None = None,
    language_key: str = "language",
) -> TaskDataset:
    """Minimal pairs from a BLiMP-format JSONL file (one sentence pair per line).

    Args:
        path: the ``.jsonl`` file.
        name: task name (default: the file's stem, e.g. ``"regular_plural_subject_verb_agreement_1"``).
        tokenizer: if given, also require that it can score each pair (HF tokenizer or
            HookedTransformer; :meth:`TaskDataset.check_tokenizer`); continuations may be several tokens.
        on_invalid: ``"raise"`` on the first unusable pair (naming its line) or ``"skip"`` it.
        limit: keep at most this many usable pairs.
        good_key, bad_key: the fields holding the grammatical and ungrammatical sentence.
        language: keep only the lines whose `language_key` field equals this (e.g. ``"fr"``
            in a multilingual file); the default name then ends in ``_<language>``. See
            :func:`load_multilingual_blimp` for one task per language.
        language_key: the field naming each line's language.
    """
    _check_on_invalid(on_invalid)
    path = Path(path)
    if language is not None:
        name = name or f"{path.stem}_{language}"
    candidates = []
    malformed = 0
    for line_no, line in numbered_lines(path):
        try:
            candidate = _blimp_candidate(path, line_no, line, good_key, bad_key)
        except MinimalPairFormatError:
            if on_invalid == "raise":
                raise
            malformed += 1
            continue
        if language is not None and _language_of(candidate[4], language_key, path, line_no) != language:
            continue
        candidates.append(candidate)
    if language is not None and not candidates:
        present = sorted(languages_in(path, language_key=language_key))
        raise MinimalPairFormatError(
            f"{path}: no line has {language_key}={language!r}; the languages here are {present}"
        )
    description = f"minimal pairs from {path.name}" + (f" ({language})" if language is not None else "")
    return _finish(name or path.stem, candidates, tokenizer, on_invalid, description, malformed=malformed, limit=limit)


def _blimp_candidate(path: Path, line_no: int, line: str, good_key: str, bad_key: str) -> tuple:
    """One JSONL line -> (path, line, good, bad, meta); `MinimalPairFormatError` naming the line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise MinimalPairFormatError(
            f"{path}, line {line_no}: not valid JSON ({error.msg}) ({SKIP_HINT} lines)"
        ) from None
    if not isinstance(record, dict) or good_key not in record or bad_key not in record:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise MinimalPairFormatError(
            f"{path}, line {line_no}: needs fields {good_key!r} and {bad_key!r}, found {found}; "
            f"rename the sentence fields so, or pass good_key=/bad_key= to name them ({SKIP_HINT} lines)"
        )
    good, bad = record.pop(good_key), record.pop(bad_key)
    for key, value in ((good_key, good), (bad_key, bad)):
        if not isinstance(value, str) or not value.strip():
            raise MinimalPairFormatError(
                f"{path}, line {line_no}: {key!r} is {value!r}, not a sentence; fix the line ({SKIP_HINT} lines)"
            )
    return (str(path), line_no, good, bad, record)


def _language_of(record: dict[str, Any], language_key: str, path: Path, line_no: int) -> str:
    if language_key not in record:
        raise MinimalPairFormatError(
            f"{path}, line {line_no}: no {language_key!r} field, found {sorted(record)}; "
            "pass language_key= to name the field holding each line's language"
        )
    return str(record[language_key])


def languages_in(path: str | Path, *, language_key: str = "language", skip_invalid: bool = False) -> list[str]:
    """The languages a multilingual BLiMP-format JSONL file holds, in order of first appearance
    (lines that are not JSON objects refused, or passed over with ``skip_invalid``)."""
    path = Path(path)
    seen: dict[str, None] = {}
    for line_no, record in json_lines(path, skip_invalid):
        seen.setdefault(_language_of(record, language_key, path, line_no), None)
    return list(seen)


def load_multilingual_blimp(
    path: str | Path,
    *,
    languages: list[str] | None = None,
    name: str | None = None,
    tokenizer: Any = None,
    on_invalid: OnInvalid = "raise",
    limit: int | None = None,
    good_key: str = "sentence_good",
    bad_key: str = "sentence_bad",
    language_key: str = "language",
) -> dict[str, TaskDataset]:
    """One task per language from a MultiBLiMP-style file: BLiMP-format JSONL holding one
    phenomenon in several languages, each line naming its language in `language_key`.

    Returns ``{language: task}`` in order of first appearance (or of `languages`, which
    picks some); each task is named ``<name or file stem>_<language>`` and loads as
    :func:`load_blimp_jsonl` with ``language=`` would. `limit` applies per language.
    """
    path = Path(path)
    present = languages_in(path, language_key=language_key, skip_invalid=on_invalid == "skip")
    chosen = present if languages is None else [languages] if isinstance(languages, str) else list(languages)
    if not chosen:
        raise MinimalPairFormatError(f"languages=[]: name one or more of {present}, or leave it out for all of them")
    missing = [lang for lang in chosen if lang not in present]
    if missing:
        raise MinimalPairFormatError(f"{path}: no lines in language(s) {missing}; the languages here are {present}")
    return {
        lang: load_blimp_jsonl(
            path,
            name=f"{name or path.stem}_{lang}",
            tokenizer=tokenizer,
            on_invalid=on_invalid,
            limit=limit,
            good_key=good_key,
            bad_key=bad_key,
            language=lang,
            language_key=language_key,
        )
        for lang in chosen
    }


def load_clams(
    path: str | Path,
    *,
    name: str | None = None,
    tokenizer: Any = None,
    on_invalid: OnInvalid = "raise",
    limit: int | None = None,
) -> TaskDataset:
    """Minimal pairs from a CLAMS-style ``LABEL<TAB>sentence`` file (see module docstring)."""
    _check_on_invalid(on_invalid)
    path = Path(path)
    candidates = []
    malformed = 0
    good: tuple[int, str] | None = None
    for line_no, line in numbered_lines(path):
        label, tab, sentence = line.partition("\t")
        label = label.strip().lower()
        if not tab or label not in ("true", "false"):
            problem = f"expected 'True<TAB>sentence' or 'False<TAB>sentence', got {line!r}"
        elif label == "false" and good is None:
            problem = (
                "an ungrammatical (False) sentence before any grammatical (True) one; "
                "each False line must follow the True line it pairs with"
            )
        else:
            problem = None
        if problem is not None:
            if on_invalid == "raise":
                raise MinimalPairFormatError(f"{path}, line {line_no}: {problem}")
            malformed += 1
        elif label == "true":
            good = (line_no, sentence.strip())
        else:
            assert good is not None
            candidates.append((str(path), line_no, good[1], sentence.strip(), {"good_line": good[0]}))
    description = f"CLAMS pairs from {path.name}"
    return _finish(name or path.stem, candidates, tokenizer, on_invalid, description, malformed=malformed, limit=limit)


def _limit_after_parsing(candidates: list, limit: int | None, tokenizer: Any, on_invalid: OnInvalid) -> list:
    """Keep the first ``limit`` pairs that will survive ``_finish`` (all when ``limit`` is None)."""
    if limit is None:
        return candidates
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if on_invalid == "raise":
        return candidates[:limit]
    kept = []
    for candidate in candidates:
        path, line, good, bad, meta = candidate
        try:
            pair = pair_from_sentences(good, bad)
            if pair_shape_problem(good, bad) is not None:
                continue
            if tokenizer is not None:
                TaskDataset(name="limit", pairs=(pair,)).check_tokenizer(tokenizer)
        except (MinimalPairFormatError, TaskTokenizationError):
            continue
        kept.append(candidate)
        if len(kept) == limit:
            break
    return kept


def load_pairs_jsonl(path: str | Path, *, name: str | None = None, on_invalid: OnInvalid = "raise") -> TaskDataset:
    """A task written by :meth:`TaskDataset.to_jsonl` (or by hand in that format); a line that is
    not such a pair is refused naming it, or (``on_invalid="skip"``) passed over."""
    _check_on_invalid(on_invalid)
    path = Path(path)
    pairs = []
    for line_no, record in json_lines(path, skip_invalid=on_invalid == "skip"):
        missing = {"clean", "correct", "wrong"} - set(record)
        if missing:
            if on_invalid == "skip":
                continue
            raise MinimalPairFormatError(
                f"{path}, line {line_no}: missing field(s) {sorted(missing)}; each line needs clean, correct, wrong"
            )
        try:  # meta stays as written, so that to_jsonl and load_pairs_jsonl round-trip
            pairs.append(
                MinimalPair(
                    clean=record["clean"],
                    correct=record["correct"],
                    wrong=record["wrong"],
                    corrupted=record.get("corrupted"),
                    meta=record.get("meta", {}),
                )
            )
        except ValueError as error:
            if on_invalid == "skip":
                continue
            raise MinimalPairFormatError(f"{path}, line {line_no}: {error}") from None
    if not pairs:
        raise MinimalPairFormatError(f"{path} holds no pairs; each line needs clean, correct, wrong")
    return TaskDataset(name=name or path.stem, pairs=tuple(pairs), description=f"minimal pairs from {path.name}")


def task_file_format(path: str | Path, *, skip_invalid: bool = False) -> str:
    """``"blimp"``, ``"multilingual"``, ``"crosslens"`` or ``"clams"``: the format of a pairs file,
    from its first records (JSON lines; one that is not an object refused, or passed over with
    ``skip_invalid``) or its layout (CLAMS ``LABEL<TAB>sentence`` text, labels in any case)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a BLiMP, crosslens JSONL or CLAMS file")
    first = next((line for _, line in numbered_lines(path)), "")
    if first.lstrip().startswith("{"):
        records = [record for _, record in itertools.islice(json_lines(path, skip_invalid), 200)]
        keys = set().union(*(r.keys() for r in records))
        if {"sentence_good", "sentence_bad"} <= keys:
            return "multilingual" if "language" in keys else "blimp"
        if {"clean", "correct", "wrong"} <= keys:
            return "crosslens"
        raise MinimalPairFormatError(
            f"{path}: JSON lines with neither sentence_good/sentence_bad (BLiMP) nor clean/correct/wrong "
            f"(crosslens) fields; its fields are {sorted(keys)}"
        )
    if "\t" in first and first.split("\t", 1)[0].strip().lower() in ("true", "false"):
        return "clams"
    raise MinimalPairFormatError(
        f"{path}: not a pairs file; expected BLiMP JSONL (sentence_good, sentence_bad), crosslens JSONL "
        "(clean, correct, wrong) or CLAMS text (True<TAB>sentence lines)"
    )


def load_task_file(
    path: str | Path, *, tokenizer: Any = None, on_invalid: OnInvalid = "raise"
) -> dict[str, TaskDataset]:
    """Every task in a pairs file, by name: one for a BLiMP, CLAMS or crosslens file (named after
    the file), one per language for a MultiBLiMP-style file (see :func:`task_file_format`)."""
    kind = task_file_format(path, skip_invalid=on_invalid == "skip")
    if kind == "multilingual":
        by_language = load_multilingual_blimp(path, tokenizer=tokenizer, on_invalid=on_invalid)
        return {task.name: task for task in by_language.values()}
    if kind == "blimp":
        task = load_blimp_jsonl(path, tokenizer=tokenizer, on_invalid=on_invalid)
    elif kind == "clams":
        task = load_clams(path, tokenizer=tokenizer, on_invalid=on_invalid)
    else:
        task = load_pairs_jsonl(path, on_invalid=on_invalid)
    return {task.name: task}
