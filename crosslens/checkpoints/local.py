"""Local suites: which folder holds which snapshot.

Three layouts are understood, tried in this order:

1. ``<root>/suite.json`` (the format in docs/DESIGN.md) naming the snapshots, each in
   ``<root>/<revision>/`` (or in the folder a snapshot's optional ``"path"`` gives,
   relative to the root);
2. a Hugging Face cache repo folder (``models--ORG--NAME`` with ``refs/`` and
   ``snapshots/``): every ref except ``main`` is a snapshot;
3. sub-folders holding a ``config.json`` whose names carry the step (``step1000``,
   ``global_step1000``, ``step1000-tokens4B``, ``checkpoint-500``), sorted by step. A name
   without such a marker is read by its first integer (``000100/``) only when no folder has
   one: beside ``step0/`` and ``step128/``, a ``backup_v2/`` is refused rather than taken as
   step 2.

Names of staged runs (``stage1-step...``, ``stage2-ingredient1-step...``) in layouts 2 and 3
are placed on the training trajectory (`crosslens.checkpoints.trajectory`) while they are all of
stage 1. A later stage starts where stage 1 ended, which only the repo's whole list of revisions
says (a folder may hold any of stage 1's): it is refused there, and a ``suite.json`` gives each
snapshot's step along the whole run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from crosslens.checkpoints.snapshot import SnapshotRef, has_step_marker, parse_step
from crosslens.checkpoints.trajectory import StageStart, place_on_trajectory
from crosslens.core.bounds import whole_number
from crosslens.core.errors import CrosslensError

SUITE_FILE = "suite.json"
"""A local suite's manifest: its snapshots (revision, step) and, for a pico suite, how it was built."""


@dataclass(frozen=True)
class LocalLayout:
    """Where a local suite's snapshots live."""

    model_id: str
    """The suite's name: suite.json's ``model_id``, ``ORG/NAME`` for a cache repo, else the folder name."""
    snapshots: tuple[SnapshotRef, ...]
    """Snapshots ordered by step."""
    folders: dict[str, Path]
    """Revision -> folder holding that snapshot's HF checkpoint."""
    stage_starts: dict[int, StageStart] = field(default_factory=dict)
    """For folders named by training stage (``stage2-ingredient1-step...``): where each later stage starts."""


def scan_local_suite(root: str | Path) -> LocalLayout:
    """Read the layout of the local suite at `root` (see the module docstring)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"local suite folder {root} {what}; pass the folder holding the snapshots")
    if (root / SUITE_FILE).is_file():
        layout = _from_suite_file(root)
    elif (root / "refs").is_dir() and (root / "snapshots").is_dir():
        layout = _from_cache_repo(root)
    else:
        layout = _from_step_folders(root)
    for revision, folder in layout.folders.items():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"snapshot {revision!r} of the local suite at {root} has no config.json in {folder}; "
                "each snapshot folder must be a complete Hugging Face checkpoint (save_pretrained)"
            )
    return layout


def _ordered(refs: list[SnapshotRef], root: Path) -> tuple[SnapshotRef, ...]:
    refs = sorted(refs, key=lambda ref: ref.step)
    for earlier, later in zip(refs, refs[1:]):
        if earlier.step == later.step:
            raise ValueError(
                f"local suite {root} has two snapshots at step {later.step} ({earlier.revision!r} and "
                f"{later.revision!r}); keep one of them"
            )
    return tuple(
        SnapshotRef(index=i, revision=r.revision, step=r.step, tokens_seen=r.tokens_seen) for i, r in enumerate(refs)
    )


def _from_suite_file(root: Path) -> LocalLayout:
    path = root / SUITE_FILE
    form = 'write {"model_id": NAME, "snapshots": [{"revision": FOLDER, "step": N}, ...]}'
    try:
        spec = json.loads(path.read_text())
    except ValueError as error:  # not JSON, or not UTF-8 text
        raise ValueError(f"{path} is not JSON ({error}); fix it, or {form}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path} holds a {type(spec).__name__}, not an object; {form}")
    entries = spec.get("snapshots")
    if not entries:
        raise ValueError(f"{path} lists no snapshots; add a 'snapshots' list of {{'revision', 'step'}} entries")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'snapshots' must be a list of {{'revision', 'step'}} entries; {form}")
    refs, folders = [], {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: snapshot entry {entry!r} is not an object; write {{'revision', 'step'}}")
        if "revision" not in entry:
            raise ValueError(f"{path}: snapshot entry {entry} has no 'revision'; add the folder name")
        revision = str(entry["revision"])
        step = entry.get("step", parse_step(revision))
        if step is None:
            raise ValueError(f"{path}: snapshot {revision!r} has no 'step' and none is in its name; add one")
        tokens_seen = entry.get("tokens_seen")
        for field_name, value in (("step", step), ("tokens_seen", tokens_seen)):
            if value is not None and whole_number(value) is None:
                raise ValueError(
                    f"{path}: snapshot {revision!r} has {field_name!r} {value!r}; write it as a whole number "
                    f'(e.g. "{field_name}": 1000)'
                )
        refs.append(SnapshotRef(index=0, revision=revision, step=int(step), tokens_seen=tokens_seen))
        folder = entry.get("path", revision)
        if not isinstance(folder, str) or not folder:
            raise ValueError(
                f"{path}: snapshot {revision!r} has 'path' {folder!r}; write it as the snapshot's folder, "
                f'relative to {root} or absolute (e.g. "path": "{revision}")'
            )
        folders[revision] = root / folder
    return LocalLayout(model_id=str(spec.get("model_id", root.name)), snapshots=_ordered(refs, root), folders=folders)


def _from_cache_repo(root: Path) -> LocalLayout:
    model_id = root.name.removeprefix("models--").replace("--", "/")
    folders = {}
    for ref_file in sorted((root / "refs").iterdir()):
        if not ref_file.is_file() or parse_step(ref_file.name) is None:
            continue
        folders[ref_file.name] = root / "snapshots" / ref_file.read_text().strip()
    if not folders:
        raise ValueError(f"the cached repo {root} has no refs named by step (like 'step1000'); nothing to load")
    refs, starts = place_on_trajectory(list(folders), family="local", model_id=model_id)
    return LocalLayout(model_id=model_id, snapshots=_ordered(refs, root), folders=folders, stage_starts=starts)


def _from_step_folders(root: Path) -> LocalLayout:
    folders = {}
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and (folder / "config.json").is_file() and parse_step(folder.name) is not None:
            folders[folder.name] = folder
    if not folders:
        raise ValueError(
            f"found no snapshots in {root}: expected a {SUITE_FILE}, or sub-folders named by step "
            "(step0/, step1000/, ...) each holding a Hugging Face checkpoint"
        )
    marked = [name for name in folders if has_step_marker(name)]
    unmarked = [name for name in folders if not has_step_marker(name)]
    if marked and unmarked:
        named = ", ".join(marked[:3]) + (", ..." if len(marked) > 3 else "")
        raise CrosslensError(
            f"{root} has snapshot folders named by step ({named}) and checkpoint folders "
            f"whose names only hold a number ({', '.join(unmarked)}), which would be read as that step; move "
            f"those out of {root}, or list the snapshots in a {SUITE_FILE}"
        )
    refs, starts = place_on_trajectory(list(folders), family="local", model_id=root.name)
    return LocalLayout(model_id=root.name, snapshots=_ordered(refs, root), folders=folders, stage_starts=starts)
