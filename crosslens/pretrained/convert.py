"""Convert a published crosscoder once, into crosslens's cache, and find it there afterwards.

The converted crosscoder is a folder in SAELens's layout under
``$CROSSLENS_HOME/pretrained/<key>/``::

    cfg.json                    the crosslens architecture's config, the metadata naming the source
    sae_weights.safetensors     the weights, written a block at a time
    source.json                 sealed: the source's format, repo, folder and commit, each source
                                file's size and sha256, the options and quirks, the weights' sha256
    README.md                   the model card: where it came from, under which licence, what changed

``<key>`` is the sha256 of the format, the source files' sha256, the conversion's options and the
provenance it records, so the same files convert to the same folder, and changed files (a re-pushed
repo) to another. The
folder is built under a temporary name and renamed into place, under a lock: a conversion that
fails or is killed leaves nothing a later load could mistake for a finished one.

A release in SAELens's layout with ``config_overrides`` is read as a folder (``crosslens pretrained
run``, ``--crosscoder RELEASE/ID``) from ``$CROSSLENS_HOME/pretrained/overrides-<key>/``
(:func:`overridden_folder`): its weights, and its cfg.json updated by the overrides as SAELens's
loader updates it, so that the folder reads as ``load_pretrained`` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from crosslens.core.errors import DamagedCrosscoderError
from crosslens.core.hashing import file_sha256, json_sha256, remembered_file_sha256
from crosslens.core.locks import exclusive_lock
from crosslens.core.metadata import CFG_NAME, WEIGHTS_NAME
from crosslens.core.paths import crosslens_home
from crosslens.core.sealed import read_sealed, write_sealed
from crosslens.core.staging import staged_folder
from crosslens.pretrained.formats import FORMATS, SourceFiles
from crosslens.pretrained.tensors import Converted, ConvertOptions, write_safetensors

CONVERTER_VERSION = 1
"""Bumped when a conversion's output changes for the same input: old folders are then not reused."""
SOURCE_RECORD = "source.json"
SOURCE_KEY = "source_sha256"
CARD_NAME = "README.md"


def converted_root() -> Path:
    """Where converted crosscoders live: ``$CROSSLENS_HOME/pretrained``."""
    return crosslens_home() / "pretrained"


def conversion_key(files: SourceFiles, hashes: dict[str, str], options: ConvertOptions, provenance: dict) -> str:
    """What decides a converted folder's bytes: the format, the files, the options, and the provenance
    its metadata records (the release, and the file identities of the models it was checked against)."""
    return json_sha256(
        {
            "format": files.format,
            "files": hashes,
            "options": dataclasses.asdict(options),
            "provenance": provenance,
            "version": CONVERTER_VERSION,
        }
    )


def convert_once(
    files: SourceFiles,
    options: ConvertOptions,
    *,
    provenance: dict[str, Any],
    card: Callable[[dict[str, Any]], str],
) -> Path:
    """The converted folder of ``files`` (see the module docstring), converting it if the cache has
    none. ``provenance`` (source, release, licence, suite) goes into source.json and the metadata;
    ``card(record)`` writes the model card from the finished source record."""
    hashes = {files.config.name: file_sha256(files.config), files.weights.name: file_sha256(files.weights)}
    key = conversion_key(files, hashes, options, provenance)
    target = converted_root() / key[:40]

    def write(scratch: Path) -> None:
        record = _write(scratch, files, hashes, key, options, provenance)
        (scratch / CARD_NAME).write_text(card(record), encoding="utf-8")

    return _build_once(target, lambda folder: _finished(folder, key), write)


