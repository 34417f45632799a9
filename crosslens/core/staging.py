"""Folders written whole or not at all.

A folder that a later reader must find complete (an export, a rebuilt pico suite, a released
crosscoder's run folder, a converted crosscoder) is written into a hidden sibling
(``.NAME.partial``) and renamed into place only once complete. A folder already there is moved
aside (``.NAME.replaced``) first and removed only once the new one is in place, so a write that
fails or is stopped leaves the folder as it was. Two writers of one folder must not overlap:
whoever may race takes a lock (:mod:`crosslens.core.locks`) around the write.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A fresh hidden sibling of ``out`` to write into; on success it replaces ``out`` (a folder
    already there is removed only then), on failure it is removed and ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a stopped write's: the next write starts afresh
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.replaced"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
