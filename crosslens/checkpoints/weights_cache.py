"""Each snapshot's full weights hash, kept on disk so that a later load may be truncated.

A snapshot's ``weights_sha256`` (recorded by activation stores, resume checks and
crosscoder metadata) hashes the processed *full* HookedTransformer, so computing it
takes loading every block. Harvesting only needs the blocks up to its deepest hook. The
first full load of a snapshot therefore records its hash here, keyed by what decides the
processed weights: the snapshot's file identity (the hash of every weights file and of
``config.json``, `crosslens.checkpoints.identity`), the family and model id, the model
dtype, the weight processing, and the versions of the code that converts the weights.

Each entry also holds the hash of the snapshot's first ``n`` blocks (as
``weights_sha256(model, first_n_layers=n)``). A truncated load takes the full hash from
an entry only when its own hash equals that prefix hash, so an entry that is damaged,
stale or from other code never lends its hash to other weights: whatever does not check
out is ignored, and the snapshot is loaded whole and recorded again.

Entries live in ``$CROSSLENS_HOME/weights-sha256/`` (default ``~/.cache/crosslens``),
one small JSON file each; deleting the folder only costs full loads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.hashing import json_sha256
from crosslens.core.paths import crosslens_home
from crosslens.core.sealed import read_sealed, write_sealed

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when crosslens changes how it converts or processes weights: older entries then miss."""
ENTRY_SEAL = "checksum"
"""The key under which an entry carries the sha256 of the rest (see crosslens.core.sealed)."""


@dataclass(frozen=True)
class KnownWeights:
    """An intact entry: the full model's block count and hash, and the hash of its first n blocks
    by n (what a truncated load must match before the full hash is taken)."""

    n_layers: int
    weights_sha256: str
    prefix_sha256: dict[int, str]


def cache_dir() -> Path:
    return crosslens_home() / "weights-sha256"


@functools.cache  # reading package metadata costs milliseconds, and versions do not change under a process
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cache_fields(
    identity: dict[str, Any], *, family: str, model_id: str, dtype: torch.dtype, processing: dict[str, bool]
) -> dict[str, Any]:
    """Everything an entry's hash depends on; entries are found and checked by these."""
    return {
        "format": CACHE_FORMAT,
        "identity": identity["digest"],
        "family": family,
        "model_id": model_id,
        "dtype": str(dtype).removeprefix("torch."),
        "processing": dict(sorted(processing.items())),
        "versions": {
            "crosslens": _version("crosslens"),
            "torch": torch.__version__,
            "transformer_lens": _version("transformer-lens"),
            "transformers": _version("transformers"),
        },
    }


def _entry_path(fields: dict[str, Any]) -> Path:
    return cache_dir() / f"{json_sha256(fields)}.json"


def lookup(fields: dict[str, Any]) -> KnownWeights | None:
    """The entry recorded under ``fields``, or None when there is none or it does not check
    out (unreadable, altered since written, or recorded under other fields)."""
    path = _entry_path(fields)
    try:
        body = read_sealed(path, ENTRY_SEAL)
        if body["fields"] != fields:
            raise ValueError("recorded under other fields")
        known = KnownWeights(
            n_layers=int(body["n_layers"]),
            weights_sha256=str(body["weights_sha256"]),
            prefix_sha256={int(n): str(sha) for n, sha in body["prefix_sha256"].items()},
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        logger.info("ignoring the weights-hash cache entry %s (%s); the snapshot loads in full", path, error)
        return None
    return known


def record(fields: dict[str, Any], known: KnownWeights) -> None:
    """Write (or extend with more prefix hashes) the entry under ``fields``. A cache that
    cannot be written only costs full loads later, so failing to write is not an error."""
    earlier = lookup(fields)
    prefixes = dict(known.prefix_sha256)
    if earlier is not None and (earlier.n_layers, earlier.weights_sha256) == (known.n_layers, known.weights_sha256):
        prefixes = {**earlier.prefix_sha256, **prefixes}
    body = {
        "fields": fields,
        "n_layers": known.n_layers,
        "weights_sha256": known.weights_sha256,
        "prefix_sha256": {str(n): sha for n, sha in sorted(prefixes.items())},
    }
    path = _entry_path(fields)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: concurrent loads may record alike
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_sealed(path, body, ENTRY_SEAL, tmp=tmp)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        logger.info("could not record the weights hash in %s (%s); later loads stay full", path, error)
