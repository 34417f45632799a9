"""What a snapshot's weights *are*, read from its files before any model loads.

A snapshot's identity is the hash of each file that decides its activations (weights,
their index, ``config.json``) and, for hub snapshots, the commit its revision resolves
to. The Hugging Face cache gives the hashes for free: a cached file is a link to
``blobs/<hash>`` (the sha256 of an LFS file such as ``model.safetensors``, the git blob
id of a small one). Files that are not such links (local suites, copied caches) are
hashed. A hub snapshot's weights files are those ``from_pretrained`` reads (its
safetensors where it has both formats), so that its identity read from the hub's
metadata before it is downloaded equals the one read from the cache after. Activation
stores record identities so that a re-pushed branch or an edited folder is never mistaken
for the snapshot the store was built from; :func:`snapshot_identities` compares them across
a suite's snapshots, so duplicates are refused before anything is written.

Weight files are also checked for truncation here (a safetensors header names every
tensor's byte range, so a short file shows without reading the data).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hub_constants
from safetensors import SafetensorError

from crosslens.checkpoints.snapshot import SnapshotRef
from crosslens.core.errors import CorruptCheckpointError, DuplicateSnapshotError, UncachedRevisionError
from crosslens.core.hashing import file_sha256, json_sha256
from crosslens.core.model_specs import MODELS_FAMILY, drop_model_fix
from crosslens.core.weightfiles import safetensors_problem

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")
"""Files holding (or indexing) a checkpoint's weights."""
SAFETENSORS_SUFFIXES = (".safetensors", ".safetensors.index.json")
"""The weights files ``from_pretrained`` reads where a snapshot has any."""
IDENTITY_FILES = ("config.json",)
"""Other files that change what a snapshot computes."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)
"""Files a Hugging Face tokenizer is read from."""
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def file_identity(path: Path) -> str:
    """The cache's blob hash when ``path`` links into a Hugging Face ``blobs/`` folder,
    else the sha256 of its bytes."""
    if path.is_symlink():
        target = Path(path.readlink())
        if target.parent.name == "blobs":
            return target.name
    return file_sha256(path)


def is_weight_file(name: str) -> bool:
    trainer_files = ("training_args", "optimizer", "scheduler", "rng_state")  # Trainer state, not the model
    return name.endswith(WEIGHT_SUFFIXES) and not name.startswith(trainer_files)


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_weight_file(p.name))


def loaded_weight_names(names: Iterable[str]) -> list[str]:
    """The weights files among ``names`` that ``from_pretrained`` reads: the safetensors ones (a
    file, or an index and its shards) where there are any, else every weights file. A hub repo
    may hold its weights in two formats, of which transformers downloads only the one it reads."""
    weights = sorted(name for name in names if is_weight_file(name))
    return [name for name in weights if name.endswith(SAFETENSORS_SUFFIXES)] or weights


def tokenizer_files(folder: Path | None) -> dict[str, str]:
    """Name -> identity (`file_identity`) of the tokenizer files in ``folder``; empty when
    there is no folder or no tokenizer file in it. Two folders with equal, non-empty maps
    hold byte-identical tokenizer files, so their tokenizers have one vocabulary."""
    if folder is None:
        return {}
    return {name: file_identity(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}


def check_weight_files(folder: Path, *, revision: str, model_id: str) -> None:
    """Refuse a snapshot whose safetensors files are cut short, naming revision and file."""
    for path in weight_files(folder):
        if path.name.endswith(".safetensors"):
            problem = safetensors_problem(path)
            if problem is not None:
                raise corrupt_checkpoint_error(model_id, revision, path, problem)


def corrupt_checkpoint_error(model_id: str, revision: str, path: Path | str, problem: str) -> CorruptCheckpointError:
    path = Path(path)
    hub_file = "blobs" in path.resolve().parts or "snapshots" in path.parts
    fix = (
        f"delete the cached file and download it again (`huggingface-cli download {model_id} "
        f"--revision {revision} {path.name} --force-download`)"
        if hub_file
        else "restore or re-save that checkpoint folder (save_pretrained), or drop the snapshot with suite.select(...)"
    )
    return CorruptCheckpointError(
        f"snapshot {revision!r} of {model_id}: weights file {path} is damaged ({problem}); {fix}"
    )


def cached_snapshot(model_id: str, revision: str) -> tuple[str, Path] | None:
    """(commit, snapshot folder) of ``model_id@revision`` in the local Hugging Face cache."""
    repo = Path(hub_constants.HF_HUB_CACHE) / ("models--" + model_id.replace("/", "--"))
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    elif _COMMIT.match(revision):
        commit = revision
    else:
        return None
    folder = repo / "snapshots" / commit
    return (commit, folder) if folder.is_dir() else None


def _cached_with_weights(model_id: str, revision: str) -> tuple[str, Path] | None:
    cached = cached_snapshot(model_id, revision)
    return cached if cached is not None and any(is_weight_file(p.name) for p in cached[1].iterdir()) else None


def fully_cached(model_id: str, revision: str) -> bool:
    """Whether ``model_id@revision`` is in the local Hugging Face cache with its weights."""
    return _cached_with_weights(model_id, revision) is not None


def uncached_revision_error(model_id: str, revision: str) -> UncachedRevisionError:
    return UncachedRevisionError(
        f"{revision!r} is a published checkpoint of {model_id} but it is not (completely) in the local "
        f"Hugging Face cache ({hub_constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE=1 forbids downloading it. "
        f"Fetch it once with network access (`huggingface-cli download {model_id} --revision {revision}`), "
        "or unset HF_HUB_OFFLINE so crosslens downloads it."
    )


def _digest(pairs: dict[str, str]) -> str:
    return json_sha256(sorted(pairs.items()))  # a list of pairs: sort_keys changes no byte


def identity_from_files(files: dict[str, str], commit: str | None) -> dict[str, Any]:
    """The identity record of a snapshot whose files hash to ``files`` (name -> hash)."""
    weights = {name: sha for name, sha in files.items() if is_weight_file(name)}
    return {
        "commit": commit,
        "files": dict(sorted(files.items())),
        "weights_digest": _digest(weights),
        "digest": _digest({**files, "@commit": commit or ""}),
    }


def _folder_files(folder: Path, *, revision: str, model_id: str, hub: bool) -> dict[str, str]:
    """Name -> identity (:func:`file_identity`) of the files in ``folder`` that decide the
    snapshot's activations; refuses damaged weight files, and a folder without any. A hub
    snapshot's cached folder counts the weights files `from_pretrained` reads (what its hub
    metadata counts); a local folder's identity covers every weights file in it."""
    check_weight_files(folder, revision=revision, model_id=model_id)
    weights = weight_files(folder)
    if hub:
        weights = [folder / name for name in loaded_weight_names(p.name for p in weights)]
    if not weights:
        raise CorruptCheckpointError(
            f"snapshot {revision!r} of {model_id}: {folder} holds no weights file (model.safetensors, "
            "pytorch_model.bin, ...); restore it or drop the snapshot with suite.select(...)"
        )
    paths = weights + [folder / name for name in IDENTITY_FILES if (folder / name).is_file()]
    return {p.name: file_identity(p) for p in paths}


