"""Errors crosslens raises for bad input. Each message says what is wrong and how to fix it.

All subclass `CrosslensError` and `ValueError`, so `except ValueError` keeps working.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crosslens.core.paths import free_disk


class CrosslensError(ValueError):
    """Base class for crosslens's input errors."""


class UnknownRevisionError(CrosslensError, LookupError):
    """A requested step or revision does not exist in a checkpoint suite or repo."""

    def __init__(self, message: str, *, requested: str = "", nearest: tuple[str, ...] = ()):
        super().__init__(message)
        self.requested = requested
        self.nearest = nearest


class DuplicateSnapshotError(CrosslensError):
    """Two snapshots of one suite hold identical weights (same `weights_sha256`)."""

    def __init__(self, message: str, *, revisions: tuple[str, str] = ("", ""), sha256: str = ""):
        super().__init__(message)
        self.revisions = revisions
        self.sha256 = sha256


class SnapshotMismatchError(CrosslensError):
    """A snapshot differs from the suite's first snapshot where all must agree."""

    def __init__(self, message: str, *, revision: str = "", differences: dict | None = None):
        super().__init__(message)
        self.revision = revision
        self.differences = dict(differences or {})


class TokenizerMismatchError(SnapshotMismatchError):
    """A snapshot ships a tokenizer whose vocabulary differs from the suite's."""


class UnsupportedArchitectureError(CrosslensError):
    """A checkpoint's architecture cannot be converted to a HookedTransformer."""


class UncachedRevisionError(CrosslensError, LookupError):
    """A published revision is not in the local Hugging Face cache and the hub is offline."""


class CorruptCheckpointError(CrosslensError):
    """A snapshot's weights file is truncated or unreadable."""


class DamagedCrosscoderError(CrosslensError):
    """A saved crosscoder's cfg.json or weights file is unreadable, or the two disagree."""


class DamagedManifestError(CrosslensError):
    """A store's or run's JSON record is unreadable or fails its own checksum."""


class StoreLockedError(CrosslensError):
    """Another process is writing the activation store."""


class StoreChangedError(CrosslensError):
    """The activation store differs from the one a run (or a resumed harvest) started on."""


class NonFiniteTrainingError(CrosslensError, FloatingPointError):
    """Training produced a non-finite loss or parameter."""


class PartnerMismatchError(CrosslensError):
    """Two artifacts handed over together do not belong together (a crosscoder and a store of
    other snapshots or hooks, a store and a held-out store harvested for another one)."""


class LiveInputError(CrosslensError):
    """A text, prompt or steering setting the live models cannot run (the browser answers HTTP 400),
    or a suite :class:`~crosslens.live.LiveModels` cannot load from."""


class LiveUnavailableError(CrosslensError):
    """The live models cannot be loaded or do not belong to the run's crosscoder (HTTP 503 from the
    browser, whose stored pages keep working). A failure to load is tried again by the next question."""


class LiveMismatchError(LiveUnavailableError):
    """The live models were checked and do not belong to the run's crosscoder (a suite of other
    snapshots, hook or width): every later question is refused the same way, without loading."""


class LiveSupersededError(CrosslensError):
    """A live question dropped while it waited its turn: a newer one of its kind was asked meanwhile
    and is answered instead (HTTP 409 from the browser, whose page has moved on to the newer one)."""


class StorageError(CrosslensError):
    """A file could not be written: the disk is full, or the folder is not writable."""

    def __init__(self, message: str, *, folder: str = "", needed: int | None = None):
        super().__init__(message)
        self.folder = folder
        self.needed = needed


# errno values that mean "this folder cannot take the file" rather than a bug
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
# torch.save and safetensors report a failed write as a RuntimeError/SafetensorError text
# rather than an OSError; these are the phrases they use for it
_WRITE_FAILURE_TEXT = ("inline_container", "file write failed", "No space left", "StorageFull", "os error 28")


