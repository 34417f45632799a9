"""The feature database's emergence check and lineage rows, from ``crosslens analyze``'s saved
``RUN/emergence.json`` (:mod:`crosslens.analysis.emergence_record`).

:func:`run_emergence` reads it before the pass, so a record of another crosscoder is refused
before anything is computed; a run without one gets empty tables and a note naming the command
that writes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from crosslens.analysis.agreement import holding_agreement
from crosslens.analysis.emergence_record import (
    EmergenceRecordError,
    EmergenceResult,
    read_emergence,
)
from crosslens.analysis.evolution import NO_STEP
from crosslens.core.hashing import crosscoder_sha256
from crosslens.core.paths import EMERGENCE_NAME
from crosslens.dashboards.config import DashboardsError
from crosslens.dashboards.record import emergence_sha256

T_VALUE_CAP = 1e9
"""t-values of exact fits are infinite; the database keeps them finite."""


def run_emergence(run_dir: Path) -> tuple[EmergenceResult | None, str | None, str | None]:
    """The run's emergence check, its record's sha256 and why the check's lineage agreement is left out
    (None where it holds, or there is none); (None, None, None) with a note where the run has no check;
    :class:`DashboardsError` where it is damaged or of another crosscoder."""
    if not (run_dir / EMERGENCE_NAME).is_file():
        print(
            f"note: {run_dir} has no emergence check ({EMERGENCE_NAME}): the database will have no latent-scaled "
            f"emergence, contested flags or lineage; run `crosslens analyze --crosscoder {run_dir}` first, then "
            f"`crosslens dashboards {run_dir} --overwrite`"
        )
        return None, None, None
    try:
        result = read_emergence(run_dir, crosscoder_sha256(run_dir))
    except EmergenceRecordError as error:
        raise DashboardsError(str(error)) from None
    held, dropped = holding_agreement(result, run_dir, "the feature database")
    return held, emergence_sha256(run_dir), dropped


def emergence_meta(
    result: EmergenceResult | None, record_sha256: str | None, dropped: str | None = None
) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "record": record_sha256,
        "n_tokens": None if result.scaling is None else result.scaling.n_tokens,
        "latent_scaling": result.check is not None,
        "settings": {
            "check": None if result.check is None else asdict(result.check.config),
            "lineage": asdict(result.lineage_config),
        },
        "counts": result.counts(),
        "agreement": None
        if result.agreement is None
        else {k: v for k, v in result.agreement.to_dict().items() if k not in ("events", "store")},
        # an agreement left out as the database was built (its other crosscoder gone or trained again)
        **({"agreement_dropped": dropped} if dropped else {}),
    }


def _index(value: int) -> int | None:
    return None if value == NO_STEP else int(value)


def emergence_rows(result: EmergenceResult | None, diffing: Sequence[str | None] | None) -> Iterator[tuple]:
    """The emergence table: one row per latent; ``diffing``, a two-model crosscoder's latent-scaling
    verdict per latent (:attr:`~crosslens.analysis.diffing.DiffingScaling.verdicts`)."""
    if result is None or result.check is None:
        return
    check, steps = result.check, result.steps
    decoder, scaled, reported = (
        t.tolist() for t in (check.decoder_emergence, check.scaled_emergence, check.reported_emergence)
    )
    measured, n_fire = check.measured.tolist(), result.scaling.n_fire.tolist()
    for f in range(check.d_sae):
        s, r = _index(scaled[f]), _index(reported[f])
        yield (
            f,
            int(measured[f]),
            check.direction(f),
            _index(decoder[f]),
            s,
            None if s is None else steps[s],
            r,
            None if r is None else steps[r],
            check.early_presence[f],
            int(n_fire[f]),
            None if diffing is None else diffing[f],
        )


def emergence_snapshot_rows(result: EmergenceResult | None) -> Iterator[tuple]:
    """The emergence_snapshots table: one row per latent and snapshot."""
    if result is None or result.check is None:
        return
    scaling = result.scaling
    columns = [
        t.double().tolist()
        for t in (
            result.check.presence,
            scaling.amplitude,
            scaling.error_amplitude,
            scaling.beta,
            scaling.beta_error,
            scaling.t_value.clamp(-T_VALUE_CAP, T_VALUE_CAP),
        )
    ]
    reference, carrier = scaling.reference.tolist(), scaling.carrier.tolist()
    carrier_cosine = scaling.carrier_cosine.double().tolist()
    for f in range(scaling.d_sae):
        for s in range(scaling.n_snapshots):
            partner = carrier[f][s] if carrier[f][s] >= 0 else None
            yield (f, s, *(float(col[f][s]) for col in columns), int(reference[f][s]), partner, carrier_cosine[f][s])


def lineage_rows(result: EmergenceResult | None) -> tuple[list[tuple], list[tuple]]:
    """The lineage_events and lineage_members tables: the events, and those set aside beside them
    (``held`` 0), in snapshot order; a held event's agreement where the result holds one."""
    if result is None:
        return [], []
    events, members = [], []
    lineage = result.lineage
    measured = [None] * len(lineage.events) if result.agreement is None else result.agreement.agreement
    agreement = [None if a is None or math.isnan(a) else float(a) for a in measured]
    # a stable sort: on a tie the held event comes first
    both = sorted(
        [(e, 1, a) for e, a in zip(lineage.events, agreement, strict=True)] + [(e, 0, None) for e in lineage.set_aside],
        key=lambda p: p[0].order,
    )
    for k, (e, held, a) in enumerate(both):
        events.append(
            (
                k,
                e.kind,
                e.snapshot,
                result.steps[e.snapshot],
                e.how,
                e.cosine,
                json.dumps(e.before),
                json.dumps(e.after),
                held,
                a,
                json.dumps(e.to_dict()["composed"]) if e.composed else None,  # the emergence record's encoding
            )
        )
        for feature in e.latents:
            role = (
                "both" if feature in e.before and feature in e.after else ("before" if feature in e.before else "after")
            )
            members.append((feature, k, role))
    members.sort()
    return events, members


def relative_rows(result: EmergenceResult | None) -> Iterator[tuple]:
    """The relatives table: each latent's nearest latents at each snapshot where it is present."""
    if result is None:
        return
    index, cosine = result.lineage.relatives.tolist(), result.lineage.relative_cosine.double().tolist()
    for f, per_snapshot in enumerate(index):
        for s, ranked in enumerate(per_snapshot):
            for rank, relative in enumerate(ranked):
                if relative >= 0 and math.isfinite(cosine[f][s][rank]):
                    yield (f, s, rank, int(relative), float(cosine[f][s][rank]))
