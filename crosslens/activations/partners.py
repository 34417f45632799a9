"""Which artifacts belong together, checked by identity before anything is computed.

A crosscoder records the snapshots it was trained on (each with its revision, step and
weight identities, from the store manifest's ``snapshots``), the weight processing its models
were loaded with (its suite's ``processing``), its hook and its training store's seal
(:func:`store_seal`). A held-out store records the seal of the store it was
split from (``heldout_of`` in its manifest), and lives beside it (:func:`heldout_store_path`;
:func:`open_heldout` opens it checked). The checks here compare those records with the partner
actually handed over and refuse, in one line naming both sides and the fix, anything that does
not match or cannot be matched. They read manifests only; the shard bytes are checked by
``ActivationStore.open(verify="full")``.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crosslens.activations.store import ActivationStore, snapshot_label, write_manifest
from crosslens.checkpoints.models import architecture_processing, chosen_processing, processing_difference
from crosslens.checkpoints.trajectory import parse_ingredient
from crosslens.core.errors import PartnerMismatchError, check_store_given
from crosslens.core.hooks import crosscoder_hook
from crosslens.core.metadata import metadata_value
from crosslens.core.model_specs import MODELS_FAMILY, parse_models
from crosslens.core.paths import HELDOUT_SUFFIX

HELDOUT_OF = "heldout_of"
"""Manifest key of a held-out store: the seal of the store it was split from."""

ROW_DIGESTS_FORMAT = "crosslens.row_digests/1"
"""Metadata format of a :class:`RowDigests` file."""

STORE_SEAL_KEY = "store_seal"
"""Crosscoder metadata key: the seal of the store it was trained on."""


def store_seal(store: ActivationStore) -> dict[str, str]:
    """What identifies a store: the hash of its inputs and the hash of everything it serves."""
    return {"fingerprint": store.fingerprint, "content_sha256": store.content_sha256}


def _identity(entry: dict[str, Any]) -> dict[str, Any]:
    source = entry.get("source") or {}
    return {
        "weights_sha256": entry.get("weights_sha256"),
        "digest": source.get("digest"),
        "commit": source.get("commit"),
    }


def unverifiable_snapshots(recorded: Sequence[dict], offered: Sequence[dict]) -> list[str]:
    """The snapshots whose weights no identity known on both sides can compare."""
    return [
        snapshot_label(mine)
        for mine, theirs in zip(recorded, offered)
        if not any(v is not None and _identity(theirs)[k] is not None for k, v in _identity(mine).items())
    ]


def snapshot_problem(recorded: Sequence[dict], offered: Sequence[dict], *, require_identity: bool = True) -> str | None:
    """Why the snapshots ``offered`` are not the ``recorded`` ones, in order (None when they are).

    Labels (revision and step) must agree; so must the files' identities both sides know (their
    digest, the hub commit), or where they share none, the weights' sha256. With
    ``require_identity`` at least one identity must be known on both sides for each snapshot."""
    want, have = [snapshot_label(e) for e in recorded], [snapshot_label(e) for e in offered]
    if want != have:
        return f"snapshots [{', '.join(want)}] vs [{', '.join(have)}]"
    for mine, theirs in zip(recorded, offered):
        if mine.get("step") != theirs.get("step"):  # one revision, placed at two steps along a staged trajectory
            return f"snapshot {snapshot_label(mine)} is at step {mine.get('step')} vs {theirs.get('step')}"
    for mine, theirs in zip(recorded, offered):
        a, b = _identity(mine), _identity(theirs)
        shared = [key for key in a if a[key] is not None and b[key] is not None]
        # the files' identity decides where both sides know it: weights_sha256 hashes the weights
        # in the dtype they were loaded in, so one checkpoint loaded in two dtypes has two
        differs = [key for key in ([k for k in shared if k != "weights_sha256"] or shared) if a[key] != b[key]]
        if differs:
            return f"snapshot {snapshot_label(mine)} has other weights ({differs[0]} {str(a[differs[0]])[:12]}... vs {str(b[differs[0]])[:12]}...)"
        if not shared and require_identity:
            return f"snapshot {snapshot_label(mine)}'s weights cannot be compared (no weight identity recorded on both sides)"
    return None


def crosscoder_record_problem(crosscoder: Any) -> str | None:
    """What a crosscoder lacks to be checked against a partner (None when it records it all)."""
    suite = metadata_value(crosscoder, "suite") or {}
    missing = [
        name
        for name, value in (("snapshots", suite.get("snapshots")), ("hook", metadata_value(crosscoder, "hook_name")))
        if not value
    ]
    return f"records no {' and no '.join(missing)} it was trained on" if missing else None


def harvest_processing_flags(suite: Mapping[str, Any]) -> list[str] | None:
    """The ``crosslens harvest`` flags that load a suite record's models with the weight processing
    it records: none where that is their architecture's, ``--no-center-writing-weights`` for a suite
    of models read without centring; None where no flag loads them so."""
    if architecture_processing(suite):
        return []
    chosen = chosen_processing(suite.get("processing")) or {}
    if suite.get("family") == MODELS_FAMILY and chosen.get("center_writing_weights") is False:
        return ["--no-center-writing-weights"]
    return None


def harvest_words(suite: Mapping[str, Any], revisions: Sequence[str], steps: Sequence[int], hook: str) -> list[str]:
    """The words of a ``crosslens harvest`` of those snapshots of the suite a record names (its
    folder, else its model id, with the one ingredient a staged suite's revisions name) at ``hook``,
    with the flags of its weight processing (:func:`harvest_processing_flags`). A suite of models
    harvested whole names no steps: ``--suite A,B`` takes both models, and refuses ``--steps``."""
    spec = str(suite.get("root") or suite.get("model_id") or "")
    ingredients = {parse_ingredient(str(r)) for r in revisions} - {None}
    if spec and suite.get("root") is None and "@" not in spec and len(ingredients) == 1:
        spec += f"@ingredient{ingredients.pop()}"
    words = ["crosslens", "harvest", *(["--suite", spec] if spec else [])]
    steps = [int(step) for step in steps]
    if not (suite.get("family") == MODELS_FAMILY and spec and steps == list(range(len(parse_models(spec))))):
        words += ["--steps", ",".join(map(str, steps))]
    return [*words, "--hook", hook, *(harvest_processing_flags(suite) or [])]


def harvest_command(suite: Mapping[str, Any], snapshots: Sequence[Mapping[str, Any]], hook: str) -> str:
    """:func:`harvest_words` of a record's snapshots (``{"revision", "step", ...}``), as one shell line."""
    revisions = [str(entry.get("revision")) for entry in snapshots]
    return shlex.join(harvest_words(suite, revisions, [int(entry["step"]) for entry in snapshots], hook))


def harvest_advice(suite: Mapping[str, Any], snapshots: Sequence[Mapping[str, Any]], hook: str) -> str:
    """How to harvest a store of a record's snapshots: the :func:`harvest_command`, or, where the
    record's models were loaded with a processing ``crosslens harvest`` has no flag for, the Python
    suite that loads them so (a command would harvest other activations)."""
    if harvest_processing_flags(suite) is not None:
        return f"`{harvest_command(suite, snapshots, hook)}`"
    chosen = chosen_processing(suite.get("processing"))
    if suite.get("family") == MODELS_FAMILY:
        built = f"`CheckpointSuite.models({str(suite.get('model_id'))!r}, processing={chosen!r})`"
    else:
        built = f"its suite built with processing={chosen!r}"
    words = ", ".join(f"{flag}={value}" for flag, value in (chosen or {}).items())
    return (
        f"`crosslens harvest` has no flag for the weight processing {words}: harvest in Python from {built} "
        "with `crosslens.activations.harvest_stores`"
    )


def processing_problem(recorded: Mapping[str, Any], offered: Mapping[str, Any], mine: str, theirs: str) -> str | None:
    """Why the suite record ``offered`` (``theirs``) holds other activations than ``recorded``
    (``mine``) of the same snapshots: other weight processing (None when it is the same)."""
    difference = processing_difference(recorded, offered)
    if difference is None:
        return None
    return f"{mine} were loaded with the weight processing {difference[0]}, {theirs} with {difference[1]}"


def store_suite(store: ActivationStore) -> dict[str, Any]:
    """The record of the suite a store was harvested from (empty where its manifest names none)."""
    return dict(store.manifest.get("spec", {}).get("suite") or {})


def check_crosscoder_store(crosscoder: Any, store: ActivationStore, *, crosscoder_name: str | Path) -> None:
    """Refuse ``store`` unless it holds the crosscoder's snapshots (same identities, same order),
    loaded with the same weight processing, at the crosscoder's hook and width."""
    where = f"the crosscoder {crosscoder_name} and the store {store.path}"
    problem = crosscoder_record_problem(crosscoder)
    if problem:
        raise PartnerMismatchError(
            f"the crosscoder {crosscoder_name} {problem} (it was saved without that record), so it cannot be "
            f"checked against the store {store.path}; retrain it on that store with this crosslens"
        )
    suite = metadata_value(crosscoder, "suite")
    recorded, hook = suite["snapshots"], metadata_value(crosscoder, "hook_name")
    problem = snapshot_problem(recorded, store.snapshots)
    if problem:
        raise PartnerMismatchError(
            f"{where} do not match: {problem}; pass a store harvested from the crosscoder's snapshots "
            f"({harvest_advice(suite, recorded, hook)})"
        )
    problem = processing_problem(suite, store_suite(store), "the crosscoder's models", "the store's")
    if problem:
        raise PartnerMismatchError(
            f"{where} do not match: {problem}; pass a store harvested with the crosscoder's processing "
            f"({harvest_advice(suite, recorded, hook)})"
        )
    if hook not in store.hooks:
        raise PartnerMismatchError(
            f"{where} do not match: the crosscoder reads {hook}, the store holds {', '.join(store.hooks)}; "
            f"pass a store harvested with --hook {hook}"
        )
    d_in = getattr(getattr(crosscoder, "cfg", None), "d_in", None)
    if d_in is not None and int(d_in) != store.d_in_of(hook):
        raise PartnerMismatchError(
            f"{where} do not match: width {d_in} vs {store.d_in_of(hook)} at {hook}; pass the store the crosscoder's "
            "snapshots were harvested into"
        )


def check_recorded_partner(crosscoder: Any, store: Any, hook: str | None, *, used_by: str) -> None:
    """The library's check of a crosscoder handed a store (and maybe a ``hook``): a ``hook`` other
    than the one the crosscoder records is refused (:func:`~crosslens.core.hooks.crosscoder_hook`),
    and so is an :class:`ActivationStore` that :func:`check_crosscoder_store` refuses, where the
    crosscoder records what it was trained on. A crosscoder built in memory records nothing: a store
    is checked against its shape alone (snapshots and width). An in-memory source (held-out
    activations a runner harvested) has no manifest: that is the caller's to pair. A path or a NumPy
    array, given where activations are read, is refused with the call that makes them readable."""
    check_store_given(store, used_by)
    if hook is not None:
        crosscoder_hook(crosscoder, hook)
    if not isinstance(store, ActivationStore):
        return
    if crosscoder_record_problem(crosscoder) is None:
        check_crosscoder_store(crosscoder, store, crosscoder_name=f"given to {used_by}")
        return
    # what a crosscoder that records nothing can still be checked by: its shape
    S = getattr(getattr(crosscoder, "cfg", None), "n_snapshots", None)
    if S is not None and int(S) != store.n_snapshots:
        raise PartnerMismatchError(
            f"{used_by}: the crosscoder reads {S} snapshots, the store {store.path} holds {store.n_snapshots}; "
            "pass a store harvested from the crosscoder's snapshots"
        )
    d_in = getattr(getattr(crosscoder, "cfg", None), "d_in", None)
    at = hook or (store.hooks[0] if len(store.hooks) == 1 else None)
    if d_in is not None and at in store.hooks and int(d_in) != store.d_in_of(at):
        raise PartnerMismatchError(
            f"{used_by}: the crosscoder reads width {d_in}, the store {store.path} holds {store.d_in_of(at)} at {at}; "
            "pass the store of the crosscoder's hook"
        )


def pair_heldout(store: ActivationStore, heldout: ActivationStore) -> None:
    """Record in the held-out store's manifest the seal of the store it was split from."""
    manifest = {**heldout.manifest, HELDOUT_OF: store_seal(store)}  # as opened: just written, its seal checked
    write_manifest(heldout.path, manifest)
    heldout.manifest = manifest


def heldout_store_path(store_path: str | Path) -> Path:
    """Where ``crosslens harvest`` puts the held-out activations of the store at ``store_path``."""
    path = Path(store_path)
    return path.with_name(path.name + HELDOUT_SUFFIX)


def open_heldout(store_path: str | Path) -> ActivationStore | None:
    """The held-out store ``crosslens harvest`` wrote beside ``store_path``, re-hashed and checked
    to be split from that store (None when there is none)."""
    path = heldout_store_path(store_path)
    if not path.exists():
        return None
    heldout = ActivationStore.open(path, verify="full")
    check_heldout(ActivationStore.open(store_path, verify="none"), heldout)
    return heldout


def check_heldout(store: ActivationStore, heldout: ActivationStore) -> None:
    """Refuse a held-out store that was not split from ``store`` (or does not say)."""
    paired = heldout.manifest.get(HELDOUT_OF)
    fix = f"harvest again with `crosslens harvest --out {store.path} --overwrite`, or pass --eval-store"
    if not paired:
        raise PartnerMismatchError(
            f"the held-out store {heldout.path} does not record which store it was split from, so it cannot be "
            f"checked against {store.path}; {fix}"
        )
    if paired != store_seal(store):
        raise PartnerMismatchError(
            f"the held-out store {heldout.path} was split from another store than {store.path} (content "
            f"{str(paired.get('content_sha256'))[:12]}... vs {store.content_sha256[:12]}...): it is stale; {fix}"
        )


def check_eval_store(
    training: ActivationStore, evaluation: ActivationStore, hook: str, flag: str = "--eval-store"
) -> None:
    """Refuse, before a crosscoder is trained on ``training`` at ``hook``, a store to evaluate it on
    that could not serve it: other snapshots, other weight processing, or not that hook at that
    width. The same check :func:`check_crosscoder_store` makes once the crosscoder exists, made early."""
    where = f"{flag} {evaluation.path} and the training store {training.path}"
    suite = store_suite(training)
    problem = snapshot_problem(training.snapshots, evaluation.snapshots)
    if problem:
        raise PartnerMismatchError(
            f"{where} do not match: {problem}; pass a store harvested from the same snapshots "
            f"({harvest_advice(suite, training.snapshots, hook)})"
        )
    problem = processing_problem(suite, store_suite(evaluation), "the training store's models", f"{flag}'s")
    if problem:
        raise PartnerMismatchError(
            f"{where} do not match: {problem}; pass a store harvested with the training store's processing "
            f"({harvest_advice(suite, training.snapshots, hook)})"
        )
    if hook not in evaluation.hooks:
        raise PartnerMismatchError(
            f"{where} do not match: training reads {hook}, {flag} holds {', '.join(evaluation.hooks)}; "
            f"pass a store harvested with --hook {hook}"
        )
    if evaluation.d_in_of(hook) != training.d_in_of(hook):
        raise PartnerMismatchError(
            f"{where} do not match: width {training.d_in_of(hook)} vs {evaluation.d_in_of(hook)} at {hook}; "
            "pass a store of the same models"
        )


def _row_digest(row: torch.Tensor) -> bytes:
    """16 bytes naming a token row, whatever the table's integer type."""
    return hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class RowDigests:
    """A token table's rows as 16-byte digests, in order: enough to tell which rows of another
    table it holds, kept where the table itself is not (a streamed run's training rows)."""

    seq_len: int
    """Tokens per row of the table."""
    digests: tuple[bytes, ...]
    """One digest per row, in the table's order."""

    @classmethod
    def of(cls, table_NL: Int[torch.Tensor, "n seq"]) -> RowDigests:
        return cls(int(table_NL.shape[1]), tuple(_row_digest(row) for row in table_NL.cpu().long()))

    def save(self, path: str | Path) -> None:
        digests_N16 = torch.frombuffer(bytearray(b"".join(self.digests)), dtype=torch.uint8).reshape(-1, 16)
        # one metadata entry: safetensors writes several in an order of the process's own, and
        # the file is sealed into the run, whose seal must come out the same for the same run
        tensors = {"digests": digests_N16, "seq_len": torch.tensor([self.seq_len], dtype=torch.int64)}
        save_file(tensors, str(path), metadata={"format": ROW_DIGESTS_FORMAT})

    @classmethod
    def load(cls, path: str | Path) -> RowDigests:
        """The digests saved at ``path``; a file of another format is refused, naming it."""
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata, digests_N16, seq_len_1 = f.metadata() or {}, f.get_tensor("digests"), f.get_tensor("seq_len")
            if (
                metadata.get("format") != ROW_DIGESTS_FORMAT
                or digests_N16.dtype != torch.uint8
                or digests_N16.shape[-1:] != (16,)
            ):
                raise ValueError(f"not a {ROW_DIGESTS_FORMAT} file")
            seq_len = int(seq_len_1.item())
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
            raise PartnerMismatchError(
                f"{path} cannot be read as a run's row digests ({error}); train the run again"
            ) from None
        return cls(seq_len, tuple(bytes(row.tolist()) for row in digests_N16))


def shared_sequences(mine: torch.Tensor, theirs: torch.Tensor | RowDigests) -> int:
    """How many rows of the token table ``mine`` are rows of ``theirs`` too (a table, or its
    digests): sequences a crosscoder trained on ``theirs`` has seen. Rows compare whole, so tables
    of other lengths share none."""
    seen = theirs if isinstance(theirs, RowDigests) else RowDigests.of(theirs)
    if mine.shape[1] != seen.seq_len:
        return 0
    digests = set(seen.digests)
    return sum(_row_digest(row) in digests for row in mine.cpu().long())
