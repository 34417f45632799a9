"""Errors crosslens raises for bad input. Each message says what is wrong and how to fix it.

All subclass `CrosslensError` and `ValueError`, so `except ValueError` keeps working.
"""

from __future__ import annotations


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
