"""The on-disk activation store: shards, manifest, and random-access reads.

Layout of a store folder::

    manifest.json                              everything needed to trust and read the store,
                                               sealed by its own sha256 ("manifest_sha256")
    harvest.lock                               held (flock) by the process writing the store
    tokens.safetensors                         token table [n_seqs, seq_len], kept token ids [N],
                                               their (seq, pos) [N, 2]
    acts/<hook>/snap{s:03d}_shard{k:04d}.npy   activations [rows_k, d_in] of snapshot s, shard k

Why ``.npy`` shards: harvesting is snapshot-major (one model resident at a time) while
training reads token-major ``[batch, n_snapshots, d_in]`` in random order. A ``.npy``
file opened with ``numpy.load(mmap_mode="r")`` turns a random gather of rows into page
reads of just those rows, with no deserialisation and nothing held in memory beyond the
OS page cache, and the header makes each file self-describing. safetensors would need
a full tensor load (or contiguous slices only) per gather; Arrow tables via ``datasets``
store row-major records, so a snapshot-major writer would have to transpose everything.
bfloat16 has no numpy dtype, so it is stored as its raw 16 bits (``uint16``).

Shards group whole sequences, so each sequence runs through a model exactly once, and
a shard is the unit of resume: a shard file is written under a temporary name, renamed
into place, and only then recorded in the manifest with its size and sha256.

Trust: the manifest records every file's sha256 and each snapshot's identity (the hashes
of its weight files, and for hub snapshots the commit its revision resolved to; see
``crosslens.checkpoints.identity``). ``ActivationStore.open`` re-hashes every file by
default, so a shard altered in place is refused rather than trained on; a manifest that
does not parse or fails its own checksum is reported as damaged, naming how to rebuild.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.errors import CrosslensError, DamagedManifestError, StoreLockedError
from crosslens.core.hashing import file_sha256, json_sha256
from crosslens.core.hooks import resolve_hook
from crosslens.core.locks import lock_holder
from crosslens.core.metadata import CFG_NAME
from crosslens.core.paths import RUN_CONFIG_NAME, RUN_SEAL_NAME
from crosslens.core.sealed import BrokenSealError, UnreadableRecordError, check_seal, read_sealed, write_sealed

MANIFEST_NAME = "manifest.json"
TOKENS_NAME = "tokens.safetensors"
LOCK_NAME = "harvest.lock"
ACTS_DIR = "acts"
STORE_FORMAT = "crosslens.activations/2"
MANIFEST_CHECKSUM = "manifest_sha256"
TOKEN_SOURCE_KEY = "token_source"
"""Manifest key beside the spec: where the tokens' text came from (absent where not known)."""
DEVICES_KEY = "devices"
"""Manifest key beside the spec: the kinds of device ("cuda", "cpu", ...) its shards were computed
on, in order (absent in a store written before it was recorded)."""
REBUILD_HINT = (
    "rebuild the store: run the same harvest again with overwrite=True "
    "(`crosslens harvest ... --overwrite`), or harvest into a new folder"
)

# Storage dtype -> numpy dtype of the shard files.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
}


class StoreMismatchError(CrosslensError):
    """A store folder was built for other inputs (suite, hooks, tokens, dtype, ...)."""

    def __init__(self, message: str, differs: Sequence[str] = (), fixes: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.differs = tuple(differs)
        """The harvest's settings the store there was built with other values of, named by their
        flags (``--dtype: bfloat16 there, float32 now``; empty when the folder holds no store of
        this format at all)."""
        self.fixes = dict(fixes or {})
        """Each flag that gives the store's own value of one of those settings, and how
        (``{"--dtype": "--dtype bfloat16"}``)."""


class CorruptShardError(CrosslensError):
    """Store files are missing, truncated or altered."""


class IncompleteStoreError(CrosslensError):
    """The store's harvest has not finished."""


def check_storage_dtype(dtype: str) -> str:
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(STORAGE_DTYPES)}.")
    return dtype


def to_storage(acts_ND: Float[torch.Tensor, "n d_in"], dtype: str) -> np.ndarray:
    """float activations -> the numpy array written to a shard."""
    acts_ND = acts_ND.detach().to("cpu").contiguous()
    if dtype == "float32":
        return acts_ND.float().numpy()
    if dtype == "float16":
        return acts_ND.half().numpy()
    return acts_ND.bfloat16().view(torch.int16).numpy().view(np.uint16)


def from_storage(rows: np.ndarray, dtype: str) -> Float[torch.Tensor, "n d_in"]:
    """Shard rows -> float32 tensor (bit-exact inverse of :func:`to_storage` up to its rounding)."""
    rows = np.ascontiguousarray(rows)
    if dtype == "bfloat16":
        return torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(rows).float()


