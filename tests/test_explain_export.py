"""``crosslens export --format neuronpedia`` carries a run's explanations across, as Neuronpedia's own
explanation export lays them out, and ``crosslens explain --import`` reads them back."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import trust_fixtures as tf
from explain_fixtures import write_synthetic_explanations
from test_exports import REVISIONS, seed_database, tiny  # noqa: F401 (the trained run fixture)

from crosslens.core.paths import EXPORT_MANIFEST_NAME
from crosslens.dashboards.explanation_schema import EXPLANATIONS_NAME
from crosslens.explain import ExplainConfig, ExplainError, import_explanations
from crosslens.exports import ExportError, export_run

# Neuronpedia's utils/neuronpedia-utils/neuronpedia_utils/export-data.py, export_explanations: the
# Explanation columns it writes, in order, one row per line of SOURCE/explanations/batch-N.jsonl
NP_EXPLANATION_COLUMNS = [
    "id",
    "modelId",
    "layer",
    "index",
    "authorId",
    "description",
    "embedding",
    "typeName",
    "explanationModelName",
    "umap_x",
    "umap_y",
    "umap_cluster",
    "umap_log_feature_sparsity",
]


@pytest.fixture
def explained_run(tiny, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(tiny / "run", run)
    seed_database(run)
    write_synthetic_explanations(run, per_feature=4)  # code, and snapshots 0, 1, 2
    return run


def explanations_of(run) -> set[tuple]:
    db = sqlite3.connect(run / EXPLANATIONS_NAME)
    try:
        return set(db.execute("SELECT feature, snapshot, text FROM explanations"))
    finally:
        db.close()


def test_neuronpedia_export_carries_the_explanations_and_they_import_back(explained_run, tmp_path):
    out = export_run(explained_run, format="neuronpedia", out=tmp_path / "np")
    sources = json.loads((out / EXPORT_MANIFEST_NAME).read_text())["neuronpedia"]["sources"]
    stored = explanations_of(explained_run)
    for index, (source, revision) in enumerate(zip(sources, REVISIONS)):
        lines = (out / source["folder"] / "explanations" / "batch-0.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert source["explanations"] == len(records) == 2 * 32  # its own reading's and the code's, per feature
        for record in records:
            assert list(record) == NP_EXPLANATION_COLUMNS
            assert record["modelId"] == "suite" and record["layer"] == f"0-res-crosslens__{revision}"
            assert isinstance(record["index"], str) and record["explanationModelName"] == "synthetic"
        code = {(int(r["index"]), r["description"]) for r in records if r["typeName"] == "crosslens-explain-1-code"}
        own = {(int(r["index"]), r["description"]) for r in records if r["typeName"] == "crosslens-explain-1"}
        assert code == {(f, t) for f, s, t in stored if s == -1}
        assert own == {(f, t) for f, s, t in stored if s == index}

    again = export_run(explained_run, format="neuronpedia", out=tmp_path / "np2")
    assert tf.tree_bytes(again) == tf.tree_bytes(out)  # the same explanations, the same bytes

    (explained_run / EXPLANATIONS_NAME).unlink()
    summary = import_explanations(explained_run, out, ExplainConfig(progress=False))
    assert (summary.format, summary.added, summary.read) == ("neuronpedia", 4 * 32, 4 * 32)  # the code's read once
    assert explanations_of(explained_run) == stored  # the code's explanation once, however many sources carry it


def test_explanations_of_another_feature_database_are_not_exported(explained_run, tmp_path):
    seed_database(explained_run, seed=5)  # crosslens dashboards rebuilt it
    with pytest.raises(ExportError) as error:
        export_run(explained_run, format="neuronpedia", out=tmp_path / "np")
    assert "another feature database" in str(error.value) and "move it aside" in str(error.value)
    assert not (tmp_path / "np").exists()


def sources_of(run) -> set[str]:
    db = sqlite3.connect(run / EXPLANATIONS_NAME)
    try:
        return {source for (source,) in db.execute("SELECT DISTINCT source FROM explanations")}
    finally:
        db.close()


def test_an_export_of_another_crosscoder_is_refused_and_one_no_manifest_vouches_for_is_neuronpedias(
    explained_run, tmp_path
):
    out = export_run(explained_run, format="neuronpedia", out=tmp_path / "np")
    (explained_run / EXPLANATIONS_NAME).unlink()
    settings = ExplainConfig(progress=False)

    other = tmp_path / "above" / "other"  # the export of a crosscoder of the same shape, other weights
    shutil.copytree(out, other)
    record = json.loads((other / EXPORT_MANIFEST_NAME).read_text())
    record["crosscoder_weights_sha256"] = "5" * 64
    (other / EXPORT_MANIFEST_NAME).write_text(json.dumps(record))
    batch = next(other.glob("*/explanations/batch-0.jsonl"))
    for given in (other, batch, other.parent):  # the export, a file inside it, a folder holding it
        with pytest.raises(ExplainError) as error:
            import_explanations(explained_run, given, settings)
        message = str(error.value)
        assert "\n" not in message and str(other / EXPORT_MANIFEST_NAME) in message
        assert (
            "another crosscoder (555555555555...)" in message and "crosslens export RUN --format neuronpedia" in message
        )
    assert not (explained_run / EXPLANATIONS_NAME).exists()  # refused before the file was made

    loose = tmp_path / "loose.jsonl"  # the same rows with nothing that ties them to this crosscoder
    shutil.copy(out / batch.relative_to(other), loose)
    summary = import_explanations(explained_run, loose, settings)
    assert (summary.added, summary.unverified) == (2 * 32, 2 * 32)
    assert sources_of(explained_run) == {"neuronpedia"}

    (explained_run / EXPLANATIONS_NAME).unlink()
    summary = import_explanations(explained_run, out / batch.relative_to(other), settings)  # inside this run's export
    assert (summary.added, summary.unverified) == (2 * 32, 0)
    assert sources_of(explained_run) == {"crosslens"}
