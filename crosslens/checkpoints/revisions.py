"""Which revisions a request names: steps, ingredients and model names checked against
what a repo (or a suite) has, and errors that name the nearest revisions that exist."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import transformer_lens.loading_from_pretrained as tl_loading
from huggingface_hub.errors import RevisionNotFoundError

from crosslens.checkpoints.hub import hub_offline, is_pythia, list_revisions
from crosslens.checkpoints.identity import SnapshotFiles, fully_cached, uncached_revision_error
from crosslens.checkpoints.schedules import nearest_steps
from crosslens.checkpoints.snapshot import SnapshotRef, parse_step
from crosslens.checkpoints.trajectory import parse_ingredient
from crosslens.core.bounds import whole_number
from crosslens.core.errors import UnknownRevisionError

T = TypeVar("T")


def unknown_revision_error(
    model_id: str, revision: str, step: int | None, available: Sequence[str], *, in_suite: bool = False
) -> UnknownRevisionError:
    """An `UnknownRevisionError` for `revision`, listing the available revisions nearest
    by training step (`in_suite`: available are a suite's snapshots, not the repo's)."""
    steps = {parse_step(r): r for r in available if parse_step(r) is not None}
    if step is not None and steps:
        nearest = tuple(steps[s] for s in nearest_steps(step, list(steps)))
    else:
        nearest = tuple(available[:4])
    if in_suite:
        message = f"{revision!r} is not among this suite's {len(available)} snapshots of {model_id}"
        message += f"; nearest: {', '.join(nearest)}. The suite's revisions are in suite.revisions"
        return UnknownRevisionError(message, requested=revision, nearest=nearest)
    message = f"{revision!r} is not a checkpoint of {model_id}"
    message += f"; nearest: {', '.join(nearest)}" if nearest else "; it lists none"
    where = "the local Hugging Face cache" if hub_offline() and not is_pythia(model_id) else model_id
    message += f". See all {len(available)} in {where} with crosslens.checkpoints.list_revisions({model_id!r})"
    if hub_offline() and not is_pythia(model_id):
        message += " (offline: only cached revisions count; unset HF_HUB_OFFLINE to ask the hub)"
    return UnknownRevisionError(message, requested=revision, nearest=nearest)


def pythia_model_id(name: str) -> str:
    model_id = name if "/" in name else f"EleutherAI/{name}"
    if not is_pythia(model_id):
        raise ValueError(f"{name!r} is not a Pythia model; pass e.g. 'EleutherAI/pythia-160m'")
    try:
        return tl_loading.get_official_model_name(model_id)
    except ValueError:
        known = sorted(n for n in tl_loading.OFFICIAL_MODEL_NAMES if is_pythia(n))
        raise ValueError(f"TransformerLens has no checkpoint support for {model_id}; use one of {known}") from None


def check_whole_numbers(values: Any, name: str, what: str) -> None:
    """Refuse ``values`` unless it is a list of whole numbers (ints, NumPy integers; no bools): a
    bare number, a string, or a float among them, with ``name=`` and ``what`` it should hold."""
    if isinstance(values, (int, str)) or any(whole_number(v) is None for v in values):
        raise ValueError(f"{name} {values!r}: give a list of {what}")


def checked_steps(
    steps: Sequence[int],
    available: Sequence[int],
    model_id: str,
    revision_of: Callable[[int], str],
    *,
    in_suite: bool = False,
) -> list[int]:
    """`steps` sorted, each checked to be in `available` (the repo's, or the suite's)."""
    check_whole_numbers(steps, "steps", "whole training steps, e.g. steps=[0, 1000]")  # int(10.7) is step 10
    chosen = sorted(int(s) for s in steps)
    if len(set(chosen)) != len(chosen):
        raise ValueError(
            f"steps {sorted(s for s in set(chosen) if chosen.count(s) > 1)} are listed twice; list each once"
        )
    known = set(available)
    for step in chosen:
        if step not in known:
            raise unknown_revision_error(
                model_id, revision_of(step), step, [revision_of(s) for s in available], in_suite=in_suite
            )
    if not chosen:
        raise ValueError("steps is empty; pass at least one step")
    return chosen


def refs_at_steps(steps: Sequence[int], refs: Sequence[SnapshotRef], model_id: str) -> list[SnapshotRef]:
    """The refs at (trajectory) `steps`, naming the nearest available ones for a missing step."""
    by_step = {ref.step: ref for ref in refs}
    missing = [s for s in steps if s not in by_step]
    if missing:
        nearest = tuple(by_step[s].revision for s in nearest_steps(missing[0], list(by_step)))
        raise UnknownRevisionError(
            f"no checkpoint of {model_id} is at training step {missing[0]}; nearest: {', '.join(nearest)}. "
            f"See them all with crosslens.checkpoints.list_revisions({model_id!r})",
            requested=f"step{missing[0]}",
            nearest=nearest,
        )
    return [by_step[s] for s in sorted(set(steps))]


def of_ingredient(revisions: Sequence[str], ingredient: int | None) -> list[str]:
    """`revisions` without those of other ingredients than `ingredient` (all when None)."""
    if ingredient is None:
        return list(revisions)
    kept = [r for r in revisions if parse_ingredient(r) in (None, ingredient)]
    if not any(parse_ingredient(r) == ingredient for r in kept):
        present = sorted({parse_ingredient(r) for r in revisions if parse_ingredient(r) is not None})
        raise UnknownRevisionError(
            f"no revision of ingredient {ingredient} is listed; the ingredients here are {present or 'none'}",
            requested=f"ingredient{ingredient}",
            nearest=(),
        )
    return kept


def check_revisions(revisions: Sequence[str], model_id: str, available: Sequence[str] | None = None) -> None:
    """Check `revisions` against the repo's list when it can be had; a repo that cannot be
    listed (no network, nothing cached) is left for `load` to report."""
    if available is None:
        try:
            available = list_revisions(model_id)
        except Exception:  # best effort: loading reports a missing revision anyway
            return
    known = set(available)
    for revision in revisions:
        if revision not in known:
            raise unknown_revision_error(model_id, revision, parse_step(revision), available)


def with_revision_errors(
    suite: SnapshotFiles, ref: SnapshotRef, load: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """Run `load`, turning "no such revision on the hub" into `UnknownRevisionError` (and,
    offline, "not in the cache" into `UncachedRevisionError`)."""
    try:
        return load(*args, **kwargs)
    except (RevisionNotFoundError, OSError) as error:
        cause = error if isinstance(error, RevisionNotFoundError) else error.__cause__
        repo, revision = suite.repo_revision(ref)
        if not isinstance(cause, RevisionNotFoundError) and "not a valid git identifier" not in str(error):
            hub = suite.local_folder(ref) is None
            if hub and hub_offline() and not fully_cached(repo, revision):
                raise uncached_revision_error(repo, revision) from error
            raise
        try:
            available = list_revisions(repo)
        except Exception:  # listing is a courtesy here; the error stands without it
            available = []
        raise unknown_revision_error(repo, revision, ref.step, available) from error
