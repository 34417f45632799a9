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
