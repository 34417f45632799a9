"""A store's manifest through its harvest, from its start to its seal, in one place.

:meth:`HarvestManifest.open` starts the store afresh, or resumes it where the folder holds a store
of an equal spec (:mod:`crosslens.activations.harvest_inputs`), after dropping damaged shards and
checking that no snapshot's files or weights changed since it was harvested. As the harvest
loads each snapshot the manifest checks it against what it recorded
(:meth:`~HarvestManifest.check_snapshot`) and the widths of its hooks; it records a shard file
only once the file is on disk with its size and sha256, merges what a team's ranks recorded in a
round (:meth:`~HarvestManifest.merge`), and finishes with the normalisation factors. Each change
is written sealed (``manifest.json``), so a killed harvest resumes from what it recorded.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from safetensors.torch import save_file

from crosslens.activations.harvest_inputs import HarvestInputs
from crosslens.activations.store import (
    ACTS_DIR,
    DEVICES_KEY,
    LOCK_NAME,
    MANIFEST_NAME,
    STORE_FORMAT,
    TOKEN_SOURCE_KEY,
    TOKENS_NAME,
    StoreMismatchError,
    file_problem,
    file_sha256,
    read_manifest,
    shard_relpath,
    write_manifest,
)
from crosslens.core.errors import DuplicateSnapshotError, SnapshotMismatchError, keyword_and_flag

if TYPE_CHECKING:
    from crosslens.activations.team import Unit

HARVEST_OVERWRITE = keyword_and_flag("overwrite=True", "crosslens harvest --overwrite")
NEW_OUT = keyword_and_flag("out_dir", "--out")
"""How a refused harvest's fixes are named, for ``harvest_activations``'s callers and the command's."""


