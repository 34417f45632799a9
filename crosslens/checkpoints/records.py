"""The suite a record names: a crosscoder's or store's provenance, or a registry release's suite.

Every record says its family and model id and lists its snapshots (revision and step); a local
suite adds its folder, a suite of models its models, a staged suite where its later stages start,
and a suite loaded with other than crosslens's weight processing that processing.
:func:`suite_from_record` builds the :class:`~crosslens.checkpoints.suite.CheckpointSuite` again
from that, at the recorded snapshots and steps: a staged OLMo suite's stages start where the record
says, not where the revisions this machine lists would place them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from crosslens.checkpoints.models import chosen_processing, models_layout
from crosslens.checkpoints.snapshot import parse_step
from crosslens.checkpoints.suite import CheckpointSuite
from crosslens.checkpoints.trajectory import StageStart, place_on_trajectory
from crosslens.core.model_specs import MODELS_FAMILY


def recorded_revisions(record: Mapping[str, Any]) -> list[str]:
    return [str(e["revision"]) for e in record.get("snapshots") or []] or [
        str(r) for r in record.get("revisions") or []
    ]


def recorded_steps(record: Mapping[str, Any]) -> list[int]:
    entries = record.get("snapshots")
    steps = [e.get("step") for e in entries] if entries else list(record.get("steps") or [])
    return [int(s) for s in steps if s is not None]


def recorded_stage_starts(record: Mapping[str, Any]) -> dict[int, StageStart] | None:
    """Where the record's later stages start (None: it records none); a record that cannot be read is refused."""
    starts = record.get("stage_starts")
    if not starts:
        return None
    try:
        return {int(stage): StageStart.from_dict(start) for stage, start in starts.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ValueError(
            f"the suite's record of where its stages start cannot be read ({starts!r}); save it again from the "
            "suite's provenance, or leave stage_starts out to place the stages by the revisions listed"
        ) from None


def _revision_steps(revisions: list[str]) -> list[int]:
    """The steps that revisions named by their step (``step1000``, ``global_step1000``) stand for,
    where a record lists revisions and no steps: a record's snapshots, not the family's every one."""
    steps = [parse_step(revision) for revision in revisions]
    if None in steps:
        raise ValueError(
            f"the suite's revision {revisions[steps.index(None)]!r} names no training step; record its steps"
        )
    return [int(step) for step in steps if step is not None]


def suite_from_record(record: Mapping[str, Any], *, check: bool = True) -> CheckpointSuite:
    """The suite ``record`` names, at its snapshots. ``check``: compare a suite of models'
    architectures now (reads their configs; off where the models may not be on this machine)."""
    family, model_id = record.get("family"), str(record.get("model_id") or "")
    revisions, steps = recorded_revisions(record), recorded_steps(record)
    processing = chosen_processing(record.get("processing"))
    if family == MODELS_FAMILY:
        models_id, refs, by_label = models_layout(record.get("models") or model_id)
        # a suite selected from a larger one keeps the positions its snapshots were harvested at
        at = dict(zip(revisions, steps)) if len(steps) == len(revisions) else {}
        refs = [replace(ref, step=at.get(ref.revision, ref.step)) for ref in refs]
        suite = CheckpointSuite(MODELS_FAMILY, models_id, refs, models=by_label, processing=processing)
        if check:
            suite.check_architectures()
        chosen = [i for i, ref in enumerate(suite.snapshots) if ref.revision in revisions]
        return suite if not revisions or len(chosen) == len(suite) else suite.select(indices=chosen)
    root = record.get("root")
    if root and Path(root).is_dir():
        suite = CheckpointSuite.local(root)
    elif family == "local" or root:
        raise FileNotFoundError(f"its folder {root} is gone")
    elif family == "pythia" or "pythia" in model_id.lower():
        return CheckpointSuite.pythia(model_id, steps=steps or _revision_steps(revisions) or None)
    elif family == "olmo" or "olmo" in model_id.lower():
        starts = recorded_stage_starts(record)
        if starts is None or not revisions:
            suite = CheckpointSuite.olmo(model_id, revisions or None)
        else:  # placed by the revisions this machine lists, a stage could start elsewhere than recorded
            refs, placed = place_on_trajectory(revisions, family="olmo", model_id=model_id, starts=starts)
            suite = CheckpointSuite("olmo", model_id, refs, stage_starts=placed)
    elif family == "bloom" or "bloom" in model_id.lower():
        return CheckpointSuite.bloom(model_id, steps=steps or _revision_steps(revisions) or None)
    else:
        raise ValueError(f"{model_id or 'no model id'} names no suite crosslens can load")
    return suite.select(steps=steps) if steps and list(suite.steps) != steps else suite
