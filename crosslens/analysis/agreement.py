"""Whether another crosscoder of the same activations shows a lineage's events.

A split, merge or handoff is a claim about the model only if it does not depend on the one
crosscoder that reports it. A crosscoder of another architecture, trained on the same store,
reads the same activations with another sparsity mechanism: where an event is the model's, its
latents make the same moves there too. TopK's fixed count of active latents, for one, reuses a
duplicate latent for another feature (a "split" of one feature into itself and something else),
and on the planted grid a second TopK seed does so the same way, so a second seed of the same
architecture shows such events too; another architecture is the test with teeth.

For each event at snapshot ``t``, each of its latents is looked for in the other crosscoder:
a latent present at ``t - 1`` and ``t`` (its move) by the other's latents present at both, scored
by the smaller of the two snapshots' decoder cosines, so one latent must make the whole move; a
latent present on one side only (a succession's) by the other's present rows on that side. In a
turn (a succession whose fader or successor is one latent that turned in one step), every latent
is read on its side of the event: the latent that turned hands over (or takes up) the direction
of its side, and the direction it turns to (or from) is not the event's, so another crosscoder
that makes the handover with a latent that fades (or emerges) makes the event. A
latent present at neither is read at its nearest present snapshot on its side of the event: a
latent before it at its last present snapshot before ``t`` (a predecessor that faded at ``t - 1``,
inside the succession window), a latent after it at its first from ``t`` on (a second successor
emerging later); one present nowhere on its side scores -1, as a move not made. A latent present at
no snapshot at all (one lineage read from decoder rows alone counts among an event's latents,
such as a TopK latent whose rows ride along a split it never fires for) makes no move
another crosscoder could show and is not looked for; an event none of whose latents is present on
its side is not read (NaN). The event's agreement is the least
over its latents: 1 where every move is there, near 0 where one is nowhere. A split by
composition's children are read as latents of their own, their summed rows present from the
split on: the other crosscoder shows it with a parent that turns alike and latents along the
children, however it composes them. Only decoder rows are read, so it costs a matmul per latent.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float

from crosslens.activations.partners import store_seal
from crosslens.activations.store import ActivationStore
from crosslens.analysis.composition import with_children_rows
from crosslens.analysis.emergence_record import (
    EmergenceRecordError,
    EmergenceResult,
    LineageAgreement,
    made_there,
    read_emergence,
    read_record,
)
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.lineage_events import EVENT_KINDS
from crosslens.analysis.relatives import unit_rows
from crosslens.core.hashing import agreement_change, crosscoder_sha256
from crosslens.core.metadata import saved_metadata
from crosslens.core.paths import FINAL_DIRNAME, final_weights
from crosslens.crosscoders.saved import load_crosscoder_folder

AGREEMENT_LINE = 0.5
"""An event the other crosscoder shows: each of its latents' moves made there by one latent at this
decoder cosine or closer on both snapshots. Halfway between a move that is there (near 1) and one
that is nowhere (near 0). On the planted grid, 0.4 keeps one false event more; 0.5 keeps every planted
split and handoff that lineage finds without a line, and 0.7 four fewer (benchmarks/README.md, "Is an
emergence real?")."""


def event_agreement(
    events: Sequence[Any],
    unit_FSD: Float[torch.Tensor, "d_sae n_snapshots d_in"],
    present_FS: Bool[torch.Tensor, "d_sae n_snapshots"],
    other_unit_FSD: Float[torch.Tensor, "other_d_sae n_snapshots d_in"],
    other_present_FS: Bool[torch.Tensor, "other_d_sae n_snapshots"],
) -> list[float]:
    """Each event's agreement (module docstring) between the crosscoder of ``unit_FSD`` (unit
    decoder rows) and ``present_FS``, whose events they are, and another's; NaN for an event none
    of whose latents is present on its side of the event's snapshot, nothing there to look for."""
    if unit_FSD.shape[1:] != other_unit_FSD.shape[1:]:
        raise ValueError(
            f"decoders of {list(unit_FSD.shape[1:])} and {list(other_unit_FSD.shape[1:])} (snapshots, width) "
            "read different activations: compare crosscoders trained on the same store"
        )
    other_present_FS = other_present_FS.bool()
    out = []
    for event in events:
        scores, read = [], False
        for x in event.latents:
            if not bool(present_FS[x].any()):
                continue  # present at no snapshot: no move of it for another crosscoder to show
            sides = _compared_snapshots(event, x, present_FS[x])
            if not sides:
                # no move of it to look for, so none shown made: dropped, it would leave the
                # event's agreement to its other latents alone
                scores.append(-1.0)
                continue
            read = True
            held = other_present_FS[:, sides].all(1)
            if not bool(held.any()):
                scores.append(-1.0)
                continue
            cos_FT = torch.stack([other_unit_FSD[held, t] @ unit_FSD[x, t] for t in sides], dim=1)
            scores.append(float(cos_FT.amin(1).max()))
        out.append(min(scores) if read else math.nan)
    return out


def _compared_snapshots(event: Any, latent: int, present_S: Bool[torch.Tensor, " n_snapshots"]) -> list[int]:
    """The snapshots at which ``latent``'s rows are looked for (module docstring): those of the
    snapshot before ``event`` and its own where it is present, else its nearest present snapshot on
    each side of the event it is on; none where it is present nowhere there. A turn's latents are
    read on their side alone: the one that turned is the event's fader or successor there, and its
    row on the other side is what it carries besides."""
    t1 = event.snapshot
    beside = [t for t in dict.fromkeys((max(0, t1 - 1), t1)) if bool(present_S[t])]
    if beside and event.how != "turn":
        return beside
    on = torch.nonzero(present_S).flatten().tolist()
    earlier = [t for t in on if t < t1] if latent in event.before else []
    later = [t for t in on if t >= t1] if latent in event.after else []
    return earlier[-1:] + later[:1]


def lineage_agreement(
    lineage: Any,
    analysis: Any,
    other: Any,
    present_FS: torch.Tensor | None = None,
    other_present_FS: torch.Tensor | None = None,
) -> list[float]:
    """:func:`event_agreement` of ``lineage``'s events (of ``analysis``, an
    :class:`~crosslens.analysis.EvolutionAnalysis`) with ``other``'s crosscoder (another analysis of
    the same store). Each side's presence is its analysis's, and also latent scaling's where given
    (``present_FS``, ``other_present_FS``: each crosscoder's ``EmergenceCheck.present``), as
    :func:`~crosslens.analysis.lineage_of` reads it."""
    for name, value in (("analysis", analysis), ("other", other)):
        if not hasattr(value, "lifetimes"):
            raise TypeError(
                f"lineage_agreement's {name} is an EvolutionAnalysis (EvolutionAnalysis.from_crosscoder), "
                f"not {type(value).__name__}"
            )

    def presence(an: Any, scaled: torch.Tensor | None) -> torch.Tensor:
        present = an.present.bool() & ~an.lifetimes.dead.bool()[:, None]
        return present if scaled is None else present & scaled.bool().to(present.device)

    events, W_FSD, own_FS = _children_as_rows(
        lineage.events, analysis.W_dec.cpu(), presence(analysis, present_FS).cpu()
    )
    return event_agreement(
        events,
        unit_rows(W_FSD),
        own_FS,
        unit_rows(other.W_dec).cpu(),
        presence(other, other_present_FS).cpu(),
    )


def _children_as_rows(
    events: Sequence[Any], W_FSD: torch.Tensor, present_FS: torch.Tensor
) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
    """``events`` with each split by composition's children as latents of their own
    (:func:`~crosslens.analysis.composition.with_children_rows`), present where the parent is from
    the split on, so that another crosscoder makes the split where a latent of its own turns as the
    parent does and others lie along the children (its latents need not compose them as this one
    does)."""
    W_FSD, after_of = with_children_rows(W_FSD, events)
    present = [present_FS]
    for e in events:
        if e.composed:
            parent_S = present_FS[e.before[0]] & (torch.arange(W_FSD.shape[1]) >= e.snapshot)
            present.append(parent_S.expand(len(e.composed), -1))
    out = [dataclasses.replace(e, after=after, composed=()) if e.composed else e for e, after in zip(events, after_of)]
    return out, W_FSD, torch.cat(present)


def check_agreement_run(other_run: str | os.PathLike, store: Any = None, hook: str | None = None) -> EmergenceResult:
    """``other_run``'s saved emergence check, refused (before any work, where a caller asks first)
    where :func:`run_lineage_agreement` cannot read it: no final crosscoder, no check or a damaged one,
    a check of weights trained since or without latent scaling, or one of another store than
    ``store`` (an :class:`~crosslens.activations.ActivationStore` or its path) or a crosscoder of
    another hook than ``hook``."""
    other_run = Path(other_run)
    weights = final_weights(other_run)
    if not weights.is_file():
        raise EmergenceRecordError(
            f"{other_run} holds no final crosscoder ({weights.relative_to(other_run)}): pass a finished crosslens train run"
        )
    if isinstance(store, (str, os.PathLike)):
        store = ActivationStore.open(store)
    _check_trained_alike(other_run, store, hook)
    sha = crosscoder_sha256(other_run)
    record = read_record(other_run, sha)
    fix = f"run `crosslens analyze --crosscoder {other_run} --store STORE` with the store this crosscoder read"
    partner = (record.get("partners") or {}).get("store")
    if partner is None:
        raise EmergenceRecordError(f"{other_run}'s emergence check read no activations: {fix}")
    if store is not None and partner != store_seal(store):
        raise EmergenceRecordError(f"{other_run}'s emergence check read another store than {store.path}: {fix}")
    result = read_emergence(other_run, sha)
    if result.check is None:
        raise EmergenceRecordError(f"{other_run}'s emergence check read no activations: {fix}")
    return result


def _check_trained_alike(other_run: Path, store: Any, hook: str | None) -> None:
    """Refuse a run trained on another hook or store before its emergence check is read: analysing
    that run again cannot make it comparable, so only another run is a fix."""
    theirs = _recorded_hook(other_run)
    if hook is not None and theirs != hook:
        raise EmergenceRecordError(
            f"{other_run}'s crosscoder reads {theirs}, this one {hook}: pass a run trained on the same hook of the store"
        )
    trained_on = saved_metadata(other_run / FINAL_DIRNAME).get("store_seal")
    if store is None or not isinstance(trained_on, dict):  # a run streamed from models names no store
        return
    if any(trained_on.get(key) != value for key, value in store_seal(store).items()):
        raise EmergenceRecordError(
            f"{other_run} was trained on another store than {store.path}: pass a run trained on {store.path}"
        )


def _recorded_hook(run_dir: Path) -> str | None:
    """The hook a run's final crosscoder records, without loading its weights."""
    hook = saved_metadata(run_dir / FINAL_DIRNAME).get("hook_name")
    return str(hook) if hook else None


def run_lineage_agreement(
    lineage: Any,
    analysis: Any,
    present_FS: torch.Tensor | None,
    other_run: str | os.PathLike,
    store: Any = None,
    device: str = "cpu",
    hook: str | None = None,
    checked: EmergenceResult | None = None,
) -> list[float]:
    """:func:`lineage_agreement` with another run's final crosscoder, read with the emergence check
    ``crosslens analyze`` saved in ``other_run`` (checked by :func:`check_agreement_run` against
    ``store`` and ``hook`` where given; ``checked``: that check, where the caller asked it first)."""
    other_run = Path(other_run)
    other = checked if checked is not None else check_agreement_run(other_run, store, hook)
    crosscoder = load_crosscoder_folder(other_run / FINAL_DIRNAME, device=device)
    other_analysis = EvolutionAnalysis.from_crosscoder(crosscoder, steps=other.steps)
    return lineage_agreement(lineage, analysis, other_analysis, present_FS, other.check.present)


def agreement_record(
    other_run: str | os.PathLike, agreement: Sequence[float], store: ActivationStore | None = None
) -> LineageAgreement:
    """``agreement`` (each event's, with ``other_run``'s final crosscoder) as the emergence record
    keeps it beside the lineage, naming that run by its absolute path, its crosscoder by its weights,
    the line it is counted at and the store both checks read (``store``, by its seal)."""
    other = Path(other_run).resolve()
    seal = None if store is None else store_seal(store)
    return LineageAgreement(str(other), crosscoder_sha256(other), AGREEMENT_LINE, [float(a) for a in agreement], seal)


def saved_agreement(
    run_dir: str | os.PathLike, lineage: Any, store: dict[str, str] | None = None
) -> tuple[LineageAgreement | None, str | None]:
    """The agreement ``run_dir``'s saved emergence record holds (None where it holds none, or no
    record of the run's final crosscoder), and why it no longer holds for ``lineage``, read on the
    store sealed ``store`` (:func:`store_seal`; None: no store), None where it does: the record's
    events are not ``lineage``'s, or it was measured on another store (or one not named), or the
    other run holds no crosscoder now, or another than the one it was measured with."""
    try:
        record = read_record(run_dir, crosscoder_sha256(run_dir))
    except EmergenceRecordError:  # none, damaged or of weights trained since: nothing to keep
        return None, None
    if record.get("agreement") is None:
        return None, None
    saved = LineageAgreement.from_dict(record["agreement"])
    if _event_keys(e.to_dict() for e in lineage.events) != _event_keys(record.get("events") or []):
        return saved, f"the lineage agreement with {saved.against} was of other lineage events"
    if saved.store is None or saved.store != store:  # each side's presence is latent scaling's on that store
        why = (
            "names no store it was measured on"
            if saved.store is None
            else f"was measured on another store than this analysis {'reads' if store else 'read (it read none)'}"
        )
        return saved, f"the lineage agreement with {saved.against} {why}"
    return saved, agreement_change(saved.to_dict())


def holding_agreement(
    result: EmergenceResult, run_dir: str | os.PathLike, leaving_out: str
) -> tuple[EmergenceResult, str | None]:
    """``run_dir``'s emergence ``result`` without its lineage agreement where the crosscoder it was
    measured with is gone or was trained again since, and why (None where it holds), with a note
    saying why, what is left without it (``leaving_out``: "the feature database") and the command
    that measures it again."""
    agreement = result.agreement
    problem = None if agreement is None else agreement_change(agreement.to_dict())
    if problem is None:
        return result, None
    print(
        f"note: {leaving_out} leaves out the lineage's agreement: {problem}; {measure_again(run_dir, agreement.against)}"
    )
    return dataclasses.replace(result, agreement=None), problem


def measure_again(run_dir: str | os.PathLike, against: str | os.PathLike) -> str:
    """The command that measures ``run_dir``'s lineage agreement again: against the same run where it
    still holds a crosscoder, else against another (OTHER)."""
    other = against if final_weights(against).is_file() else "OTHER (a finished run: the one named holds no crosscoder)"
    return f"`crosslens analyze --crosscoder {run_dir} --store STORE --lineage-against {other}` measures it again"


def _event_keys(events: Any) -> list[tuple]:
    """What makes two lineage events the same event: kind, snapshot, latents and how it was read
    (not the deciding cosine, whose last bits another device or dtype may change)."""
    return [(e["kind"], e["snapshot"], list(e["before"]), list(e["after"]), e.get("how")) for e in events]


def agreement_line(
    other_run: str | os.PathLike, events: Sequence[Any], agreement: Sequence[float], line: float = AGREEMENT_LINE
) -> str:
    """The line ``crosslens analyze --lineage-against`` (and the demo) print."""
    return f"lineage events {other_run}'s crosscoder makes too (agreement >= {line}): " + agreement_text(
        events, agreement, line
    )


def agreement_text(events: Sequence[Any], agreement: Sequence[float], line: float = AGREEMENT_LINE) -> str:
    """How many events of each kind are at or above ``line``: "3 of 7 splits, 20 of 39 merges, 4 of 5 handoffs"."""
    parts = []
    for kind in EVENT_KINDS:
        made = [made_there(a, line) for e, a in zip(events, agreement) if e.kind == kind]
        unread = made.count(None)
        read = len(made) - unread
        parts.append(
            f"{made.count(True)} of {read} {kind}{'' if read == 1 else 's'}"
            + (f" ({unread} with no latent present beside it)" if unread else "")
        )
    return ", ".join(parts)


__all__ = [
    "AGREEMENT_LINE",
    "agreement_line",
    "agreement_record",
    "agreement_text",
    "check_agreement_run",
    "event_agreement",
    "holding_agreement",
    "measure_again",
    "lineage_agreement",
    "run_lineage_agreement",
    "saved_agreement",
]