class HarvestManifest:
    """The manifest of the store at ``root`` while it is harvested: what ``manifest.json`` holds
    (``data``) and every change made to it."""

    def __init__(self, root: Path, data: dict) -> None:
        self.root = root
        self.data = data

    @classmethod
    def open(
        cls, root: Path, inputs: HarvestInputs, *, overwrite: bool, verify_hashes: bool, device_kind: str
    ) -> HarvestManifest:
        """The manifest of the store at ``root`` for ``inputs``, whose missing shards a
        ``device_kind`` device ("cuda", "cpu", ...) computes: resumed (its snapshots' identities
        checked against their files) or new, with the token tables written."""
        resumed = _resumable(root, inputs, overwrite=overwrite, verify_hashes=verify_hashes)
        manifest = cls(root, _new_record(inputs, device_kind) if resumed is None else resumed)
        if resumed is not None:
            manifest._check_identities(inputs.identities)
            manifest._resumed_on(device_kind, inputs.token_source)
        for s, entry in enumerate(inputs.suite.provenance().get("snapshots", [])):  # hashes of snapshots loaded earlier
            manifest._check_known_weights(s, entry.get("weights_sha256"), entry.get("revision"))
        if TOKENS_NAME not in manifest.files:
            manifest.files[TOKENS_NAME] = _write_tokens(root, inputs.token_ids_NL, inputs.keep_NL)
            manifest.save()
        return manifest

    @property
    def files(self) -> dict[str, dict]:
        """Each recorded file's ``bytes`` and ``sha256`` (and a shard's ``rows`` and ``norm_sum``)."""
        return self.data["files"]

    @property
    def n_snapshots(self) -> int:
        return self.data["n_snapshots"]

    @property
    def n_shards(self) -> int:
        return len(self.data["shards"])

    @property
    def dtype(self) -> str:
        """The storage dtype of the shard files."""
        return self.data["spec"]["dtype"]

    def describe(self) -> str:
        return f"{self.n_snapshots} snapshots x {self.data['n_tokens']} tokens"

    def shard_rows(self, k: int) -> tuple[int, int]:
        """The token table's rows (``start, stop``) of shard ``k``."""
        shard = self.data["shards"][k]
        return shard["seq_start"], shard["seq_stop"]

    def missing(self, s: int, k: int) -> bool:
        """Whether shard ``k`` of snapshot ``s`` still lacks a file for one of the hooks."""
        return any(shard_relpath(h, s, k) not in self.files for h in self.data["spec"]["hooks"])

    def to_write(self, unit: Unit) -> list[int] | None:
        """The shards of ``unit``'s snapshot still to write; None where there are none and the
        snapshot's files were identified (checked on opening): it need not even load."""
        s, ks = unit
        todo = [k for k in ks if self.missing(s, k)]
        if not todo and self.data["snapshots"][s].get("source") is not None:
            return None
        return todo

    def progress(self, units: Sequence[Unit]) -> tuple[int, int]:
        """The tokens of ``units``' shards, and those of them already on disk (a resumed harvest)."""
        tokens = [(self._shard_tokens(k), self.missing(s, k)) for s, ks in units for k in ks]
        return sum(n for n, _ in tokens), sum(n for n, missing in tokens if not missing)

    def _shard_tokens(self, k: int) -> int:
        shard = self.data["shards"][k]
        return shard["token_stop"] - shard["token_start"]

    def check_snapshot(self, s: int, record: dict) -> None:
        """Refuse snapshot ``s`` as loaded (its ``record``) where its weights differ from those the
        store was built from, or equal another snapshot's; then record it."""
        recorded = self.data["snapshots"][s]
        sha = record.get("weights_sha256")
        self._check_known_weights(s, sha, record["revision"])
        for other in self.data["snapshots"]:
            if sha is not None and other is not recorded and other.get("weights_sha256") == sha:
                raise DuplicateSnapshotError(
                    f"snapshots {other['revision']!r} and {record['revision']!r} hold identical weights "
                    f"(sha256 {sha[:12]}...); drop one with suite.select(...).",
                    revisions=(other["revision"], record["revision"]),
                    sha256=sha,
                )
        self.data["snapshots"][s] = {**record, "source": recorded.get("source")}

    def check_width(self, hook: str, d_in: int, revision: str) -> None:
        """Refuse a snapshot whose ``hook`` is ``d_in`` wide where the others' is not."""
        known = self.data["d_in"].setdefault(hook, d_in)
        if known != d_in:
            raise SnapshotMismatchError(
                f"snapshot {revision!r} has width {d_in} at {hook}, other snapshots {known}; "
                "every snapshot of a crosscoder must share one architecture.",
                revision=revision,
                differences={"d_in": (known, d_in)},
            )

    def record(self, written: Mapping[str, dict], *, save: bool = True) -> None:
        """Enter the shard files ``written`` (path in the store -> record), and (``save``) save."""
        self.files.update(written)
        if written and save:
            self.save()

    def save(self) -> None:
        """Seal the manifest and write it atomically."""
        write_manifest(self.root, self.data)

    def part(self, unit: Unit | None) -> dict | None:
        """What this rank recorded of ``unit``'s snapshot (None without a unit), for :meth:`merge`."""
        if unit is None:
            return None
        s = unit[0]
        # "acts/<hook>/snap003_shard" for every hook: this snapshot's files
        prefixes = tuple(shard_relpath(h, s, 0).rsplit("_shard", 1)[0] + "_shard" for h in self.data["spec"]["hooks"])
        return {
            "s": s,
            "snapshot": self.data["snapshots"][s],
            "files": {rel: rec for rel, rec in self.files.items() if rel.startswith(prefixes)},
            "d_in": self.data["d_in"],
        }

    def merge(self, parts: Sequence[dict | None]) -> None:
        """Every rank's :meth:`part` of a round, merged (identically on every rank)."""
        for part in parts:
            if part is None:
                continue
            for hook, width in part["d_in"].items():
                self.check_width(hook, width, part["snapshot"].get("revision", "?"))
            self.data["snapshots"][part["s"]] = part["snapshot"]
            self.files.update(part["files"])
        hashes = [e.get("weights_sha256") for e in self.data["snapshots"] if e.get("weights_sha256")]
        if len(hashes) != len(set(hashes)):
            first = next(h for h in hashes if hashes.count(h) > 1)
            pair = [e["revision"] for e in self.data["snapshots"] if e.get("weights_sha256") == first][:2]
            raise DuplicateSnapshotError(
                f"snapshots {pair[0]!r} and {pair[1]!r} hold identical weights (sha256 {first[:12]}...); "
                "drop one with suite.select(...).",
                revisions=tuple(pair),
                sha256=first,
            )

    def finish(self) -> None:
        """Record each hook's normalisation factors and mean norms, mark the store complete, save."""
        hooks = self.data["spec"]["hooks"]
        self.data["norm_factors"] = {hook: self._norm_factors(hook) for hook in hooks}
        self.data["mean_norms"] = {
            hook: [math.sqrt(self.data["d_in"][hook]) / f for f in self.data["norm_factors"][hook]] for hook in hooks
        }
        self.data["complete"] = True
        self.save()

    def _norm_factors(self, hook: str) -> list[float]:
        """sqrt(d_in) / mean ||a_s|| per snapshot, from the per-shard norm sums."""
        d_in, n_tokens = self.data["d_in"][hook], self.data["n_tokens"]
        factors = []
        for s in range(self.n_snapshots):
            total = math.fsum(self.files[shard_relpath(hook, s, k)]["norm_sum"] for k in range(self.n_shards))
            mean_norm = total / n_tokens
            if mean_norm <= 0:
                raise ValueError(
                    f"snapshot {s} has zero activations at {hook}, so no normalisation factor exists; "
                    "drop that snapshot or read with normalize=False."
                )
            factors.append(math.sqrt(d_in) / mean_norm)
        return factors

    def _check_identities(self, identities: Sequence[dict | None]) -> None:
        """Refuse to resume a store whose snapshots' files changed since they were harvested
        (a snapshot with no shards yet just takes its new identity)."""
        hooks = self.data["spec"]["hooks"]
        for s, (entry, now) in enumerate(zip(self.data["snapshots"], identities)):
            recorded = entry.get("source")
            if now is None or (recorded is not None and recorded["digest"] == now["digest"]):
                continue
            if not any(shard_relpath(h, s, k) in self.files for h in hooks for k in range(self.n_shards)):
                entry.update(source=now, weights_sha256=None)
                continue
            if recorded is None:
                continue  # harvested without a file identity: loading it checks the weights hash instead
            raise StoreMismatchError(
                f"snapshot {entry['revision']!r} has changed since the store {self.root} was harvested "
                f"({'; '.join(_changed_files(recorded, now))}), so its stored activations are stale; pass "
                f"{keyword_and_flag('overwrite=True', '--overwrite')} to harvest afresh, or use a new out_dir."
            )

    def _resumed_on(self, kind: str, token_source: dict | None) -> None:
        """Record what a resumed harvest adds: the token source where none is recorded, and the
        ``kind`` of device that computes the shards still missing, saying so where shards on disk
        were computed on another kind (another device's kernels and attention path round the
        same activations otherwise)."""
        if token_source is not None:
            self.data.setdefault(TOKEN_SOURCE_KEY, token_source)
        kinds = self.data.get(DEVICES_KEY)
        if kinds is None:  # written before devices were recorded: what computed its shards is not known
            return
        if not any(rel.startswith(ACTS_DIR + "/") for rel in self.files):
            self.data[DEVICES_KEY] = [kind]
            return
        if not any(self.missing(s, k) for s in range(self.n_snapshots) for k in range(self.n_shards)):
            return  # nothing left to compute
        others = [other for other in kinds if other != kind]
        if others:
            print(
                f"resuming {self.root}: its shards so far were computed on {', '.join(others)}, the rest are on "
                f"{kind}: the same activations to float rounding, not the bytes one device would write "
                f"(--overwrite harvests them all on {kind})"
            )
        if kind not in kinds:
            kinds.append(kind)

    def _check_known_weights(self, s: int, sha: str | None, revision: str | None) -> None:
        recorded = self.data["snapshots"][s].get("weights_sha256")
        if sha is not None and recorded is not None and recorded != sha:
            raise StoreMismatchError(
                f"snapshot {revision!r} has other weights (sha256 {sha[:12]}...) than the store was built from "
                f"({recorded[:12]}...); use a new {NEW_OUT}, or pass {HARVEST_OVERWRITE} to replace the store."
            )


