"""A run folder has one writer, and its results are trusted only as the set they were written as.

Lock. The process training into a folder holds an exclusive lock on ``RUN/train.lock``
(:mod:`crosslens.core.locks`: the OS drops it however the process ends). A second run into
the same folder is refused, naming the holder, and readers refuse a folder being written.

Seal. When a run ends, ``RUN/crosslens_run.json`` records the sha256 of ``run.json``, of
``final/``'s sealed record (which hashes the crosscoder's own files, see
:mod:`crosslens.training.records`) and of ``quality.json`` once it is written; the record is
sealed by its own checksum (:mod:`crosslens.core.sealed`). A run removes the seal before it
writes anything, so a folder whose writer was stopped or killed has none. Readers
(``evaluate``, ``analyze``, ``report``, ``attribute``, ``push``) call :func:`check_run` and
refuse a folder whose seal is missing or broken, or whose files are not the ones it names.

Start. A new run may start only where no other run's results are (:func:`check_run_start`):
``overwrite`` removes them first, ``resume`` continues the newest verified checkpoint or
finds the run finished.

Read. The commands read a finished run through the functions at the end: its crosscoder
(:func:`crosscoder_folder`), the store it trained on, checked against the seal ``run.json``
records (:func:`run_store`), the harvest that rewrites a streamed run's tokens, and the report
sections other commands save into it. Each checks the folder's seal first.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crosslens.core.paths as core_paths
from crosslens.activations.partners import harvest_processing_flags, harvest_words, store_seal
from crosslens.activations.store import MANIFEST_NAME, ActivationStore
from crosslens.core.errors import CrosslensError, PartnerMismatchError, keyword_and_flag
from crosslens.core.hashing import file_sha256
from crosslens.core.locks import exclusive_lock, lock_holder
from crosslens.core.metadata import CFG_NAME, saved_metadata, unmeasured_norm_factors
from crosslens.core.paths import (
    FINAL_DIRNAME,
    QUALITY_NAME,
    REPORT_NAME,
    RUN_CONFIG_NAME,
    RUN_LOCK_NAME,
    RUN_SEAL_KEY,
    RUN_SEAL_NAME,
    SECTIONS_DIR,
    TRAIN_LOG_NAME,
    TRAINED_ROWS_NAME,
    checkpoint_folders,
    checkpoint_step,
    folder_bytes,
)
from crosslens.core.sealed import (
    BrokenSealError,
    UnreadableRecordError,
    read_sealed,
    write_json_atomically,
    write_sealed,
)
from crosslens.core.units import format_bytes
from crosslens.training.config import RUN_STORE_SEAL, RUN_STREAM, checkpoints_on_disk
from crosslens.training.records import RECORD_NAME, record_problem

RUN_SEAL_FORMAT = "crosslens.run/1"
FINAL_RECORD = f"{FINAL_DIRNAME}/{RECORD_NAME}"
OPTIONAL_SEALED = (QUALITY_NAME, TRAINED_ROWS_NAME)
"""Files a run seals when it wrote them: the quality table, and a streamed run's row digests."""
FINISH_HINT = (
    "finish it with `crosslens train --resume` and the flags it was started with, or train again with --overwrite"
)
RESUME = keyword_and_flag("resume=True", "--resume")
OVERWRITE = keyword_and_flag("overwrite=True", "--overwrite")
OTHER_OUT = f"another {keyword_and_flag('out_dir', '--out')}"
"""The run-start refusals' fixes, as the runner's ``run()`` and ``crosslens train`` both take them."""


class RunFolderLockedError(CrosslensError):
    """Another process is writing the run folder."""


class UnsealedRunError(CrosslensError):
    """A run folder's results are not the finished, sealed set of one run."""


class RunFolderInUseError(CrosslensError):
    """Starting here would replace or mix with another run's results."""


_HELD: set[Path] = set()
"""Run folders whose lock this process holds (a second flock from the same process would block)."""
_VERIFIED: dict[Path, tuple] = {}
"""Run folders already checked, by the sizes and times of the files checked: hashing a large
crosscoder once per command is enough."""