def write_npy_atomic(path: Path, array: np.ndarray) -> tuple[int, str]:
    """Write ``array`` as ``.npy`` via a temporary file and rename; return (bytes, sha256).

    The data goes out straight from the array's memory (no copies), and hashing and
    writing release the GIL, so this can run in a background thread during harvesting.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    data = memoryview(array).cast("B") if array.size else b""
    digest = hashlib.sha256(header.getvalue())
    digest.update(data)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(header.getvalue())
        handle.write(data)
    # No fsync: a shard lost to a crash after the rename fails the size/sha256 check on
    # resume and is rebuilt, so durability would only buy disk stalls.
    os.replace(tmp, path)
    return len(header.getvalue()) + len(data), digest.hexdigest()


def file_problem(root: Path, rel: str, record: dict, *, full: bool) -> str | None:
    """Why the file ``rel`` does not match its manifest record, or None when it does."""
    path = root / rel
    if not path.is_file():
        return f"{rel}: missing"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{rel}: {size} bytes, expected {record['bytes']}"
    if full and file_sha256(path) != record["sha256"]:
        return f"{rel}: sha256 differs from the manifest"
    return None


def shard_relpath(hook: str, snapshot: int, shard: int) -> str:
    return f"{ACTS_DIR}/{hook}/snap{snapshot:03d}_shard{shard:04d}.npy"


def read_manifest(root: Path) -> dict:
    """The store's manifest; `DamagedManifestError` (naming the file) when it does not parse
    or fails its own checksum. A manifest of another format is returned unchecked."""
    path = root / MANIFEST_NAME
    try:
        manifest = read_sealed(path, MANIFEST_CHECKSUM, verify=False)
        if manifest.get("format") == STORE_FORMAT:
            check_seal(manifest, MANIFEST_CHECKSUM)
    except UnreadableRecordError as error:
        raise DamagedManifestError(f"{path} is damaged (not valid JSON: {error}); {REBUILD_HINT}.") from None
    except BrokenSealError:
        raise DamagedManifestError(
            f"{path} is damaged (its contents do not match the checksum it was written with); {REBUILD_HINT}."
        ) from None
    return manifest


def write_manifest(root: Path, manifest: dict) -> None:
    """Seal ``manifest`` (in place: it gains its ``manifest_sha256``) and write it atomically."""
    manifest[MANIFEST_CHECKSUM] = write_sealed(root / MANIFEST_NAME, manifest, MANIFEST_CHECKSUM)[MANIFEST_CHECKSUM]


def check_not_being_written(root: Path) -> None:
    """Refuse to read a store that another process is harvesting into right now."""
    holder = lock_holder(root / LOCK_NAME)
    if holder is not None:
        raise StoreLockedError(
            f"{root} is being written by {holder}; wait for that harvest to finish, or use another store."
        )


def store_content_sha256(manifest: dict) -> str:
    """One hash for everything a store serves: its inputs (fingerprint), each snapshot's
    identity and every file's sha256. Equal hashes mean the same activations."""
    content = {
        "fingerprint": manifest.get("fingerprint"),
        "snapshots": [entry.get("source") for entry in manifest.get("snapshots", [])],
        "files": {rel: record.get("sha256") for rel, record in sorted(manifest.get("files", {}).items())},
    }
    return json_sha256(content)


def snapshot_label(entry: Mapping[str, Any]) -> str:
    """A store snapshot's name for tables and messages: its revision (``step1000``,
    ``stage1-step1000-tokens5B``, ``global_step100``), or its step where a record has none. The
    revision, not the step, since a staged suite may reuse a step number in another stage."""
    return str(entry.get("revision", entry.get("step")))


def _trained_folder(root: Path) -> str | None:
    """The message for a training run's folder or a crosscoder's folder passed as a store (None for
    any other folder): harvesting into either is refused, so the fix is the store it was trained on."""
    if (root / RUN_CONFIG_NAME).is_file() or (root / RUN_SEAL_NAME).is_file():
        what, run = f"a training run's folder (it holds {RUN_CONFIG_NAME})", root
    elif (root / CFG_NAME).is_file():
        what, run = f"a crosscoder's folder (it holds {CFG_NAME})", root.parent
    else:
        return None
    try:
        store = json.loads((run / RUN_CONFIG_NAME).read_text()).get("store_path")
    except (OSError, ValueError, AttributeError):
        store = None
    fix = (
        f"pass the store it was trained on (`--store {store}`)"
        if isinstance(store, str) and store
        else ("pass the activation store it was trained on")
    )
    return f"{root} is {what}, not an activation store; {fix}"