def _changed_files(recorded: dict, now: dict) -> list[str]:
    """What differs between a snapshot's ``recorded`` identity and its identity ``now``."""
    changed = [
        f"{name} {recorded['files'].get(name, 'absent')[:12]}... -> {now['files'].get(name, 'absent')[:12]}..."
        for name in sorted(set(recorded["files"]) | set(now["files"]))
        if recorded["files"].get(name) != now["files"].get(name)
    ]
    if recorded.get("commit") != now.get("commit"):
        changed.insert(0, f"commit {str(recorded.get('commit'))[:12]} -> {str(now.get('commit'))[:12]}")
    return changed


def _new_record(inputs: HarvestInputs, device_kind: str) -> dict:
    spec, keep_NL = inputs.spec, inputs.keep_NL
    token_source = {} if inputs.token_source is None else {TOKEN_SOURCE_KEY: inputs.token_source}
    return {
        "format": STORE_FORMAT,
        "fingerprint": inputs.fingerprint,
        "spec": spec,
        "n_tokens": int(keep_NL.sum()),
        "n_snapshots": len(inputs.suite.snapshots),
        "d_in": {},
        "shards": _plan_shards(keep_NL.sum(dim=1), spec["seqs_per_shard"]),
        "snapshots": [
            dict(ref.to_dict(), weights_sha256=None, source=identity)
            for ref, identity in zip(inputs.suite.snapshots, inputs.identities)
        ],
        "files": {},
        "complete": False,
        DEVICES_KEY: [device_kind],
        **token_source,
    }


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


