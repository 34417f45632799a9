"""The run's explanations (``crosslens explain``) in a Neuronpedia export, beside each snapshot's
dashboards, as Neuronpedia's own dataset exports carry them.

Neuronpedia's ``utils/neuronpedia-utils/neuronpedia_utils/export-data.py`` writes a source's
explanations to ``SOURCE/explanations/batch-N.jsonl`` (1,024 rows a file, later gzipped on its
bucket, ``v1/MODEL/SOURCE/explanations/``): one ``Explanation`` row per line, with the columns
``id, modelId, layer, index, authorId, description, embedding, typeName, explanationModelName,
umap_x, umap_y, umap_cluster, umap_log_feature_sparsity`` (``layer`` is the source id, ``index``
the feature as a string). Each snapshot's folder of ``crosslens export --format neuronpedia`` gets
that file: the explanations made at that snapshot's reading, and the explanation of the
crosscoder's own code, which every snapshot shares (its ``typeName`` ends in ``-code``:
:func:`~crosslens.dashboards.explanation_schema.neuronpedia_type`). ``crosslens explain
--import`` reads the files back.

What crosslens cannot know is left as Neuronpedia's export leaves it for the importing instance to
fill: ``authorId`` (its exporter writes its own default creator there) is null, and so are the
embedding and UMAP columns. The ``id`` is derived from the row's content, so the same explanations
export to the same bytes. Detection scores are not in Neuronpedia's explanation rows; they stay in
``RUN/explanations.sqlite``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from crosslens.dashboards.explanation_schema import (
    ALIAS,
    EXPLANATIONS_NAME,
    attach,
    binding_problem,
    neuronpedia_type,
    read_meta,
    schema_problem,
)
from crosslens.dashboards.record import read_record
from crosslens.exports.config import ExportError

BATCH_ROWS = 1024
"""Rows per ``batch-N.jsonl``, as Neuronpedia's exporter writes them."""


def attach_run_explanations(database: sqlite3.Connection, run_dir: Path) -> bool:
    """Attach ``RUN/explanations.sqlite`` to the export's database connection; False where the run
    has none. Explanations made from another feature database are refused with the fix."""
    path = run_dir / EXPLANATIONS_NAME
    if not path.is_file():
        return False
    check = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        problem = schema_problem(check)
        if problem is None:
            problem = binding_problem(read_meta(check), read_record(run_dir).get("database_sha256"))
    finally:
        check.close()
    if problem is not None:
        raise ExportError(f"{path} is not this feature database's ({problem}); move it aside, or explain the run again")
    attach(database, path)
    return True


def explanation_rows(
    database: sqlite3.Connection, model_id: str, source_id: str, snapshot: int
) -> list[dict[str, Any]]:
    """The Neuronpedia ``Explanation`` rows of one snapshot's source, by feature."""
    rows = []
    for feature, at, text, model, prompt in database.execute(
        f"SELECT feature, snapshot, text, model, prompt FROM {ALIAS}.explanations "
        "WHERE snapshot IN (?, -1) ORDER BY feature, snapshot DESC, source",
        (snapshot,),
    ):
        type_name = neuronpedia_type(prompt, at)
        identity = json.dumps([model_id, source_id, feature, type_name, text])
        rows.append(
            {
                "id": "crosslens-" + hashlib.sha256(identity.encode()).hexdigest()[:24],
                "modelId": model_id,
                "layer": source_id,
                "index": str(feature),
                "authorId": None,
                "description": text,
                "embedding": None,
                "typeName": type_name,
                "explanationModelName": model,
                "umap_x": None,
                "umap_y": None,
                "umap_cluster": None,
                "umap_log_feature_sparsity": None,
            }
        )
    return rows


def write_explanations(database: sqlite3.Connection, folder: Path, model_id: str, source_id: str, snapshot: int) -> int:
    """``folder/explanations/batch-N.jsonl`` for one snapshot's source; how many rows were written."""
    rows = explanation_rows(database, model_id, source_id, snapshot)
    for number, start in enumerate(range(0, len(rows), BATCH_ROWS)):
        path = folder / "explanations" / f"batch-{number}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(row, ensure_ascii=False) for row in rows[start : start + BATCH_ROWS]]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(rows)
