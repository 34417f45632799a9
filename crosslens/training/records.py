"""Sealed training checkpoints: which files a checkpoint holds, their hashes, and what made it.

The runner writes ``crosslens_checkpoint.json`` into every checkpoint folder (and into
``final/``) *after* the trainer's own files, atomically. It records each file's size and
sha256, the runner's configuration and the identity of the activation store trained on.
A checkpoint counts only if its record is there and every file matches it, so a
checkpoint cut short by a kill, or altered later, is never resumed from: the runner goes
back to the newest checkpoint that verifies (and the exact-resume contract of the trainer
makes the end result identical). The store identity lets a resumed run refuse a store
that changed since the run started, before reading a single batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crosslens.core.hashing import file_sha256
from crosslens.core.sealed import BrokenSealError, UnreadableRecordError, read_sealed, write_sealed

RECORD_NAME = "crosslens_checkpoint.json"
RECORD_FORMAT = "crosslens.checkpoint/1"
RECORD_SEAL = "record_sha256"


def write_record(folder: str | os.PathLike, **content: Any) -> Path:
    """Hash every file in ``folder`` and write the sealed record beside them."""
    folder = Path(folder)
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != RECORD_NAME and not p.name.endswith(".tmp")
    }
    write_sealed(folder / RECORD_NAME, {"format": RECORD_FORMAT, "files": files, **content}, RECORD_SEAL)
    return folder / RECORD_NAME


def record_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a whole, unaltered checkpoint (None when it is)."""
    folder = Path(folder)
    path = folder / RECORD_NAME
    if not path.is_file():
        return f"{path.name} is missing (the save was cut short, or an older crosslens wrote it)"
    try:
        record = read_sealed(path, RECORD_SEAL)
    except UnreadableRecordError:
        return f"{path.name} is not valid JSON"
    except BrokenSealError:
        return f"{path.name} fails its own checksum"
    for name, expected in record["files"].items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, {expected['bytes']} recorded"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} differs from its recorded sha256"
    return None


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The record of a checkpoint that :func:`record_problem` passed."""
    return read_sealed(Path(folder) / RECORD_NAME, RECORD_SEAL, verify=False)