def _write_tokens(root: Path, token_ids_NL: torch.Tensor, keep_NL: Bool[torch.Tensor, "n_seqs seq_len"]) -> dict:
    """Write the token tables (the rows, the kept tokens' ids and their positions); their file record."""
    tables = {"sequences": token_ids_NL, "token_ids": token_ids_NL[keep_NL], "positions": keep_NL.nonzero()}
    tmp = root / (TOKENS_NAME + ".tmp")
    save_file({name: t.contiguous() for name, t in tables.items()}, str(tmp))
    os.replace(tmp, root / TOKENS_NAME)
    path = root / TOKENS_NAME
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


SPEC_FLAGS = {"model_dtype": "--dtype", "dtype": "--store-dtype", "hooks": "--hook", "seq_len": "--seq-len"}
"""The spec's entries a harvest flag sets, in the order a refusal offers them: the flag given the
value a store recorded resumes it."""

SPEC_SETTINGS = {
    "suite": "the snapshots (--suite, --steps, --n-snapshots)",
    "token_ids_sha256": "the tokens (--n-tokens, --heldout-tokens, --text, --dataset)",
    "n_seqs": "the tokens (--n-tokens, --heldout-tokens, --text, --dataset)",
    "exclude_bos": "the tokens left out (exclude_bos=, exclude_token_ids= in Python)",
    "exclude_token_ids": "the tokens left out (exclude_bos=, exclude_token_ids= in Python)",
    "seqs_per_shard": "the shard size (shard_tokens= in Python)",
}
"""What sets each other entry of the spec, as a refusal names it."""