def _hub_files(model_id: str, revision: str) -> tuple[dict[str, str], str] | None:
    """The identity files' hashes and the commit, from the hub's file metadata (online, for a
    revision not yet cached): the files the cache will hold once the snapshot loads, each under
    the hash the cache's folder gives it (:func:`_folder_files`)."""
    try:
        info = HfApi().model_info(model_id, revision=revision, files_metadata=True)
    except Exception:  # no network or no such revision: loading will say which
        return None
    top = {sibling.rfilename: sibling for sibling in info.siblings or [] if "/" not in sibling.rfilename}
    files = {}
    for name in [*loaded_weight_names(top), *(name for name in IDENTITY_FILES if name in top)]:
        lfs = getattr(top[name], "lfs", None)
        sha = lfs.sha256 if lfs is not None and lfs.sha256 else _fetched_identity(model_id, info.sha, name)
        if sha is None:
            return None
        files[name] = sha
    return (files, info.sha) if files else None


def _fetched_identity(model_id: str, commit: str, name: str) -> str | None:
    """The identity of a small file the hub keeps outside LFS (``config.json``), fetched into the
    cache: its git blob id, the metadata's hash, names it only in a cache that links files to
    blobs; a cache without links (HF_HUB_DISABLE_SYMLINKS, Windows) holds the bytes, hashed."""
    try:
        return file_identity(Path(hf_hub_download(model_id, name, revision=commit)))
    except Exception:  # no network: the identity is unknown before loading, as without metadata
        return None