def overridden_folder(folder: Path, overrides: Mapping[str, Any]) -> Path:
    """``folder`` (a crosscoder in SAELens's layout) with its cfg.json's top-level keys replaced by
    ``overrides``, as SAELens's loader applies a release's ``config_overrides``: built once under
    crosslens's cache, the weights hard-linked (copied across disks), keyed by the cfg's and weights'
    sha256 and the overrides, so a re-pushed release or other overrides get another folder."""
    cfg_path, weights = folder / CFG_NAME, folder / WEIGHTS_NAME
    key = json_sha256(
        {
            "cfg": remembered_file_sha256(cfg_path),
            "weights": remembered_file_sha256(weights),
            "overrides": dict(overrides),
        }
    )
    target = converted_root() / f"overrides-{key[:40]}"

    def write(scratch: Path) -> None:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg.update(overrides)
        (scratch / CFG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
        link_or_copy(weights, scratch / WEIGHTS_NAME)

    return _build_once(target, _complete, write)


def _build_once(target: Path, done: Callable[[Path], bool], write: Callable[[Path], None]) -> Path:
    """``target``, built by ``write`` unless ``done(target)`` already holds: into a staged folder
    (:func:`~crosslens.core.staging.staged_folder`), under a lock beside it so that processes that
    race build it once. A folder there that is not done is never trusted, and is replaced."""
    if done(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.with_name(target.name + ".lock")):
        if done(target):  # another process built it while this one waited
            return target
        with staged_folder(target) as scratch:
            write(scratch)
    return target


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds a crosscoder (it is renamed into place only once it does)."""
    return all((folder / name).is_file() for name in (CFG_NAME, WEIGHTS_NAME))


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the two share a disk (a converted Gemma crosscoder is 600 MB), else a copy."""
    try:
        os.link(Path(source).resolve(), target)
    except OSError:
        shutil.copy2(source, target)


def _write(
    folder: Path, files: SourceFiles, hashes: dict[str, str], key: str, options: ConvertOptions, provenance: dict
) -> dict[str, Any]:
    converted: Converted = FORMATS[files.format].convert(files.config, files.weights, options)
    converted.check_shapes(str(files.weights))
    weights_sha256 = write_safetensors(folder / WEIGHTS_NAME, converted.tensors)
    source = {
        "format": files.format,
        **provenance.get("source", {}),
        "files": {name: {"sha256": sha, "bytes": _size(files, name)} for name, sha in hashes.items()},
    }
    metadata = {key: value for key, value in converted.metadata.items() if value is not None}
    metadata.update(provenance.get("metadata", {}))
    metadata["pretrained_source"] = source
    cfg = converted.cfg_dict(metadata)
    (folder / CFG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    record = {
        "key": key,
        "converter_version": CONVERTER_VERSION,
        "source": source,
        "options": dataclasses.asdict(options),
        "quirks": converted.quirks,
        "architecture": converted.architecture,
        "sizes": {"n_snapshots": converted.n_snapshots, "d_in": converted.d_in, "d_sae": converted.d_sae},
        "weights_sha256": weights_sha256,
        **{name: value for name, value in provenance.items() if name not in ("source", "metadata")},
    }
    return write_sealed(folder / SOURCE_RECORD, record, SOURCE_KEY)


def _size(files: SourceFiles, name: str) -> int:
    return (files.config if files.config.name == name else files.weights).stat().st_size


def _finished(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds a finished conversion of ``key`` (its sealed record verifies)."""
    if not (folder / SOURCE_RECORD).is_file():
        return False
    try:
        record = read_sealed(folder / SOURCE_RECORD, SOURCE_KEY)
    except ValueError:
        return False
    return record.get("key") == key and all((folder / name).is_file() for name in (CFG_NAME, WEIGHTS_NAME))


def source_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The sealed source record of a converted folder (a damaged one is refused, naming the fix)."""
    path = Path(folder) / SOURCE_RECORD
    try:
        return read_sealed(path, SOURCE_KEY)
    except (OSError, ValueError) as error:
        raise DamagedCrosscoderError(
            f"{path} is missing or damaged ({error}); delete {Path(folder)} and load the release again"
        ) from None