@contextmanager
def owned_run_folder(run_dir: str | Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock (creating the folder) for the ``with`` block; refuse when another
    process holds it. Re-entrant within a process; ``enabled=False`` (torchrun ranks other than
    0, whose rank 0 holds it) does nothing."""
    run_dir = Path(run_dir).resolve()
    if not enabled or run_dir in _HELD:
        yield
        return

    def refuse(holder: str) -> None:
        raise RunFolderLockedError(
            f"another crosslens train ({holder}) is writing {run_dir}; wait for it to finish, or pick {OTHER_OUT}"
        )

    with exclusive_lock(run_dir / RUN_LOCK_NAME, on_busy=refuse):
        _HELD.add(run_dir)
        try:
            yield
        finally:
            _HELD.discard(run_dir)


def check_not_being_written(run_dir: str | Path) -> None:
    """Refuse a run folder another process is training into right now."""
    run_dir = Path(run_dir)
    if run_dir.resolve() in _HELD:
        return
    holder = lock_holder(run_dir / RUN_LOCK_NAME)
    if holder is not None:
        raise RunFolderLockedError(f"{run_dir} is being written by {holder} (a crosslens train); wait for it to finish")


# --------------------------------------------------------------------------- the seal
def seal_run(run_dir: str | Path) -> Path:
    """Seal ``run.json``, ``final/``'s record, and ``quality.json`` and the row digests (when
    written) together."""
    run_dir = Path(run_dir)
    names = [RUN_CONFIG_NAME, FINAL_RECORD] + [name for name in OPTIONAL_SEALED if (run_dir / name).is_file()]
    files = {name: file_sha256(run_dir / name) for name in names}
    write_sealed(run_dir / RUN_SEAL_NAME, {"format": RUN_SEAL_FORMAT, "files": files}, RUN_SEAL_KEY)
    return run_dir / RUN_SEAL_NAME


def run_problem(run_dir: str | Path) -> str | None:
    """Why ``run_dir`` is not a finished run whose files are the ones it sealed (None when it is)."""
    run_dir = Path(run_dir)
    seal = run_dir / RUN_SEAL_NAME
    if not seal.is_file():
        return f"{seal} is missing: the run there did not finish (stopped, killed, or another run started since)"
    try:
        files = read_sealed(seal, RUN_SEAL_KEY).get("files") or {}
    except UnreadableRecordError:
        return f"{seal} is not valid JSON"
    except BrokenSealError:
        return f"{seal} fails its own checksum"
    for name in (RUN_CONFIG_NAME, FINAL_RECORD):
        if name not in files:
            return f"{seal} does not name {name}"
    for name, sha256 in sorted(files.items()):
        path = run_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if file_sha256(path) != sha256:
            return f"{path} is not the file the run was sealed with (another run wrote it, or it was edited)"
    problem = record_problem(run_dir / FINAL_DIRNAME)
    if problem is not None:
        return f"{run_dir / FINAL_DIRNAME}: {problem}"
    for name in OPTIONAL_SEALED:
        if name not in files and (run_dir / name).exists():
            return f"{run_dir / name} was not sealed with the run (another run wrote it)"
    return None


def _signature(run_dir: Path) -> tuple:
    paths = [run_dir / RUN_SEAL_NAME, run_dir / RUN_CONFIG_NAME, *(run_dir / name for name in OPTIONAL_SEALED)]
    paths += sorted((run_dir / FINAL_DIRNAME).glob("*"))
    stats = [(str(p), p.stat()) if p.exists() else (str(p), None) for p in paths]
    return tuple((name, None if st is None else (st.st_size, st.st_mtime_ns)) for name, st in stats)


def finished_run_problem(run_dir: Path) -> str | None:
    """Why ``run_dir`` is not the folder of a run whose training finished (no folder, or no final
    crosscoder), naming the fix; None where it is. :func:`check_run` checks its seal after."""
    if not run_dir.is_dir():
        return f"{run_dir} is not a folder; pass the --out folder of `crosslens train`"
    if (run_dir / CFG_NAME).is_file() and (run_dir.parent / RUN_CONFIG_NAME).is_file():
        # RUN/final (or a checkpoint's folder) given for its run
        return (
            f"{run_dir} is a crosscoder's folder inside the run {run_dir.parent}; pass the run folder {run_dir.parent}"
        )
    if (run_dir / MANIFEST_NAME).is_file():
        return f"{run_dir} is an activation store, not a training run; pass the --out folder of `crosslens train`"
    if not (run_dir / RUN_CONFIG_NAME).is_file() and not (run_dir / RUN_SEAL_NAME).is_file():
        return (
            f"{run_dir} holds no trained crosscoder (no {RUN_CONFIG_NAME}: it is no training run's folder); "
            "pass the --out folder of a finished `crosslens train`"
        )
    if not (run_dir / FINAL_DIRNAME / CFG_NAME).is_file():
        return (
            f"{run_dir} has no final crosscoder ({FINAL_DIRNAME}/{CFG_NAME}); finish its training with "
            "`crosslens train --resume` and the flags it was started with, or pass the --out folder of a finished run"
        )
    return None


def norm_factors_problem(run_dir: Path) -> str | None:
    """Why the crosscoder of ``run_dir`` cannot read activations yet: a release's, whose source scaled
    them by per-snapshot factors it did not save, none measured since; the message names the
    command that measures them into the run. None where it can read them."""
    if not unmeasured_norm_factors(saved_metadata(run_dir / FINAL_DIRNAME)):
        return None
    try:
        made = json.loads((run_dir / RUN_CONFIG_NAME).read_text(encoding="utf-8")).get("pretrained") or {}
    except (OSError, ValueError, AttributeError):
        made = {}
    release = "/".join(str(made[k]) for k in ("release", "crosscoder_id") if made.get(k)) or "RELEASE"
    return (
        f"the crosscoder in {run_dir / FINAL_DIRNAME} reads activations scaled by per-snapshot factors its source "
        f"did not save, and none were measured; make the run again with them measured on a store of its models: "
        f"crosslens pretrained run {release} --out {run_dir} --store STORE --overwrite "
        "(in Python, release_run(..., store=STORE))"
    )


def check_run(run_dir: str | Path) -> None:
    """Refuse a run folder being written, or one that is not a finished, sealed run, naming the file."""
    run_dir = Path(run_dir)
    check_not_being_written(run_dir)
    key, signature = run_dir.resolve(), _signature(run_dir)
    if _VERIFIED.get(key) == signature:
        return
    problem = run_problem(run_dir)
    if problem is not None:
        raise UnsealedRunError(f"{problem}. The run in {run_dir} cannot be trusted: {FINISH_HINT}.")
    _VERIFIED[key] = signature


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is (or was started as) a ``crosslens train`` run folder."""
    folder = Path(folder)
    return (folder / RUN_CONFIG_NAME).is_file() or (folder / RUN_SEAL_NAME).is_file()