def spec_changes(old: dict, new: dict) -> tuple[list[str], dict[str, str]]:
    """How a store's spec ``old`` differs from ``new``, named by what sets each entry: the
    differences (``--dtype: bfloat16 there, float32 now``, ``the tokens (--n-tokens, ...)``), and
    each flag that gives the store's own value, with how (``{"--dtype": "--dtype bfloat16"}``),
    which resumes it."""
    old, new = {"model_dtype": "float32", **old}, {"model_dtype": "float32", **new}  # absent: float32 (store_spec)
    keys = [*SPEC_FLAGS, *sorted(set(old) | set(new))]
    differs: list[str] = []
    fixes: dict[str, str] = {}
    for key in dict.fromkeys(keys):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if key == "suite" and _moved_only(was, now):
            differs.append(
                f"the suite's folder: {was['root']} there, {now['root']} now, with the same snapshot records"
            )
            continue
        if key in SPEC_FLAGS and was is not None and now is not None:
            flag = SPEC_FLAGS[key]
            differs.append(f"{flag}: {_flag_value(was)} there, {_flag_value(now)} now")
            fixes[flag] = " ".join(f"{flag} {value}" for value in (was if isinstance(was, list) else [was]))
        else:
            differs.append(SPEC_SETTINGS.get(key, key))
    return list(dict.fromkeys(differs)), fixes


def _moved_only(was: Any, now: Any) -> bool:
    """Whether two suite records differ in their local folder alone (a suite copied or moved,
    or a cache under another ``CROSSLENS_HOME``); called where the two differ."""
    if not (isinstance(was, dict) and isinstance(now, dict)) or None in (was.get("root"), now.get("root")):
        return False
    return {**was, "root": None} == {**now, "root": None}


def _flag_value(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _clear_store_files(root: Path) -> None:
    for name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp", TOKENS_NAME, TOKENS_NAME + ".tmp"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / ACTS_DIR, ignore_errors=True)


def _resumable(root: Path, inputs: HarvestInputs, *, overwrite: bool, verify_hashes: bool) -> dict | None:
    """The manifest of ``inputs``' store to resume from, or None to start afresh (after clearing
    when allowed)."""
    for tmp in root.glob(f"{ACTS_DIR}/*/*.tmp"):  # leftovers of a write that was killed
        tmp.unlink()
    if not (root / MANIFEST_NAME).is_file():
        # what a run killed at its start leaves
        ours = {ACTS_DIR, TOKENS_NAME, TOKENS_NAME + ".tmp", MANIFEST_NAME + ".tmp", LOCK_NAME}
        leftovers = [p.name for p in root.iterdir() if p.name not in ours]
        if leftovers and not overwrite:
            raise StoreMismatchError(
                f"{root} is not empty ({leftovers[:3]}...) and holds no activation store; "
                f"choose an empty out_dir or pass {HARVEST_OVERWRITE}."
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
            f"crosslens version (this one writes {STORE_FORMAT!r}); pass {HARVEST_OVERWRITE} to harvest it again."
        )
    if manifest.get("fingerprint") != inputs.fingerprint:
        if not any(rel.startswith(ACTS_DIR + "/") for rel in manifest.get("files", {})):
            # a harvest that failed before its first shard leaves only its token table: nothing of
            # value, so a retry with corrected inputs starts afresh instead of being refused
            _clear_store_files(root)
            return None
        differs, fixes = spec_changes(manifest.get("spec", {}), inputs.spec)
        differs = differs or ["format"]
        resume = ""
        if fixes:
            rest = "" if len(fixes) == len(differs) else " and the rest as it was harvested"
            resume = f"pass {' '.join(fixes.values())}{rest} to resume it, "
        raise StoreMismatchError(
            f"{root} holds an activation store built for other inputs (differs in: {'; '.join(differs)}); "
            f"{resume}use a new {NEW_OUT}, or pass {HARVEST_OVERWRITE} to replace it.",
            differs,
            fixes,
        )
    files = manifest["files"]
    for rel in list(files):
        if file_problem(root, rel, files[rel], full=verify_hashes) is not None:
            (root / rel).unlink(missing_ok=True)
            del files[rel]
            manifest["complete"] = False
    return manifest


__all__ = ["HarvestManifest"]
