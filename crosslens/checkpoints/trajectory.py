"""Staged training runs: placing ``stage{S}-[ingredient{K}-]step{N}-tokens{M}B`` revisions on
one training trajectory.

OLMo-2 and OLMo-3 train in stages. Stage 1 is pre-training (``stage1-step1000-tokens3B``);
stage 2 anneals the stage-1 endpoint on a new data mix, several times in parallel, once
per *ingredient* (``stage2-ingredient1-step1000-tokens3B``). Each stage counts its steps
and tokens from zero again, so the names alone do not order the snapshots.

crosslens places every revision on the trajectory it belongs to:

* ``step`` counts optimiser steps since initialisation: a stage-``S`` revision's own step
  plus the last step of every earlier stage. Stages are then in training order, steps
  are unique along one trajectory, and everything keyed on steps (`spaced_steps`,
  ``select(steps=...)``, the analysis' x axis) works across stages unchanged;
* ``tokens_seen`` likewise adds the tokens of the earlier stages' last revisions.

An earlier stage's end is its last revision among those *known*: the repo's whole list of
revisions (the hub's, online; offline, the stage ends remembered from the last online listing,
`crosslens.checkpoints.hub.placing_revisions`), plus the suite's own. Without that list a later
stage is refused rather than placed after whichever stage-1 revisions happen to be at hand (the
cached ones, a folder's). The stage starts are recorded in `CheckpointSuite.provenance`
(``"stage_starts"``), and a suite built again from a record starts its stages there. Two ingredients
are parallel runs from one stage-1 endpoint, not one trajectory, so a suite mixing them
is refused (`check_one_ingredient`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from crosslens.checkpoints.snapshot import SnapshotRef, parse_step, parse_tokens, ref_from_revision
from crosslens.core.errors import CrosslensError

_STAGE_PATTERN = re.compile(r"(?:^|[^a-z])stage[_-]?(\d+)", re.IGNORECASE)
_INGREDIENT_PATTERN = re.compile(r"(?:^|[^a-z])ingredient[_-]?(\d+)", re.IGNORECASE)


class MixedIngredientsError(CrosslensError):
    """A suite holds revisions of more than one stage-2 ingredient (parallel runs)."""

    def __init__(self, message: str, *, ingredients: tuple[int, ...]):
        super().__init__(message)
        self.ingredients = ingredients


def parse_stage(revision: str) -> int | None:
    """The training stage in ``stage2-ingredient1-step1000-tokens3B`` (2), else None."""
    match = _STAGE_PATTERN.search(revision)
    return int(match.group(1)) if match else None


def parse_ingredient(revision: str) -> int | None:
    """The ingredient (data-mix run) in ``stage2-ingredient1-step1000-tokens3B`` (1), else None."""
    match = _INGREDIENT_PATTERN.search(revision)
    return int(match.group(1)) if match else None


def trajectory_key(revision: str) -> tuple[int, int, int]:
    """Sort key along training: (stage, ingredient, the stage's own step); unstaged names
    count as stage 0. Revisions without a step sort last."""
    step = parse_step(revision)
    return (parse_stage(revision) or 0, parse_ingredient(revision) or 0, step if step is not None else 1 << 62)


def is_staged(revisions: Iterable[str]) -> bool:
    return any(parse_stage(r) is not None for r in revisions)


@dataclass(frozen=True)
class StageStart:
    """Where a stage starts on the trajectory: the end of the stages before it."""

    stage: int
    """The stage that starts here (2 for the annealing stage)."""
    step: int
    """Optimiser steps taken before this stage (the earlier stages' last steps, summed)."""
    tokens: int | None
    """Tokens seen before this stage, None when an earlier stage's last revision names none."""
    after: tuple[str, ...]
    """The earlier stages' last revisions, the ends summed into `step` and `tokens`."""

    def to_dict(self) -> dict:
        return {**asdict(self), "after": list(self.after)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> StageStart:
        """The start :meth:`to_dict` recorded."""
        tokens = record.get("tokens")
        return cls(
            stage=int(record["stage"]),
            step=int(record["step"]),
            tokens=None if tokens is None else int(tokens),
            after=tuple(str(r) for r in record.get("after") or ()),
        )


def check_one_ingredient(revisions: Sequence[str], model_id: str) -> int | None:
    """The one ingredient among `revisions` (None if none names one); raise
    `MixedIngredientsError` listing them when there are several."""
    by_ingredient: dict[int, list[str]] = {}
    for revision in revisions:
        ingredient = parse_ingredient(revision)
        if ingredient is not None:
            by_ingredient.setdefault(ingredient, []).append(revision)
    if len(by_ingredient) <= 1:
        return next(iter(by_ingredient), None)
    listed = "; ".join(f"ingredient {k}: {len(v)} revision(s), e.g. {v[0]!r}" for k, v in sorted(by_ingredient.items()))
    raise MixedIngredientsError(
        f"{model_id}: the suite mixes stage-2 ingredients {sorted(by_ingredient)} ({listed}). Each ingredient is "
        "a separate annealing run from the same stage-1 endpoint, not one training trajectory; keep one, e.g. "
        f"CheckpointSuite.olmo({model_id!r}, ingredient={min(by_ingredient)}) "
        f"(CLI: --suite {model_id}@ingredient{min(by_ingredient)})",
        ingredients=tuple(sorted(by_ingredient)),
    )


def stage_starts(
    revisions: Sequence[str], known: Iterable[str] | None = None, *, model_id: str = ""
) -> dict[int, StageStart]:
    """For each stage after the first among `revisions`, where it starts: the sum of the
    earlier stages' ends, each the last revision of that stage among `revisions` and
    `known` (of the suite's ingredient, where a stage has ingredients). `known`: revisions
    that include each earlier stage's last one (the repo's whole list); None refuses a
    later stage, whose start the suite's own revisions cannot tell."""
    stages = sorted({parse_stage(r) for r in revisions if parse_stage(r) is not None})
    if len(stages) == 0 or stages[-1] == stages[0] == 1:
        return {}
    ingredient = check_one_ingredient(revisions, model_id)
    if known is None:
        later = next(r for r in revisions if (parse_stage(r) or 1) > 1)
        raise CrosslensError(
            f"{model_id + ': ' if model_id else ''}cannot place {later!r} on the training trajectory: {later!r} is of "
            "a later training stage, which starts where stage 1 ended, and which is stage 1's last revision only the "
            "repo's whole list of revisions says (offline the cache lists only those downloaded); go "
            "online once (unset HF_HUB_OFFLINE: crosslens then remembers where each stage ends), or build the "
            "suite from a store's or crosscoder's record (crosslens.checkpoints.records.suite_from_record); a "
            "local suite's folder needs a suite.json giving each snapshot its step along the whole run: "
            '{"model_id": NAME, "snapshots": [{"revision": NAME, "path": FOLDER, "step": N, "tokens_seen": T}, ...]}'
        )
    pool = {r for r in (*revisions, *known) if parse_stage(r) is not None and parse_step(r) is not None}
    starts: dict[int, StageStart] = {}
    step, tokens, after = 0, 0, ()
    for stage in range(1, stages[-1] + 1):
        if stage in stages and stage > 1:
            starts[stage] = StageStart(stage=stage, step=step, tokens=tokens, after=after)
        if stage == stages[-1]:
            break
        in_stage = [r for r in pool if parse_stage(r) == stage]
        with_ingredient = [r for r in in_stage if parse_ingredient(r) is not None]
        if with_ingredient:
            in_stage = [r for r in in_stage if parse_ingredient(r) in (None, ingredient)]
        if not in_stage:
            raise ValueError(
                f"{model_id}: cannot place stage-{stage + 1} revisions on the training trajectory: no stage-{stage} "
                f"revision{' of ingredient ' + str(ingredient) if with_ingredient else ''} is known, so where "
                f"stage {stage} ended is unknown. Go online (unset HF_HUB_OFFLINE) so the repo's revisions can be "
                f"listed, or include stage {stage}'s last revision in the suite"
            )
        last = max(in_stage, key=lambda r: parse_step(r) or 0)
        last_tokens = parse_tokens(last)
        step += parse_step(last) or 0
        tokens = None if tokens is None or last_tokens is None else tokens + last_tokens
        after = (*after, last)
    return starts


def place_on_trajectory(
    revisions: Sequence[str],
    *,
    family: str,
    known: Iterable[str] | None = None,
    model_id: str = "",
    starts: Mapping[int, StageStart] | None = None,
) -> tuple[list[SnapshotRef], dict[int, StageStart]]:
    """`SnapshotRef`s for `revisions`, in training order, with trajectory steps and tokens
    (see the module docstring), and the stage starts used: `starts` where given (a suite's
    record of them), else found from `revisions` and `known` (`stage_starts`). Unstaged
    revisions keep the step and tokens their names give (Pythia: ``step * 2,097,152`` tokens; BLOOM: None)."""
    if starts is None:
        starts = stage_starts(revisions, known, model_id=model_id) if is_staged(revisions) else {}
    missing = sorted({parse_stage(r) for r in revisions} - {None, 1} - set(starts))
    if missing:
        raise ValueError(
            f"{model_id}: the record of where its stages start names no start for stage {missing[0]}; "
            "build the suite again from its revisions (CheckpointSuite.olmo)"
        )
    starts = dict(starts)
    refs = []
    for revision in sorted(revisions, key=trajectory_key):
        ref = ref_from_revision(len(refs), revision, family=family)
        step, tokens = ref.step, ref.tokens_seen
        start = starts.get(parse_stage(revision) or 0)
        if start is not None:
            step += start.step
            tokens = None if tokens is None or start.tokens is None else tokens + start.tokens
        refs.append(SnapshotRef(index=len(refs), revision=revision, step=step, tokens_seen=tokens))
    return refs, starts


def group_by_stage(revisions: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`revisions` in training order, grouped by (stage, ingredient) with a heading each:
    ``"stage 1"``, ``"stage 2, ingredient 1"``; unstaged names form one group headed ``""``."""
    groups: dict[tuple[int, int], list[str]] = {}
    for revision in sorted(revisions, key=trajectory_key):
        stage, ingredient, _ = trajectory_key(revision)
        groups.setdefault((stage, ingredient), []).append(revision)
    named = []
    for (stage, ingredient), members in groups.items():
        heading = "" if stage == 0 else f"stage {stage}" + (f", ingredient {ingredient}" if ingredient else "")
        named.append((heading, members))
    return named
