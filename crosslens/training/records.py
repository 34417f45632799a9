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

import hashlib
import json
import os
from pathlib import Path
from typing import Any

RECORD_NAME = "crosslens_checkpoint.json"
RECORD_FORMAT = "crosslens.checkpoint/1"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _seal(record: dict[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_record(folder: str | os.PathLike, **content: Any) -> Path:
    """Hash every file in ``folder`` and write the sealed record beside them."""
    folder = Path(folder)
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != RECORD_NAME and not p.name.endswith(".tmp")
    }
    record = {"format": RECORD_FORMAT, "files": files, **content}
    record["record_sha256"] = _seal(record)
    tmp = folder / (RECORD_NAME + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, folder / RECORD_NAME)
    return folder / RECORD_NAME


def record_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a whole, unaltered checkpoint (None when it is)."""
    folder = Path(folder)
    path = folder / RECORD_NAME
    if not path.is_file():
        return f"{path.name} is missing (the save was cut short, or an older crosslens wrote it)"
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        return f"{path.name} is not valid JSON"
    if not isinstance(record, dict) or record.get("record_sha256") != _seal(record):
        return f"{path.name} fails its own checksum"
    for name, expected in record["files"].items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, {expected['bytes']} recorded"
        if _sha256(file) != expected["sha256"]:
            return f"{name} differs from its recorded sha256"
    return None


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The record of a checkpoint that :func:`record_problem` passed."""
    return json.loads((Path(folder) / RECORD_NAME).read_text())
