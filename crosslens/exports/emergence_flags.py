"""``emergence_flags.json``: the emergence check and lineage of every feature, beside an export.

Neuronpedia's batch files have a fixed schema, so the flags travel in a file of their own, keyed by
feature id (the same ids as the batches'), read from the feature database's emergence tables::

    {"format": "crosslens.emergence_flags/1", "record": SHA256 of RUN/emergence.json,
     "n_tokens": ..., "counts": {...}, "features": {"12": {"contested": "earlier", "measured": true,
     "decoder_norm_emergence": "step64", "latent_scaled_emergence": "step0",
     "reported_emergence": "step0", "early_presence": "error",
     "lineage": [{"kind": "split", "at": "step128", "before": [12], "after": [12, 40]}]}, ...}}

Snapshots are named by their revision, as the sources are. A two-model crosscoder's models are in
no training order, so its file holds nothing that reads them as one (no emergence, contested
flag, early presence, lineage or agreement): each feature says whether latent scaling measured it
and, for a one-model-only latent, its verdict (``"diffing": "specific"``, ``"shrinkage"``,
``"decoupling"`` or ``"not measured"``), and ``"diffing"`` at the top counts the latents per
verdict (``{"format", "record", "n_tokens", "diffing", "features": {"12": {"measured": true,
"diffing": "specific"}, ...}}``). Where ``crosslens analyze --lineage-against OTHER``
checked the lineage, the file names that crosscoder (``"agreement": {"against", "crosscoder": its
weights' sha256, "line", "reading": how an event's latents were read}``) and each event carries
its ``"agreement"`` (null: none of its latents present beside it). A split by composition carries
its ``"children"``, each child's ``[latent, weight]`` terms (its rows summed). Nothing is written
where the database holds no emergence check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crosslens.analysis.diffing import DIFFING_VERDICTS
from crosslens.core.model_specs import is_models_suite
from crosslens.dashboards.schema import agreement_problem

FLAGS_NAME = "emergence_flags.json"
FLAGS_FORMAT = "crosslens.emergence_flags/1"
_KEYS = ("contested", "decoder_norm_emergence", "latent_scaled_emergence", "reported_emergence", "early_presence")


def emergence_flags(context: Any) -> dict[str, Any] | None:
    """The flags of every feature in the emergence table, and of every feature in a lineage event
    (a crosscoder of two models: :func:`diffing_flags`)."""
    record = context.meta("emergence")
    database = context.database
    if record is None or database is None:
        return None
    if is_models_suite(context.meta("suite")):
        return diffing_flags(record, database)
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
    for f, kind, snapshot, before, after, agreement, composed in database.execute(
        "SELECT m.feature, e.kind, e.snapshot, e.before, e.after, e.agreement, e.composed FROM lineage_members m "
        "JOIN lineage_events e USING (event) WHERE e.held ORDER BY m.feature, e.snapshot, e.event"
    ):
        entry = features.setdefault(str(f), dict.fromkeys(_KEYS) | {"measured": False, "lineage": []})
        event = {"kind": kind, "at": name(snapshot), "before": json.loads(before), "after": json.loads(after)}
        if composed is not None:
            event["children"] = json.loads(composed)
        entry["lineage"].append(event | ({"agreement": agreement} if checked else {}))
    return {
        "format": FLAGS_FORMAT,
        "record": record.get("record"),
        "n_tokens": record.get("n_tokens"),
        "counts": record.get("counts"),
        **({"agreement": checked} if checked else {}),
        "features": features,
    }


def diffing_flags(record: dict[str, Any], database: Any) -> dict[str, Any]:
    """A two-model crosscoder's flags: whether latent scaling measured each latent, and its verdict
    on the one-model-only ones, with their counts; nothing that reads the two models as a training order."""
    features: dict[str, dict[str, Any]] = {}
    counts = dict.fromkeys(DIFFING_VERDICTS, 0)
    for f, measured, diffing in database.execute("SELECT feature, measured, diffing FROM emergence ORDER BY feature"):
        features[str(f)] = {"measured": bool(measured), **({"diffing": diffing} if diffing is not None else {})}
        if diffing is not None:
            counts[diffing] = counts.get(diffing, 0) + 1
    return {
        "format": FLAGS_FORMAT,
        "record": record.get("record"),
        "n_tokens": record.get("n_tokens"),
        "diffing": counts,
        "features": features,
    }


def write_emergence_flags(context: Any, out: Path) -> str | None:
    """Write :data:`FLAGS_NAME` into ``out``; its name, or None where there are no flags."""
    flags = emergence_flags(context)
    if flags is None:
        return None
    (out / FLAGS_NAME).write_text(json.dumps(flags, allow_nan=False), encoding="utf-8")
    return FLAGS_NAME
