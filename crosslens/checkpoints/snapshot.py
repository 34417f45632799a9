"""What a snapshot is (`SnapshotRef`), its provenance once loaded (`SnapshotInfo`), and the
parsers that read a training step and token count out of each family's revision names."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

# Pythia trains on 1024 sequences of 2048 tokens per optimiser step.
PYTHIA_TOKENS_PER_STEP = 1024 * 2048

_TOKEN_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_STEP_PATTERN = re.compile(r"(?:^|[^a-z])(?:global_)?step[_-]?(\d+)", re.IGNORECASE)
_TOKENS_PATTERN = re.compile(r"tokens[_-]?(\d+(?:\.\d+)?)([KMBT]?)", re.IGNORECASE)
_INTEGER_PATTERN = re.compile(r"\d+")
_CHECKPOINT_PATTERN = re.compile(r"(?:checkpoint|ckpt)[_-]?\d+", re.IGNORECASE)


@dataclass(frozen=True)
class SnapshotRef:
    """One training snapshot of a suite, before loading."""

    index: int
    """Position in the suite, 0..S-1 (the `n_snapshots` axis of activations and decoders)."""
    revision: str
    """Hub revision (``step1000``, ``step1000-tokens4B``, ``global_step1000``) or folder name."""
    step: int
    """Optimiser step at which the snapshot was saved, counted from initialisation: in a
    staged run (``stage2-...-step1000``) the earlier stages' steps are added, so steps
    grow along the training trajectory (see `crosslens.checkpoints.trajectory`)."""
    tokens_seen: int | None
    """Training tokens consumed by then (across stages), where the family defines it; else None."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SnapshotInfo(SnapshotRef):
    """Provenance of a loaded snapshot: the `SnapshotRef` plus where the weights came from."""

    model_id: str
    """Hub repo id (``EleutherAI/pythia-160m``) or the local suite's model id."""
    weights_sha256: str
    """sha256 of the loaded HookedTransformer's state dict (see `weights_sha256`)."""

    @classmethod
    def from_ref(cls, ref: SnapshotRef, *, model_id: str, weights_sha256: str) -> SnapshotInfo:
        of_ref = {f.name: getattr(ref, f.name) for f in fields(SnapshotRef)}  # a SnapshotInfo is a ref too
        return cls(**of_ref, model_id=model_id, weights_sha256=weights_sha256)


def parse_tokens(revision: str) -> int | None:
    """Tokens named in a revision such as ``step1000-tokens4B`` (4 * 10**9), else None."""
    match = _TOKENS_PATTERN.search(revision)
    if match is None:
        return None
    amount, unit = match.groups()
    return int(round(float(amount) * _TOKEN_UNITS[unit.upper()]))


def parse_step(revision: str) -> int | None:
    """The training step in a revision or folder name, else None.

    ``step1000``, ``global_step1000``, ``step1000-tokens4B`` and ``stage1-step1000-tokens4B``
    all give 1000; a name without a ``step`` marker gives its first integer
    (``checkpoint-500`` -> 500, ``ckpt_000100`` -> 100, but also ``backup_v2`` -> 2: see
    `has_step_marker`); ``main`` gives None.
    """
    match = _STEP_PATTERN.search(revision)
    if match is not None:
        return int(match.group(1))
    integer = _INTEGER_PATTERN.search(revision)
    return int(integer.group()) if integer else None


def has_step_marker(revision: str) -> bool:
    """Whether a name says which number is its step: a ``step``/``global_step`` marker, or a
    ``checkpoint-``/``ckpt_`` prefix. Other numbers (``backup_v2``, ``pythia-160m-final``) may
    be anything."""
    return _STEP_PATTERN.search(revision) is not None or _CHECKPOINT_PATTERN.match(revision) is not None


def pythia_revision(step: int) -> str:
    return f"step{step}"


def bloom_revision(step: int) -> str:
    return f"global_step{step}"


def pythia_tokens_seen(step: int) -> int:
    return step * PYTHIA_TOKENS_PER_STEP


def ref_from_revision(index: int, revision: str, *, family: str) -> SnapshotRef:
    """Build a `SnapshotRef` from a revision name with the family's conventions.

    Pythia counts tokens from the step, OLMo names them in the revision, BLOOM's
    intermediate repos do not say (None); local folders use whichever the name carries.
    """
    step = parse_step(revision)
    if step is None:
        raise ValueError(
            f"cannot read a training step from revision {revision!r}; name snapshots like "
            "'step1000', 'global_step1000', 'step1000-tokens4B' or 'stage1-step1000-tokens4B', "
            "or list them in suite.json"
        )
    if family == "pythia":
        tokens: int | None = pythia_tokens_seen(step)
    elif family == "bloom":
        tokens = None
    else:
        tokens = parse_tokens(revision)
    return SnapshotRef(index=index, revision=revision, step=step, tokens_seen=tokens)