class ActivationStore:
    """A finished activation store, opened read-only.

    ``read(hook, token_idx)`` returns ``[n, n_snapshots, d_in]`` float32 rows gathered
    from memory-mapped shards; ``normalize=True`` scales snapshot ``s`` by
    ``norm_factors(hook)[s]`` so its mean activation norm is ``sqrt(d_in)``.
    """

    #: memory maps kept open at once (each holds a file descriptor)
    max_open_shards = 256

    def __init__(self, path: str | os.PathLike, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._token_starts = np.array([sh["token_start"] for sh in manifest["shards"]], dtype=np.int64)
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._maps_lock = threading.Lock()  # providers read from a prefetch thread
        self._tokens: dict[str, torch.Tensor] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: str | bool = "full") -> ActivationStore:
        """Open a finished store, checking every file against the manifest.

        ``verify`` is "full" (sizes and sha256, the default; ``True``), "size" (sizes only,
        cheap but blind to bytes altered in place) or "none" (``False``).
        """
        verify = {True: "full", False: "none"}.get(verify, verify)  # type: ignore[arg-type]
        if verify not in ("full", "size", "none"):
            raise ValueError(f"verify must be 'full', 'size' or 'none' (or True/False), got {verify!r}.")
        root = Path(path)
        check_not_being_written(root)
        if root.exists() and not root.is_dir():
            raise FileNotFoundError(f"{root} is a file, not an activation store (a folder); pass a store's folder")
        if not (root / MANIFEST_NAME).is_file():
            if trained_here := _trained_folder(root):
                raise FileNotFoundError(trained_here)
            what = "does not exist" if not root.exists() else f"holds no {MANIFEST_NAME}, so it is no activation store"
            raise FileNotFoundError(
                f"{root} {what}; build a store there with `crosslens harvest ... --out {root}` "
                "(harvest_activations() in Python)"
            )
        manifest = read_manifest(root)
        if manifest.get("format") != STORE_FORMAT:
            raise ValueError(
                f"{root} is a store of format {manifest.get('format')!r}, this crosslens reads {STORE_FORMAT!r}; "
                "harvest it again with this version."
            )
        if not manifest.get("complete"):
            raise IncompleteStoreError(
                f"the harvest into {root} has not finished; run the same `crosslens harvest` command again "
                "(harvest_activations() with the same arguments in Python) to complete it; finished shards are kept."
            )
        store = cls(root, manifest)
        if verify != "none":
            store.verify(full=verify == "full")
        return store

    # ------------------------------------------------------------------ metadata
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["spec"]["hooks"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def n_snapshots(self) -> int:
        return int(self.manifest["n_snapshots"])

    @property
    def dtype(self) -> str:
        return self.manifest["spec"]["dtype"]

    @property
    def d_in(self) -> int:
        """Width of the stored activations (the same at every hook; else use ``d_in_of``)."""
        widths = set(self.manifest["d_in"].values())
        if len(widths) != 1:
            raise ValueError(f"hooks have different widths {self.manifest['d_in']}; use store.d_in_of(hook).")
        return widths.pop()

    def d_in_of(self, hook: str) -> int:
        return int(self.manifest["d_in"][self._check_hook(hook)])

    @property
    def snapshots(self) -> list[dict]:
        """Per snapshot: revision, step, tokens_seen, model_id, weights_sha256."""
        return list(self.manifest["snapshots"])

    @property
    def fingerprint(self) -> str:
        """Hash of the inputs the store was built for (suite, hooks, tokens, dtype, ...)."""
        return self.manifest["fingerprint"]

    @property
    def content_sha256(self) -> str:
        """Hash of everything the store serves (see :func:`store_content_sha256`)."""
        return store_content_sha256(self.manifest)

    @property
    def token_source(self) -> dict | None:
        """Where the tokens' text came from, as the harvest recorded it (``{"kind": "dataset",
        "source": "NAME:COLUMN"}``, see :meth:`~crosslens.activations.config.TokenSource.record`), or
        the token table a caller harvested, by its hash, where its text's source was not given
        (``{"kind": "token_table", "token_ids_sha256": ...}``); None where its manifest records none."""
        return self.manifest.get(TOKEN_SOURCE_KEY)

    def norm_factors(self, hook: str) -> Float[torch.Tensor, " n_snapshots"]:
        """sqrt(d_in) / mean_t ||a_{t,s}|| per snapshot: multiply to give mean norm sqrt(d_in)."""
        return torch.tensor(self.manifest["norm_factors"][self._check_hook(hook)], dtype=torch.float32)

    def mean_norms(self, hook: str) -> Float[torch.Tensor, " n_snapshots"]:
        """Mean activation norm per snapshot, before normalisation."""
        return torch.tensor(self.manifest["mean_norms"][self._check_hook(hook)], dtype=torch.float32)

    def _load_tokens(self) -> dict[str, torch.Tensor]:
        if self._tokens is None:
            self._tokens = load_file(self.path / TOKENS_NAME)
        return self._tokens

    @property
    def token_ids(self) -> Int[torch.Tensor, " n_tokens"]:
        """Id of each stored token, in store order."""
        return self._load_tokens()["token_ids"]

    @property
    def positions(self) -> Int[torch.Tensor, "n_tokens 2"]:
        """(sequence, position) of each stored token in :attr:`sequences`."""
        return self._load_tokens()["positions"]

    @property
    def sequences(self) -> Int[torch.Tensor, "n_seqs seq_len"]:
        """The full token table the models ran on (excluded tokens included)."""
        return self._load_tokens()["sequences"]

    def nbytes(self) -> int:
        """Bytes of activation shards on disk."""
        return sum(rec["bytes"] for rel, rec in self.manifest["files"].items() if rel.startswith(ACTS_DIR))

    def verify(self, *, full: bool = True) -> None:
        """Check every file against the manifest (sizes; sha256 too when ``full``)."""
        records = sorted(self.manifest["files"].items())
        # hashlib releases the GIL on large buffers, so a few threads hash files in parallel
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            found = pool.map(lambda item: file_problem(self.path, item[0], item[1], full=full), records)
            problems = [problem for problem in found if problem is not None]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise CorruptShardError(
                f"store {self.path} has {len(problems)} damaged file(s): {shown}. Run the same `crosslens harvest` "
                "command again (harvest_activations() with the same arguments in Python): it rebuilds exactly "
                "the damaged shards."
            )

    # ------------------------------------------------------------------ reads
    def resolve_hook(self, hook: str | None = None) -> str:
        """``hook`` if the store holds it; with None, the store's only hook."""
        return resolve_hook(self, hook)

    def _check_hook(self, hook: str) -> str:
        if hook not in self.manifest["d_in"]:
            raise KeyError(f"hook {hook!r} is not in this store; it holds {self.hooks}.")
        return hook

    def _shard_map(self, hook: str, snapshot: int, shard: int) -> np.ndarray:
        rel = shard_relpath(hook, snapshot, shard)
        with self._maps_lock:
            mapped = self._maps.get(rel)
            if mapped is None:
                mapped = np.load(self.path / rel, mmap_mode="r")
                self._maps[rel] = mapped
                if len(self._maps) > self.max_open_shards:
                    self._maps.popitem(last=False)  # LRU: each open map holds a file descriptor
            else:
                self._maps.move_to_end(rel)
            return mapped

    def read(
        self,
        hook: str,
        token_idx: Sequence[int] | np.ndarray | torch.Tensor | slice,
        *,
        normalize: bool = True,
    ) -> Float[torch.Tensor, "n n_snapshots d_in"]:
        """Activations of the given stored tokens at every snapshot, as float32."""
        d_in = self.d_in_of(hook)
        if isinstance(token_idx, slice):
            idx = np.arange(self.n_tokens, dtype=np.int64)[token_idx]
        else:
            given = token_idx.detach().cpu().numpy() if isinstance(token_idx, torch.Tensor) else np.asarray(token_idx)
            if given.size and given.dtype.kind not in "iu":  # 0.7 would read row 0
                raise TypeError(f"token indices are row numbers (integers); got {given.dtype} values")
            idx = given.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_tokens):
            raise IndexError(f"token indices must lie in [0, {self.n_tokens}); got {idx.min()}..{idx.max()}.")

        out_NSD = torch.empty(idx.size, self.n_snapshots, d_in, dtype=torch.float32)
        # Gather shard by shard, rows in file order, then scatter back to the asked order.
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        shard_of = np.searchsorted(self._token_starts, sorted_idx, side="right") - 1
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for group in np.split(np.arange(idx.size), bounds):
            if group.size == 0:
                continue
            shard = int(shard_of[group[0]])
            local = sorted_idx[group] - self._token_starts[shard]
            dest = torch.from_numpy(order[group])
            for s in range(self.n_snapshots):
                rows = self._shard_map(hook, s, shard)[local]
                out_NSD[dest, s] = from_storage(rows, self.dtype)
        if normalize:
            out_NSD *= self.norm_factors(hook)[None, :, None]
        return out_NSD

    def close(self) -> None:
        self._maps.clear()

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, hooks={self.hooks}, n_tokens={self.n_tokens}, "
            f"n_snapshots={self.n_snapshots}, dtype={self.dtype})"
        )