class SnapshotFiles(Protocol):
    """What identity reads of a suite (a `CheckpointSuite` is one)."""

    family: str
    model_id: str
    snapshots: Sequence[SnapshotRef]

    def snapshot_folder(self, ref: SnapshotRef) -> Path | None:
        """The folder holding ``ref``'s files on this machine, if any."""
        ...

    def repo_revision(self, ref: SnapshotRef) -> tuple[str, str]:
        """The hub repo and revision holding ``ref``'s weights."""
        ...

    def local_folder(self, ref: SnapshotRef) -> Path | None:
        """The folder of a snapshot that lives in no hub repo, else None."""
        ...


def snapshot_identity(suite: SnapshotFiles, ref: SnapshotRef) -> dict[str, Any] | None:
    """The identity of ``ref``'s files: ``commit``, ``files`` (name -> hash), ``weights_digest``
    (equal for byte-identical weights) and ``digest`` (everything). None when it cannot be
    known before loading (online, revision not cached, hub metadata unreachable)."""
    found = _identity_files(suite, ref)
    return None if found is None else identity_from_files(*found)


def identified(ref: SnapshotRef, identity: dict[str, Any] | None) -> dict[str, Any]:
    """``ref``'s record with its files' ``identity`` as ``source``: a snapshot as the partner checks
    compare it with the snapshots a store or a crosscoder records."""
    return {**ref.to_dict(), "source": identity}


def _identity_files(suite: SnapshotFiles, ref: SnapshotRef) -> tuple[dict[str, str], str | None] | None:
    """The hashes of the files that decide ``ref``'s activations, and the commit its revision
    resolves to (None for a local suite): from its folder on this machine (a local suite's, or the
    Hugging Face cache's), else from the hub's file metadata; None when neither can say."""
    local = suite.local_folder(ref)
    if local is not None:
        return _folder_files(local, revision=ref.revision, model_id=suite.model_id, hub=False), None
    repo, revision = suite.repo_revision(ref)
    cached = _cached_with_weights(repo, revision)
    if cached is not None:
        commit, folder = cached
        return _folder_files(folder, revision=revision, model_id=repo, hub=True), commit
    if hub_constants.HF_HUB_OFFLINE:
        raise uncached_revision_error(repo, revision)
    return _hub_files(repo, revision)


def snapshot_identities(suite: SnapshotFiles) -> list[dict[str, Any] | None]:
    """Each snapshot's :func:`snapshot_identity`, read before any model loads; refuses two
    snapshots with byte-identical weights."""
    identities = [snapshot_identity(suite, ref) for ref in suite.snapshots]
    first_with: dict[str, str] = {}
    for ref, identity in zip(suite.snapshots, identities):
        if identity is None:
            continue
        earlier = first_with.setdefault(identity["weights_digest"], ref.revision)
        if earlier != ref.revision:
            in_python = f"suite.select(steps=[...]) without step {ref.step}"
            drop = f"drop one, e.g. {in_python}"
            if suite.family == MODELS_FAMILY:
                drop = f"drop one: {drop_model_fix(suite.model_id, ref.revision, in_python)}"
            raise DuplicateSnapshotError(
                f"snapshots {earlier!r} and {ref.revision!r} of {suite.model_id} have identical weights "
                f"(byte-identical {', '.join(n for n in identity['files'] if n != 'config.json')}), so a crosscoder "
                f"would see no change between them; {drop}. Nothing was written.",
                revisions=(earlier, ref.revision),
                sha256=identity["weights_digest"],
            )
    return identities


@contextlib.contextmanager
def weight_file_errors(suite: SnapshotFiles, ref: SnapshotRef) -> Iterator[None]:
    """Turn a damaged weights file's raw loader error into one naming revision and file.

    The folder is looked up only once loading failed: a hub snapshot's cached folder may
    appear during the load itself."""
    try:
        yield
    except (SafetensorError, OSError, RuntimeError, EOFError) as error:
        folder = suite.snapshot_folder(ref)
        if folder is None:
            raise
        for path in weight_files(folder):
            problem = safetensors_problem(path) if path.name.endswith(".safetensors") else None
            if problem is not None or (path.name.endswith(".safetensors") and isinstance(error, SafetensorError)):
                raise corrupt_checkpoint_error(suite.model_id, ref.revision, path, problem or str(error)) from error
        if isinstance(error, SafetensorError) or "weights" in str(error).lower():
            names = ", ".join(p.name for p in weight_files(folder)) or "no weights file"
            raise corrupt_checkpoint_error(suite.model_id, ref.revision, folder, f"{names}: {error}") from error
        raise
