"""sha256 of the three things crosslens identifies by content: files, JSON values, weights.

Every record that lets a later run trust an earlier one (a store's manifest, a sealed
checkpoint, the weights-hash cache, a snapshot's identity) is built from these, so the
bytes hashed must never change: an old store or checkpoint would stop verifying.

- :func:`file_sha256`: a file's bytes, read in chunks (shards and weight files are large);
  :func:`remembered_file_sha256` the same, hashed once per process while the file's size and
  modification time stay as they were (a weights file several checks of one command name).
- :func:`json_sha256`: ``json.dumps(value, sort_keys=True)``, so key order never matters.
- :func:`weights_sha256`: a module's state dict as float32, whatever its device or dtype.

torch is imported inside :func:`weights_sha256` only; the other two need the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from crosslens.core.hooks import block_index
from crosslens.core.paths import final_weights

if TYPE_CHECKING:
    import torch

CHUNK_BYTES = 1 << 22
"""Bytes read at a time when hashing a file."""


def file_sha256(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


_REMEMBERED: dict[str, tuple[int, int, str]] = {}
"""Files already hashed: resolved path -> (size, mtime_ns, sha256)."""


def remembered_file_sha256(path: str | os.PathLike) -> str:
    """:func:`file_sha256`, hashed again only when the file's size or modification time changed
    since this process last hashed it."""
    stat = os.stat(path)
    key = os.path.realpath(path)
    known = _REMEMBERED.get(key)
    if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
        return known[2]
    digest = file_sha256(path)
    _REMEMBERED[key] = (stat.st_size, stat.st_mtime_ns, digest)
    return digest


def crosscoder_sha256(run_dir: str | os.PathLike) -> str:
    """The identity of a run's trained crosscoder: the sha256 of its weights file (remembered while
    the file is unchanged: one command checks it in several places)."""
    return remembered_file_sha256(final_weights(run_dir))


def crosscoder_change(run_dir: str | os.PathLike, sha256: str, checked: str) -> str | None:
    """Why ``run_dir``'s trained crosscoder is no longer the one whose weights hashed to ``sha256``,
    with which ``checked`` was checked ("the lineage"): the run holds none now, or other weights;
    None where it is the same."""
    if not final_weights(run_dir).is_file():
        return f"{run_dir}, which {checked} was checked against, holds no crosscoder now"
    try:
        now = crosscoder_sha256(run_dir)
    except OSError as error:
        return f"{run_dir}'s crosscoder, which {checked} was checked against, cannot be read ({error.strerror})"
    if now != sha256:
        return f"{run_dir}'s crosscoder was trained again since {checked} was checked against it"
    return None


AGREEMENT_READING = (
    "latents present at some snapshot, each at its nearest present snapshot on its side; a turn's on its side alone; "
    "a split by composition's children as rows of their own"
)
"""How :mod:`crosslens.analysis.agreement` reads a lineage event's latents, recorded with each
agreement it measures (``LineageAgreement.reading``): one recorded under another reading, or under
none named (an earlier crosslens's), is measured again rather than shown."""


def agreement_change(agreement: dict[str, Any]) -> str | None:
    """Why a recorded lineage agreement (``LineageAgreement.to_dict()``) no longer holds: measured
    under another reading than :data:`AGREEMENT_READING`, or against a crosscoder gone or trained
    again since (:func:`crosscoder_change`); None where it holds."""
    if agreement.get("reading") != AGREEMENT_READING:
        return (
            f"the lineage agreement with {agreement['against']} was measured under an earlier reading of an "
            "event's latents"
        )
    return crosscoder_change(agreement["against"], agreement["crosscoder"], "the lineage")


def json_sha256(value: Any) -> str:
    """Hex sha256 of ``json.dumps(value, sort_keys=True)``: equal values hash equal whatever
    the order their dicts were built in."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def weights_sha256(model: torch.nn.Module, *, first_n_layers: int | None = None) -> str:
    """sha256 over the sorted state-dict keys and each tensor's float32 bytes.

    Identical weights give identical hashes whatever the family or device; the suite
    takes it on the HookedTransformer after loading, so the same raw checkpoint always
    hashes the same. With ``first_n_layers``, blocks from that index on are left out:
    the hash a model loaded with only its first ``first_n_layers`` blocks gives.
    """
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        block = block_index(key)  # state-dict keys of a block start "blocks.N." as its hooks do
        if first_n_layers is not None and block is not None and block >= first_n_layers:
            continue
        digest.update(key.encode())
        values = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(values.numpy().data)
    return digest.hexdigest()
