"""Which revisions a Hugging Face repo has: asked of the hub when online, read from the
local HF cache (or, for Pythia, crosslens's table of published steps) when offline."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants

from crosslens.checkpoints.schedules import PYTHIA_STEPS, PYTHIA_V0_STEPS
from crosslens.checkpoints.snapshot import parse_step, pythia_revision
from crosslens.checkpoints.trajectory import group_by_stage, trajectory_key
from crosslens.core.errors import CrosslensError
from crosslens.core.paths import crosslens_home, looks_like_path
from crosslens.core.sealed import write_json_atomically


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``)."""
    return bool(hub_constants.HF_HUB_OFFLINE)


def is_pythia(model_id: str) -> bool:
    return model_id.lower().startswith("eleutherai/pythia")


def pythia_steps_for(model_id: str) -> tuple[int, ...]:
    """The published steps of a Pythia repo (the ``-v0`` repos lack the early log steps)."""
    return PYTHIA_V0_STEPS if model_id.lower().endswith("-v0") or "-v0-" in model_id.lower() else PYTHIA_STEPS


def sort_by_step(revisions: list[str]) -> list[str]:
    """Revisions in training order: by step, staged names (``stage1-step...``,
    ``stage2-ingredient1-step...``) by stage, ingredient, then step; names without a step
    (``main``) are dropped."""
    with_steps = [r for r in revisions if parse_step(r) is not None]
    return sorted(with_steps, key=lambda r: (trajectory_key(r), r))


PYTHIA_NAME = re.compile(r"(?i)^eleutherai/pythia-(14m|31m|70m|160m|410m|1b|1\.4b|2\.8b|6\.9b|12b)(-[a-z0-9.-]+)?$")
"""Pythia's published sizes, with any suffix (``-deduped``, ``-v0``, ``-seed1``, ...): the
names whose revisions crosslens lists offline from its own table."""
PYTHIA_SIZES_HINT = tuple(
    f"EleutherAI/pythia-{size}" for size in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
)


_NETWORK_MODULES = ("httpx", "httpx2", "httpcore", "requests", "urllib3", "huggingface_hub")


def is_network_error(error: BaseException) -> bool:
    """Whether ``error`` is a failed request (no network, DNS, timeout, HTTP status): an
    ``OSError`` or an error of the HTTP clients huggingface_hub uses, which differ by version."""
    return isinstance(error, OSError) or any(
        cls.__module__.split(".")[0] in _NETWORK_MODULES for cls in type(error).__mro__
    )


