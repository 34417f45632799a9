"""Which revisions a Hugging Face repo has: asked of the hub when online, read from the
local HF cache (or, for Pythia, crosslens's table of published steps) when offline."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants

from crosslens.checkpoints.schedules import PYTHIA_STEPS, PYTHIA_V0_STEPS
from crosslens.checkpoints.snapshot import parse_step, pythia_revision
from crosslens.checkpoints.trajectory import trajectory_key
from crosslens.core.errors import CrosslensError


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
    """Branches of `model_id` on the hub (one request), ordered by step."""
    refs = huggingface_hub.list_repo_refs(model_id)
    return sort_by_step([branch.name for branch in refs.branches])


def list_revisions(model_id: str | os.PathLike) -> list[str]:
    """The checkpoint revisions of a hub repo or local suite, in training order (by step;
    staged names by stage, ingredient, then step).

    * a local folder: the snapshots of ``CheckpointSuite.local(path)``;
    * online: the repo's branches on the hub (``huggingface_hub.list_repo_refs``);
    * offline: crosslens's table for Pythia (``step0`` ... ``step143000``), else the
      revisions already in the local HF cache.
    """
    if Path(model_id).is_dir():
        from crosslens.checkpoints.local import scan_local_suite

        return [ref.revision for ref in scan_local_suite(Path(model_id)).snapshots]
    model_id = str(model_id)
    if not hub_offline():
        return hub_revisions(model_id)
    if is_pythia(model_id):
        return [pythia_revision(step) for step in pythia_steps_for(model_id)]
    cached = cached_revisions(model_id)
    if not cached:
        raise CrosslensError(
            f"offline (HF_HUB_OFFLINE=1) and no revisions of {model_id} are in the Hugging Face "
            f"cache at {hub_constants.HF_HUB_CACHE}; go online once (unset HF_HUB_OFFLINE) to "
            "download them, or point HF_HOME at a cache that holds them"
        )
    return cached
