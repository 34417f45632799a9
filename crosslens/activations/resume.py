"""What an activation store is built from, and whether a store on disk may be resumed.

A store's *spec* (suite provenance, hooks, dtype, token table hash, exclusions, shard size)
fingerprints its inputs: a harvest resumes a store only under an equal spec, after
dropping damaged shards and checking that no snapshot's files or weights changed since it
was harvested. Snapshot identities are read from the files before any model loads, so
duplicates and damaged snapshots are refused before anything is written.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Int

from crosslens.activations.store import (
    ACTS_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    STORE_FORMAT,
    TOKENS_NAME,
    StoreMismatchError,
    file_problem,
    read_manifest,
    shard_relpath,
)
from crosslens.activations.tokens import tokens_sha256
from crosslens.core.errors import DuplicateSnapshotError, SnapshotMismatchError
from crosslens.core.hashing import json_sha256

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from crosslens.checkpoints import CheckpointSuite


def _plan_shards(kept_per_seq_N: Int[torch.Tensor, " n_seqs"], seqs_per_shard: int) -> list[dict]:
    offsets = np.concatenate([[0], np.cumsum(kept_per_seq_N.numpy())]).astype(np.int64)
    n_seqs = kept_per_seq_N.shape[0]
    return [
        {
            "seq_start": a,
            "seq_stop": min(a + seqs_per_shard, n_seqs),
            "token_start": int(offsets[a]),
            "token_stop": int(offsets[min(a + seqs_per_shard, n_seqs)]),
        }
        for a in range(0, n_seqs, seqs_per_shard)
    ]


def _spec_differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [key for key in keys if old.get(key) != new.get(key)]


def _clear_store_files(root: Path) -> None:
    for name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp", TOKENS_NAME, TOKENS_NAME + ".tmp"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / ACTS_DIR, ignore_errors=True)


def store_spec(
    provenance: dict,
    hooks: list[str],
    token_ids_NL: torch.Tensor,
    *,
    dtype: str,
    exclude_bos: bool,
    exclude_token_ids: list[int],
    shard_tokens: int,
    model_dtype: str,
) -> dict:
    """What a store is built from; a store is resumed only under an equal spec."""
    spec = {
        "suite": _provenance_without_hashes(provenance),
        "hooks": hooks,
        "dtype": dtype,
        "exclude_bos": exclude_bos,
        "exclude_token_ids": exclude_token_ids,
        "token_ids_sha256": tokens_sha256(token_ids_NL),
        "n_seqs": token_ids_NL.shape[0],
        "seq_len": token_ids_NL.shape[1],
        "seqs_per_shard": max(1, shard_tokens // token_ids_NL.shape[1]),
    }
    if model_dtype != "float32":  # absent for float32, the default, so its fingerprint is unchanged by the option
        spec["model_dtype"] = model_dtype
    return spec


def snapshot_identities(suite: CheckpointSuite) -> list[dict | None]:
    """Each snapshot's identity from its files (``crosslens.checkpoints.identity``), read
    before any model loads; refuses two snapshots with byte-identical weights."""
    from crosslens.checkpoints import CheckpointSuite
    from crosslens.checkpoints.identity import snapshot_identity

    if not isinstance(suite, CheckpointSuite):  # a suite from elsewhere: checked by weights hash as it loads
        return [None] * len(suite.snapshots)
    identities = [snapshot_identity(suite, ref) for ref in suite.snapshots]
    first_with: dict[str, str] = {}
    for ref, identity in zip(suite.snapshots, identities):
        if identity is None:
            continue
        earlier = first_with.setdefault(identity["weights_digest"], ref.revision)
        if earlier != ref.revision:
            raise DuplicateSnapshotError(
                f"snapshots {earlier!r} and {ref.revision!r} of {suite.model_id} have identical weights "
                f"(byte-identical {', '.join(n for n in identity['files'] if n != 'config.json')}), so a crosscoder "
                f"would see no change between them; drop one, e.g. suite.select(steps=[...]) without step {ref.step}. "
                "Nothing was written.",
                revisions=(earlier, ref.revision),
                sha256=identity["weights_digest"],
            )
    return identities


def _provenance_without_hashes(provenance: dict) -> dict:
    # Weights hashes enter a suite's provenance as its snapshots get loaded; they are
    # checked per snapshot instead, so the fingerprint must not depend on what ran before.
    snapshots = [{k: v for k, v in entry.items() if k != "weights_sha256"} for entry in provenance.get("snapshots", [])]
    return {**provenance, "snapshots": snapshots}


def _fingerprint(spec: dict) -> str:
    return json_sha256(spec)


def new_manifest(
    spec: dict, keep_NL: torch.Tensor, snapshots: Sequence[Any], identities: Sequence[dict | None]
) -> dict:
    return {
        "format": STORE_FORMAT,
        "fingerprint": _fingerprint(spec),
        "spec": spec,
        "n_tokens": int(keep_NL.sum()),
        "n_snapshots": len(snapshots),
        "d_in": {},
        "shards": _plan_shards(keep_NL.sum(dim=1), spec["seqs_per_shard"]),
        "snapshots": [
            dict(ref.to_dict(), weights_sha256=None, source=identity) for ref, identity in zip(snapshots, identities)
        ],
        "files": {},
        "complete": False,
    }


def start_or_resume(root: Path, spec: dict, *, overwrite: bool, verify_hashes: bool) -> dict | None:
    """The manifest to resume from, or None to start afresh (after clearing when allowed)."""
    for tmp in root.glob(f"{ACTS_DIR}/*/*.tmp"):  # leftovers of a write that was killed
        tmp.unlink()
    if not (root / MANIFEST_NAME).is_file():
        # what a run killed at its start leaves
        ours = {ACTS_DIR, TOKENS_NAME, TOKENS_NAME + ".tmp", MANIFEST_NAME + ".tmp", LOCK_NAME}
        leftovers = [p.name for p in root.iterdir() if p.name not in ours]
        if leftovers and not overwrite:
            raise StoreMismatchError(
                f"{root} is not empty ({leftovers[:3]}...) and holds no activation store; "
                "choose an empty out_dir or pass overwrite=True (`crosslens harvest --overwrite`)."
            )
        _clear_store_files(root)
        return None
    if overwrite:  # whatever is there goes, finished snapshots included: they get re-checked as they load
        _clear_store_files(root)
        return None
    manifest = read_manifest(root)  # a damaged one raises, naming the file and how to rebuild
    if manifest.get("format") != STORE_FORMAT:
        raise StoreMismatchError(
            f"{root} holds an activation store of format {manifest.get('format')!r}, written by another "
            f"crosslens version (this one writes {STORE_FORMAT!r}); pass overwrite=True (`crosslens harvest "
            "--overwrite`) to harvest it again."
        )
    if manifest.get("fingerprint") != _fingerprint(spec):
        if not any(rel.startswith(ACTS_DIR + "/") for rel in manifest.get("files", {})):
            # a harvest that failed before its first shard leaves only its token table: nothing of
            # value, so a retry with corrected inputs starts afresh instead of being refused
            _clear_store_files(root)
            return None
        differs = _spec_differences(manifest.get("spec", {}), spec) or ["format"]
        raise StoreMismatchError(
            f"{root} holds an activation store built for other inputs (differs in: {', '.join(differs)}); "
            "use a new out_dir (`--out`), or pass overwrite=True (`crosslens harvest --overwrite`) to replace it.",
            differs,
        )
    files = manifest["files"]
    for rel in list(files):
        if file_problem(root, rel, files[rel], full=verify_hashes) is not None:
            (root / rel).unlink(missing_ok=True)
            del files[rel]
            manifest["complete"] = False
    return manifest


def check_identities(root: Path, manifest: dict, identities: Sequence[dict | None]) -> None:
    """Refuse to resume a store whose snapshots' files changed since they were harvested
    (a snapshot with no shards yet just takes its new identity)."""
    hooks, n_shards = manifest["spec"]["hooks"], len(manifest["shards"])
    for s, (entry, now) in enumerate(zip(manifest["snapshots"], identities)):
        recorded = entry.get("source")
        if now is None or (recorded is not None and recorded["digest"] == now["digest"]):
            continue
        if not any(shard_relpath(h, s, k) in manifest["files"] for h in hooks for k in range(n_shards)):
            entry.update(source=now, weights_sha256=None)
            continue
        if recorded is None:
            continue  # harvested without a file identity: loading it checks the weights hash instead
        changed = [
            f"{name} {recorded['files'].get(name, 'absent')[:12]}... -> {now['files'].get(name, 'absent')[:12]}..."
            for name in sorted(set(recorded["files"]) | set(now["files"]))
            if recorded["files"].get(name) != now["files"].get(name)
        ]
        if recorded.get("commit") != now.get("commit"):
            changed.insert(0, f"commit {str(recorded.get('commit'))[:12]} -> {str(now.get('commit'))[:12]}")
        raise StoreMismatchError(
            f"snapshot {entry['revision']!r} has changed since the store {root} was harvested "
            f"({'; '.join(changed)}), so its stored activations are stale; pass overwrite=True "
            "(`--overwrite`) to harvest afresh, or use a new out_dir."
        )


def check_known_weights(manifest: dict | None, s: int, sha: str | None, revision: str | None) -> None:
    recorded = None if manifest is None else manifest["snapshots"][s].get("weights_sha256")
    if sha is not None and recorded is not None and recorded != sha:
        raise StoreMismatchError(
            f"snapshot {revision!r} has other weights (sha256 {sha[:12]}...) than the store was built from "
            f"({recorded[:12]}...); use a new out_dir (`--out`), or pass overwrite=True (`crosslens harvest "
            "--overwrite`) to replace the store."
        )


def check_snapshot(
    manifest: dict, s: int, record: dict, model: HookedTransformer, largest_id: int, seq_len: int
) -> None:
    """Refuse changed weights (vs. a previous run), duplicate weights, and a token table (its
    :func:`largest_token_id`, its rows' ``seq_len``) the model cannot read."""
    recorded = manifest["snapshots"][s]
    sha = record.get("weights_sha256")
    check_known_weights(manifest, s, sha, record["revision"])
    for other in manifest["snapshots"]:
        if sha is not None and other is not recorded and other.get("weights_sha256") == sha:
            raise DuplicateSnapshotError(
                f"snapshots {other['revision']!r} and {record['revision']!r} hold identical weights "
                f"(sha256 {sha[:12]}...); drop one with suite.select(...).",
                revisions=(other["revision"], record["revision"]),
                sha256=sha,
            )
    retry = " A retry with the shorter rows replaces what this run wrote."
    check_tokens_fit(model, record["revision"], largest_id, seq_len, retry=retry)
    manifest["snapshots"][s] = {**record, "source": recorded.get("source")}


def largest_token_id(token_ids_NL: torch.Tensor) -> int:
    """The largest id of a token table (-1 when it is empty): what :func:`check_tokens_fit` checks."""
    return int(token_ids_NL.max()) if token_ids_NL.numel() else -1


def check_tokens_fit(model: HookedTransformer, revision: str, largest_id: int, seq_len: int, retry: str = "") -> None:
    """Refuse a token table the snapshot ``model`` cannot read: its ``largest_id`` beyond the
    model's vocabulary, or rows of ``seq_len`` longer than its context (``retry`` is said after the
    fix for the latter). The table's largest id is taken once (:func:`largest_token_id`), however
    many snapshots check it."""
    if largest_id >= model.cfg.d_vocab:
        raise SnapshotMismatchError(
            f"token id {largest_id} is outside snapshot {revision!r}'s vocabulary "
            f"of {model.cfg.d_vocab}; build the tokens with this suite's tokenizer.",
            revision=revision,
        )
    if seq_len > model.cfg.n_ctx:
        raise SnapshotMismatchError(
            f"the token table's rows of {seq_len} tokens are longer than snapshot "
            f"{revision!r}'s context of {model.cfg.n_ctx}; build them with seq_len <= {model.cfg.n_ctx} "
            f"(`crosslens harvest --seq-len`).{retry}",
            revision=revision,
        )


def check_width(manifest: dict, hook: str, d_in: int, revision: str) -> None:
    known = manifest["d_in"].setdefault(hook, d_in)
    if known != d_in:
        raise SnapshotMismatchError(
            f"snapshot {revision!r} has width {d_in} at {hook}, other snapshots {known}; "
            "every snapshot of a crosscoder must share one architecture.",
            revision=revision,
            differences={"d_in": (known, d_in)},
        )