def not_in_cache(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is huggingface_hub's "not in the local
    cache, and downloads are off" (transformers wraps it in an ``OSError`` of its own)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, LocalEntryNotFoundError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _cached_model_ids() -> list[str]:
    try:
        return [repo.repo_id for repo in huggingface_hub.scan_cache_dir(hub_constants.HF_HUB_CACHE).repos]
    except huggingface_hub.CacheNotFound:
        return []


def cached_revisions(model_id: str) -> list[str]:
    """Revisions of `model_id` present in the local HF cache, ordered by step
    (``huggingface_hub.scan_cache_dir``: the refs whose snapshot is in the cache)."""
    try:
        cache = huggingface_hub.scan_cache_dir(hub_constants.HF_HUB_CACHE)
    except huggingface_hub.CacheNotFound:
        return []
    folder = "models--" + model_id.replace("/", "--")
    damaged = [str(w) for w in cache.warnings if Path(str(w).rstrip(").").rsplit("(", 1)[-1]).name == folder]
    if damaged:  # the scan skips a repo it cannot read whole; say so rather than list nothing
        raise CrosslensError(
            f"the Hugging Face cache entry of {model_id} is damaged ({damaged[0]}); go online once "
            f"(unset HF_HUB_OFFLINE) to download it again, or delete {Path(hub_constants.HF_HUB_CACHE) / folder}"
        )
    refs = {
        ref
        for repo in cache.repos
        if repo.repo_type == "model" and repo.repo_id == model_id
        for revision in repo.revisions
        for ref in revision.refs
    }
    return sort_by_step(sorted(refs))


def hub_revisions(model_id: str) -> list[str]:
    """Branches of `model_id` on the hub (one request), ordered by step. A name the hub does
    not know, or a hub that cannot be reached, is a :class:`CrosslensError` saying what to do."""
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        refs = huggingface_hub.list_repo_refs(model_id)
    except HFValidationError:
        raise CrosslensError(
            f"{model_id!r} is neither a local folder nor a hub model id (ORG/NAME); check the name"
        ) from None
    except RepositoryNotFoundError:
        raise CrosslensError(
            f"the hub has no model {model_id!r} (or it is private: log in with `hf auth login`); check the name"
        ) from None
    except Exception as error:  # noqa: BLE001 - network errors come from whichever HTTP client the hub uses
        if not is_network_error(error):
            raise
        cached = cached_revisions(model_id)
        raise CrosslensError(
            f"cannot reach the Hugging Face hub to list the revisions of {model_id} ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:120]}); check the name and the network, or set HF_HUB_OFFLINE=1 "
            + (
                f"to use the {len(cached)} revisions in the local cache"
                if cached
                else "once the model is in the local cache"
            )
        ) from None
    return sort_by_step([branch.name for branch in refs.branches])


def list_revisions(model_id: str | os.PathLike) -> list[str]:
    """The checkpoint revisions of a hub repo or local suite, in training order (by step;
    staged names by stage, ingredient, then step).

    * a local folder: the snapshots of ``CheckpointSuite.local(path)``;
    * online: the repo's branches on the hub (``huggingface_hub.list_repo_refs``);
    * offline: crosslens's table for Pythia (``step0`` ... ``step143000``), else the
      revisions already in the local HF cache.

    Listing a staged run online remembers where each of its stages ends (`placing_revisions`).
    """
    if Path(model_id).expanduser().exists() or looks_like_path(str(model_id)):  # refused there if no folder
        from crosslens.checkpoints.local import scan_local_suite

        return [ref.revision for ref in scan_local_suite(Path(model_id)).snapshots]
    model_id = str(model_id)
    if not hub_offline():
        listed = hub_revisions(model_id)
        remember_stage_ends(model_id, listed)
        return listed
    if is_pythia(model_id) and PYTHIA_NAME.match(model_id):
        return [pythia_revision(step) for step in pythia_steps_for(model_id)]
    cached = cached_revisions(model_id)
    if not cached:
        known = [*_cached_model_ids(), *PYTHIA_SIZES_HINT]
        nearest = difflib.get_close_matches(model_id, known, n=3, cutoff=0.8)
        raise CrosslensError(
            f"offline (HF_HUB_OFFLINE=1) and {model_id} is not a known suite: none of its revisions are in the "
            f"Hugging Face cache at {hub_constants.HF_HUB_CACHE}"
            + (f" (did you mean {', '.join(nearest)}?)" if nearest else "")
            + "; check the name, go online once (unset HF_HUB_OFFLINE) to download it, or point HF_HOME at a "
            "cache that holds it"
        )
    return cached


def stage_ends_file(model_id: str) -> Path:
    """Where crosslens keeps the last revision of each stage of ``model_id``'s staged run, as the
    hub last listed them (``$CROSSLENS_HOME/stage-ends/ORG--NAME.json``)."""
    return crosslens_home() / "stage-ends" / (model_id.replace("/", "--") + ".json")


def stage_ends(revisions: Sequence[str]) -> list[str]:
    """The last revision of each stage, per ingredient, among ``revisions`` (none for unstaged names)."""
    return [members[-1] for heading, members in group_by_stage(sort_by_step(list(revisions))) if heading]


def remember_stage_ends(model_id: str, revisions: Sequence[str]) -> None:
    """Keep the stage ends among the hub's whole list of ``model_id``'s revisions, so that its
    stages are placed offline too, where the cache lists only the revisions downloaded."""
    ends = stage_ends(revisions)
    if not ends:
        return
    path = stage_ends_file(model_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two listings at once write apart
        write_json_atomically(path, {"model_id": model_id, "stage_ends": ends}, tmp=tmp)
    except OSError:  # a home that cannot be written: the listing stands, offline placement is refused
        return


def remembered_stage_ends(model_id: str) -> list[str] | None:
    """The stage ends the hub last listed for ``model_id`` (None when it was never listed online,
    or its record cannot be read)."""
    try:
        ends = json.loads(stage_ends_file(model_id).read_text())["stage_ends"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(end) for end in ends] if isinstance(ends, list) else None


def placing_revisions(model_id: str, listed: Sequence[str]) -> list[str] | None:
    """The revisions that say where each stage of ``model_id``'s staged run ends, for
    `crosslens.checkpoints.trajectory.stage_starts`: ``listed``, the hub's whole list online;
    offline, or online where the listing failed (``listed`` empty), the cached ones ``listed`` plus
    the stage ends the hub last listed. None where the hub never listed them."""
    if listed and not hub_offline():
        return list(listed)
    ends = remembered_stage_ends(model_id)
    return None if ends is None else [*listed, *ends]