def enclosing_run(crosscoder_dir: str | Path) -> Path | None:
    """The run folder a crosscoder folder is the ``final/`` of (None: it stands alone)."""
    crosscoder_dir = Path(crosscoder_dir)
    parent = crosscoder_dir.resolve().parent
    return parent if crosscoder_dir.resolve().name == FINAL_DIRNAME and is_run_folder(parent) else None


# --------------------------------------------------------------------------- starting a run
@dataclass(frozen=True)
class RunFolderState:
    """What a run folder holds before a run starts in it."""

    finished: bool
    """Its seal verifies: a finished run."""
    checkpoint: Path | None
    """The newest checkpoint that verifies (None when finished, or none does)."""
    leftovers: tuple[str, ...]
    """Names of results a run leaves (final/, quality.json, checkpoints, the seal, sections)."""

    @property
    def step(self) -> int | None:
        return None if self.checkpoint is None else checkpoint_step(self.checkpoint.name)


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Remove every checkpoint of ``run_dir`` but the newest ``keep`` (0: remove none); returns the
    removed folders."""
    if keep < 1:
        return []
    removed = checkpoint_folders(run_dir)[:-keep]
    for folder in removed:
        shutil.rmtree(folder)
    return removed


def checkpoint_space_problem(
    run_dir: str | Path, bytes_each: int, final_bytes: int, *, to_write: int, keep: int
) -> str | None:
    """Why ``run_dir``'s disk cannot hold the rest of a run, or None: ``to_write`` more checkpoints of
    ``bytes_each``, the newest ``keep`` kept (0: every one) and one more while it is written, then
    the final crosscoder. The checkpoints already there count towards those kept."""
    there = checkpoint_folders(run_dir)
    there_bytes = sum(folder_bytes(p) for p in there)
    kept, at_once = checkpoints_on_disk(len(there) + to_write, keep)
    if keep:
        needed = max(at_once * bytes_each, kept * bytes_each + final_bytes) - there_bytes
    else:
        needed = to_write * bytes_each + final_bytes
    free = core_paths.free_disk(Path(run_dir))  # looked up at the call: tests give it a disk of their own
    if free is None or free >= needed:
        return None
    return (
        f"the disk of {run_dir} has {format_bytes(free)} free, and the run's checkpoints need about "
        f"{format_bytes(needed)} more ({at_once} checkpoints of {format_bytes(bytes_each)} at once, and the final "
        f"crosscoder); free space there, train into {OTHER_OUT}, or keep fewer checkpoints "
        f"({keyword_and_flag('keep_checkpoints', '--keep-checkpoints')}, "
        f"{keyword_and_flag('checkpoint_every', '--checkpoint-every')})"
    )


def newest_verified_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose sealed record verifies (older ones are tried in turn)."""
    for folder in reversed(checkpoint_folders(run_dir)):
        problem = record_problem(folder)
        if problem is None:
            return folder
        print(f"checkpoint {folder} cannot be trusted ({problem}); trying the one before it", file=sys.stderr)
    return None


