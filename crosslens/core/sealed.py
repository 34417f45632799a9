"""JSON written atomically, and sealed records: JSON objects that carry the sha256 of their own contents.

A store's manifest, a training checkpoint's record and a weights-hash cache entry must be
trusted by a later process, possibly after a crash or a hand edit. Each is one JSON object
with one extra key (the *seal key*, e.g. ``"manifest_sha256"``) holding
:func:`~crosslens.core.hashing.json_sha256` of every other key. A reader recomputes it: a
record cut short, edited or swapped for another fails, and the reader says so rather than
trusting it.

Writing (:func:`write_json_atomically`, sealed or not) goes to a temporary file beside the
target and is then renamed over it (``os.replace``), so a reader sees either the old file
or the new one, never half of one. A sealed record is
``json.dumps(record, indent=1, sort_keys=True)``; existing records were written that way
and must keep verifying, so the format does not change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crosslens.core.hashing import json_sha256


class UnreadableRecordError(ValueError):
    """The file is not valid JSON, or holds something other than a JSON object."""


class BrokenSealError(ValueError):
    """The record's contents do not match the seal it was written with."""


def seal(record: dict[str, Any], key: str) -> str:
    """The seal of ``record``: the sha256 of everything but ``record[key]``."""
    return json_sha256({name: value for name, value in record.items() if name != key})


def write_json_atomically(
    path: str | os.PathLike,
    value: Any,
    *,
    indent: int = 1,
    sort_keys: bool = False,
    tmp: str | os.PathLike | None = None,
) -> None:
    """Write ``json.dumps(value, indent=indent, sort_keys=sort_keys)`` to ``path`` through
    ``tmp`` (default ``path`` + ``.tmp``) and a rename."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=indent, sort_keys=sort_keys))
    os.replace(tmp, path)


def write_sealed(
    path: str | os.PathLike, record: dict[str, Any], key: str, *, tmp: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Write ``record`` sealed under ``key`` to ``path`` atomically; return the sealed record.

    ``tmp`` is the temporary file renamed into place (default ``path`` + ``.tmp``); writers
    that may run at once for the same ``path`` pass one of their own.
    """
    sealed = {**record, key: seal(record, key)}
    write_json_atomically(path, sealed, indent=1, sort_keys=True, tmp=tmp)
    return sealed


def check_seal(record: dict[str, Any], key: str) -> None:
    """Raise :class:`BrokenSealError` unless ``record[key]`` is the seal of the rest."""
    if record.get(key) != seal(record, key):
        raise BrokenSealError(f"the contents do not match the {key} they were written with")


def read_sealed(path: str | os.PathLike, key: str, *, verify: bool = True) -> dict[str, Any]:
    """The JSON object in ``path``, its seal checked (``verify``).

    Raises :class:`UnreadableRecordError` (its message says why) when the file is not a
    JSON object and :class:`BrokenSealError` when the seal does not match. A missing file
    raises ``FileNotFoundError``, as reading it would. ``verify=False`` is for a reader that
    must first see which format the record claims (an older format carries no seal).
    """
    try:
        record = json.loads(Path(path).read_text())
        if not isinstance(record, dict):
            raise ValueError(f"holds a JSON {type(record).__name__}, not an object")
    except ValueError as error:  # UnicodeDecodeError and json's errors are ValueErrors
        raise UnreadableRecordError(str(error)) from None
    if verify:
        check_seal(record, key)
    return record