def storage_error(
    error: BaseException,
    folder: str | os.PathLike,
    what: str,
    *,
    needed: int | None = None,
    fix: str = "choose another folder",
) -> StorageError | None:
    """The one-line :class:`StorageError` for a failed write of ``what`` into ``folder``, or None
    when ``error`` is not a full disk or a permission problem (then it is a bug to show as is)."""
    from crosslens.core.units import format_bytes

    if isinstance(error, CrosslensError):
        return None
    folder = Path(folder)
    code = getattr(error, "errno", None)
    text = str(error)
    if code in _NO_PERMISSION:
        where = getattr(error, "filename", None) or folder
        return StorageError(
            f"cannot write {what} in {folder}: permission denied ({where}); make the folder writable, or {fix}",
            folder=str(folder),
            needed=needed,
        )
    if code in _NO_SPACE or (code is None and any(t in text for t in _WRITE_FAILURE_TEXT)):
        free = free_disk(folder)
        sizes = [
            f"needs about {format_bytes(needed)}" if needed is not None else "",
            f"{format_bytes(free)} free" if free is not None else "",
        ]
        numbers = "; ".join(s for s in sizes if s)
        return StorageError(
            f"no space left on the disk of {folder} while writing {what}"
            + (f" ({numbers})" if numbers else "")
            + f"; free space there, or {fix}",
            folder=str(folder),
            needed=needed,
        )
    return None


@contextmanager
def storage_errors(
    folder: str | os.PathLike, what: str, *, needed: int | None = None, fix: str = "choose another folder"
) -> Iterator[None]:
    """Re-raise a full disk or a permission problem met inside the block as a :class:`StorageError`."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - anything else is re-raised unchanged
        translated = storage_error(error, folder, what, needed=needed, fix=fix)
        if translated is None:
            raise
        raise translated from error


OPEN_STORE = "crosslens.ActivationStore.open(path)"


def keyword_and_flag(keyword: str, flag: str) -> str:
    """A fix named for both its callers, Python's keyword first, then the command's flag:
    ``overwrite=True (`--overwrite`)``. A refusal raised below both the library and the CLI reaches
    either, so it names the setting as each of them spells it."""
    return f"{keyword} (`{flag}`)"


def run_again(command: str | None = None, replacing: str | None = None, adding: str | None = None) -> str:
    """How a stopped command goes on from what it kept: "run the same `crosslens harvest` command
    again" ("the same command" without a ``command``), or "run the same command with --resume"
    (``adding``); "without --overwrite" or "with --resume instead of --overwrite" where the flag it
    was given (``replacing``) would throw away what it kept."""
    what = f"run the same `{command}` command" if command else "run the same command"
    if adding:
        return f"{what} with {adding}" + (f" instead of {replacing}" if replacing else "")
    return f"{what} again" + (f" without {replacing}" if replacing else "")


def check_store_given(value: object, used_by: str | None = None, *, needs: str | None = None) -> None:
    """Refuse, naming the call that makes it readable, what was given where activations are read.

    A path is always refused: iterated, it reads as batches of characters. With ``needs`` (the
    attribute the caller reads, e.g. ``"read"``), anything without it is refused as no activation
    store; without ``needs`` in-memory activations are accepted, apart from a NumPy array, which
    is named with its conversion. ``used_by`` is the call to name (None: the value is the subject).
    """

    def given(what: str) -> str:
        return f"{used_by} was given {what}" if used_by else f"{what} was given"

    if isinstance(value, (str, os.PathLike)):
        raise TypeError(
            given(f"the path {str(value)!r}") + f" where an activation store is read; open it first: {OPEN_STORE}"
        )
    if needs is None:
        if type(value).__module__ == "numpy":
            raise TypeError(given("a NumPy array") + " where activations are read; pass torch.as_tensor(array)")
        return
    if not hasattr(value, needs):
        raise TypeError(given(f"a {type(value).__name__}") + f" where an activation store is read; pass {OPEN_STORE}")