def _is_result(path: Path) -> bool:
    return path.name in (RUN_SEAL_NAME, *OPTIONAL_SEALED, FINAL_DIRNAME, SECTIONS_DIR, REPORT_NAME) or (
        checkpoint_step(path.name) is not None
    )


def run_folder_state(run_dir: str | Path) -> RunFolderState:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return RunFolderState(False, None, ())
    leftovers = tuple(p.name + ("/" if p.is_dir() else "") for p in sorted(run_dir.iterdir()) if _is_result(p))
    finished = (run_dir / RUN_SEAL_NAME).is_file() and run_problem(run_dir) is None
    checkpoint = None if finished or not leftovers else newest_verified_checkpoint(run_dir)
    return RunFolderState(finished, checkpoint, leftovers)


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def refuse_store_folder(run_dir: str | Path, fix: str = f"train into {OTHER_OUT}") -> None:
    """Refuse a run folder that is an activation store (it holds the store's manifest): a run's files
    would mix with the store's, and ``--overwrite`` clears a run's results, never a store."""
    if (Path(run_dir) / MANIFEST_NAME).is_file():
        raise RunFolderInUseError(f"{run_dir} is an activation store (it holds {MANIFEST_NAME}); {fix}")


def check_run_start(run_dir: str | Path, *, resume: bool, overwrite: bool) -> RunFolderState:
    """What ``run_dir`` holds, after refusing a start that would lose or mix another run's results:
    a new run needs a folder without them (or ``overwrite``); ``resume`` needs a checkpoint or a
    finished run, or a folder without results (it then starts from scratch)."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunFolderInUseError(
            f"{RESUME} continues the run in {keyword_and_flag('out_dir', '--out')} and {OVERWRITE} removes it: "
            "pass one of them"
        )
    refuse_store_folder(run_dir)
    state = run_folder_state(run_dir)
    if overwrite or not state.leftovers:
        return state
    if state.finished:
        if resume:
            return state
        raise RunFolderInUseError(
            f"{run_dir} holds a finished run; pass {RESUME} to take it as it is, {OVERWRITE} to train a new one "
            f"in its place, or pick {OTHER_OUT}"
        )
    if state.checkpoint is not None:
        if resume:
            return state
        raise RunFolderInUseError(
            f"{run_dir} holds a run at step {state.step}; pass {RESUME} to continue or {OVERWRITE} to start again"
        )
    if resume:
        raise RunFolderInUseError(
            f"{RESUME}: {run_dir} holds a run's results ({_listed(state.leftovers)}), but no checkpoint or finished "
            f"run in it verifies; pass {OVERWRITE} to remove them and start again, or pick {OTHER_OUT}"
        )
    raise RunFolderInUseError(
        f"{run_dir} holds another run's results ({_listed(state.leftovers)}) and no checkpoint to continue; "
        f"pass {OVERWRITE} to remove them and start again, or pick {OTHER_OUT}"
    )


def clear_run_results(run_dir: str | Path, *, everything: bool) -> None:
    """Remove the seal and ``quality.json`` (they describe a crosscoder about to be replaced); with
    ``everything``, also ``run.json``, the run log, ``final/``, the checkpoints, report sections and
    the report.
    Whatever else is in the folder (a recipe's ``activations/`` store) stays."""
    run_dir = Path(run_dir)
    (run_dir / RUN_SEAL_NAME).unlink(missing_ok=True)  # first: a folder half cleared is never sealed
    if not run_dir.is_dir():
        return
    for path in sorted(run_dir.iterdir()):
        if path.name == QUALITY_NAME or (
            everything and (path.name in (RUN_CONFIG_NAME, TRAIN_LOG_NAME) or _is_result(path))
        ):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


# --------------------------------------------------------------------------- reading a finished run
def crosscoder_folder(path: str | Path) -> Path:
    """The saved crosscoder inside a ``crosslens train`` run folder (``RUN_DIR/final``), or ``path``
    itself when it holds one (``cfg.json``); a run's crosscoder only once the run is sealed."""
    path = Path(path)
    if (path / FINAL_DIRNAME / CFG_NAME).is_file() or is_run_folder(path):
        check_run(path)
        return path / FINAL_DIRNAME
    if (path / CFG_NAME).is_file():
        run = enclosing_run(path)
        if run is not None:
            check_run(run)
        return path
    raise FileNotFoundError(
        f"{path} holds no trained crosscoder (no {CFG_NAME}, nor {FINAL_DIRNAME}/{CFG_NAME}); pass the --out folder of "
        "`crosslens train` or its final/ folder"
    )


def run_folder(crosscoder_path: str | Path) -> Path | None:
    """The ``crosslens train`` run folder a crosscoder folder belongs to (None if it is not in one),
    once its seal verifies."""
    path = Path(crosscoder_path)
    for candidate in (path, path.parent):
        if is_run_folder(candidate):
            check_run(candidate)
            return candidate
    return None


def is_final_crosscoder(folder: str | Path, run_dir: Path) -> bool:
    """Whether ``folder`` is the final crosscoder of the run in ``run_dir`` (not one of its
    checkpoints): the one the run's report and its saved sections describe."""
    return Path(folder).resolve() == (run_dir / FINAL_DIRNAME).resolve()


def run_store(run_dir: Path | None) -> str | None:
    """The activation store a run trained on, from its run.json (None when it names none, or the
    store is gone). The store found there must carry the seal run.json recorded: a path alone
    (another store written there since, a relative path read from another folder) decides nothing."""
    if run_dir is None:
        return None
    check_run(run_dir)
    try:
        values = json.loads((run_dir / RUN_CONFIG_NAME).read_text())
        store, sealed = values.get("store_path"), values.get(RUN_STORE_SEAL)
    except (OSError, ValueError, AttributeError):
        return None
    if not store or not Path(store).exists():
        return None
    fix = "pass --store with the store it was trained on"
    if not sealed:
        raise PartnerMismatchError(
            f"{run_dir / RUN_CONFIG_NAME} names the store {store} but records no seal for it, so it cannot be told from "
            f"another store at that path; {fix}"
        )
    found = store_seal(ActivationStore.open(store, verify="none"))
    if found != sealed:
        raise PartnerMismatchError(
            f"the store at {store} is not the one the run {run_dir} trained on (content {found['content_sha256'][:12]}... "
            f"vs {str(sealed.get('content_sha256'))[:12]}... recorded in {RUN_CONFIG_NAME}); {fix}"
        )
    return store


def recorded_store(run_dir: Path | None) -> str | None:
    """The store path a run's run.json names, whether or not anything is there now."""
    try:
        return json.loads((run_dir / RUN_CONFIG_NAME).read_text()).get("store_path") or None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def streamed_store_command(run_dir: Path | None) -> str | None:
    """For a run trained with ``train --stream`` (its run.json's ``stream`` entry), the ``crosslens
    harvest`` command that writes a store of the tokens it trained on, from the same snapshots at
    the same hook, beside the run folder, with the weight processing its models were loaded with;
    None for a run trained on a store, or on models loaded with a processing no flag chooses. It
    names no ``--dtype``: the run recorded each snapshot's file identity, which a store of the same
    snapshots records too in whatever dtype it was harvested."""
    try:
        stream = json.loads((run_dir / RUN_CONFIG_NAME).read_text())[RUN_STREAM]  # type: ignore[operator]
        suite, tokens = stream["suite"], stream["tokens"]
        if harvest_processing_flags(suite) is None:  # the command would harvest other activations
            return None
        words = harvest_words(suite, suite.get("revisions") or [], suite["steps"], str(stream["hook"]))
        words += ["--n-tokens", str(int(stream["n_tokens"])), "--seq-len", str(int(stream["seq_len"]))]
        words += ["--heldout-tokens", str(int(stream["heldout_tokens"]))]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if tokens.get("kind") == "text":
        words += ["--text", *map(str, tokens["source"])]
        if tokens.get("encoding") is not None:
            words += ["--encoding", str(tokens["encoding"])]
    elif tokens.get("kind") == "dataset":
        words += ["--dataset", str(tokens["source"])]
    words += ["--out", str(Path(run_dir).resolve().with_name(Path(run_dir).resolve().name + "-store"))]  # type: ignore[arg-type]
    return shlex.join(words)


def kept_quality_table(runner: Any, eval_store: str | None) -> Path | None:
    """The quality table of a finished run that --resume found, which the run keeps unless
    --eval-store names where to measure it again; None when one is to be measured."""
    quality = Path(runner.out_dir) / QUALITY_NAME
    return quality if runner.finished_before and eval_store is None and quality.is_file() else None


def save_section(report: Any, run_dir: Path, name: str) -> Path:
    """Save a report section (anything with ``to_dict``) into ``run_dir/sections/NAME.json`` for
    ``crosslens report`` to merge."""
    path = run_dir / SECTIONS_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, report.to_dict())  # a write cut short leaves the old section, not half of one
    return path
