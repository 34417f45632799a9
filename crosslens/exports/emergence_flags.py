"""``emergence_flags.json``: the emergence check and lineage of every feature, beside an export.

Neuronpedia's batch files have a fixed schema, so the flags travel in a file of their own, keyed by
feature id (the same ids as the batches'), read from the feature database's emergence tables::

    {"format": "crosslens.emergence_flags/1", "record": SHA256 of RUN/emergence.json,
     "n_tokens": ..., "counts": {...}, "features": {"12": {"contested": "earlier", "measured": true,
     "decoder_norm_emergence": "step64", "latent_scaled_emergence": "step0",
     "reported_emergence": "step0", "early_presence": "error",
     "lineage": [{"kind": "split", "at": "step128", "before": [12], "after": [12, 40]}]}, ...}}

Snapshots are named by their revision, as the sources are. A two-model crosscoder's one-model-only
latents also carry latent scaling's verdict on them (``"diffing": "specific"``, ``"shrinkage"``,
``"decoupling"`` or ``"not measured"``). Where ``crosslens analyze --lineage-against OTHER``
checked the lineage, the file names that crosscoder (``"agreement": {"against", "crosscoder": its
weights' sha256, "line"}``) and each event carries its ``"agreement"`` (null: none of its latents
present beside it). Nothing is written where the database holds no emergence
check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crosslens.dashboards.schema import agreement_problem

FLAGS_NAME = "emergence_flags.json"
FLAGS_FORMAT = "crosslens.emergence_flags/1"
_KEYS = ("contested", "decoder_norm_emergence", "latent_scaled_emergence", "reported_emergence", "early_presence")


def emergence_flags(context: Any) -> dict[str, Any] | None:
    """The flags of every feature in the emergence table, and of every feature in a lineage event."""
    record = context.meta("emergence")
    database = context.database
    if record is None or database is None:
        return None
    labels = dict(database.execute("SELECT snapshot, label FROM snapshots").fetchall())
    name = lambda s: None if s is None else labels.get(s)  # noqa: E731
    features: dict[str, dict[str, Any]] = {}
    for f, measured, contested, decoder, scaled, reported, early, diffing in database.execute(
        "SELECT feature, measured, contested, decoder_snapshot, scaled_snapshot, reported_snapshot, early_presence, "
        "diffing FROM emergence ORDER BY feature"
    ):
        features[str(f)] = {
            "contested": contested,
            "measured": bool(measured),
            "decoder_norm_emergence": name(decoder),
            "latent_scaled_emergence": name(scaled),
            "reported_emergence": name(reported),
            "early_presence": early,
            "lineage": [],
            **({"diffing": diffing} if diffing is not None else {}),
        }
    checked = record.get("agreement")
    dropped = checked and agreement_problem(record)
    if dropped:
        print(f"note: {FLAGS_NAME} leaves out the lineage's agreement: {dropped}")
        checked = None
    for f, kind, snapshot, before, after, agreement in database.execute(
        "SELECT m.feature, e.kind, e.snapshot, e.before, e.after, e.agreement FROM lineage_members m "
        "JOIN lineage_events e USING (event) WHERE e.held ORDER BY m.feature, e.snapshot, e.event"
    ):
        entry = features.setdefault(str(f), dict.fromkeys(_KEYS) | {"measured": False, "lineage": []})
        event = {"kind": kind, "at": name(snapshot), "before": json.loads(before), "after": json.loads(after)}
        entry["lineage"].append(event | ({"agreement": agreement} if checked else {}))
    return {
        "format": FLAGS_FORMAT,
        "record": record.get("record"),
        "n_tokens": record.get("n_tokens"),
        "counts": record.get("counts"),
        **({"agreement": checked} if checked else {}),
        "features": features,
    }


def write_emergence_flags(context: Any, out: Path) -> str | None:
    """Write :data:`FLAGS_NAME` into ``out``; its name, or None where there are no flags."""
    flags = emergence_flags(context)
    if flags is None:
        return None
    (out / FLAGS_NAME).write_text(json.dumps(flags, allow_nan=False), encoding="utf-8")
    return FLAGS_NAME
