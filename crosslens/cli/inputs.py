"""Checks of the paths a command writes, before its work starts: a folder that is a file, a file
path that is a folder, a folder that cannot be made or written. The checks of a harvest's inputs
(the model's hooks and context, the token table and the stores fitting, the text) are the harvest's
own (:mod:`crosslens.activations.harvest_job`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from crosslens.core.errors import CrosslensError


def check_output_folder(path: str | Path, flag: str = "--out", holds: str = "its results") -> None:
    """Refuse a folder path a command writes into when a file is there already, naming ``flag``."""
    if Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
        raise CrosslensError(f"{flag} {path} is a file, not a folder; pass a folder path for {holds}")


def check_output_file(
    path: str | Path, flag: str = "--out", example: str = "report.html", suffixes: Sequence[str] = (), kind: str = ""
) -> Path:
    """``path`` of a file a command writes when its work is done (a report, a table), with its
    folder made now: a folder that cannot be made or written is refused before the work starts,
    naming ``flag`` and the path. The check writes and removes a file there, as permission bits
    alone miss read-only and virtual file systems (and say yes to root). With ``suffixes``, a path
    ending otherwise is refused, saying ``kind`` (what the file is)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CrosslensError(f"{flag} {path} is a folder; pass a file path, e.g. {flag} {path / example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise CrosslensError(f"{flag} {path}: {kind}; pass e.g. {flag} {path.with_suffix(suffixes[0])}")
    fix = f"pass {flag} a path in a folder you can write"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CrosslensError(
            f"{flag} {path}: cannot create its folder {path.parent} ({error.strerror or error}); {fix}"
        ) from None
    try:
        handle, probe = tempfile.mkstemp(dir=path.parent, prefix=".crosslens-write-check-")
    except OSError as error:
        raise CrosslensError(
            f"{flag} {path}: cannot write in {path.parent} ({error.strerror or error}); {fix}"
        ) from None
    os.close(handle)
    os.unlink(probe)
    return path
