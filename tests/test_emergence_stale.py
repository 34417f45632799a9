"""A run's emergence check written again, after or beside what was read from it: the feature
database built before it (browse, export, ``dashboards``), a dashboards pass stopped before it, a
report rebuilt without the store it was measured with, and a lineage agreement of another store.

The run is :mod:`test_emergence_surfaces`'s: analysed with loose lines (events to carry) and its
feature database built.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3

import pytest
import trust_fixtures as tf
from test_cli import one_line_error
from test_emergence_surfaces import DASHBOARDS, run  # noqa: F401  (run: a fixture)

from crosslens.activations import ActivationStore
from crosslens.analysis import analyze_crosscoder
from crosslens.analysis.emergence_record import EMERGENCE_KEY, read_emergence, save_run_emergence
from crosslens.browser import BrowseConfig, make_server
from crosslens.browser.database import DatabaseProblem
from crosslens.cli import main
from crosslens.core.hashing import file_sha256
from crosslens.core.paths import EMERGENCE_NAME, EMERGENCE_TENSORS_NAME, REPORT_NAME
from crosslens.core.sealed import read_sealed, write_sealed
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.dashboards import DashboardsConfig, DashboardsInterrupted, StaleDatabaseError, compute_dashboards, schema
from crosslens.dashboards import compute as compute_module
from crosslens.exports import ExportError, export_run

SCALED = "Latent scaling fits each latent"
"""The report's emergence section where latent scaling measured the check."""


def _store(run_dir):
    return ActivationStore.open(run_dir.parent / "store")


def _fewer_events(result):
    """``result`` with its first lineage event left out: a check `crosslens analyze` could write next."""
    return dataclasses.replace(result, lineage=dataclasses.replace(result.lineage, events=result.lineage.events[1:]))


def _compute(run_dir, **overrides):
    config = DashboardsConfig(**{**DASHBOARDS, **overrides})
    return compute_dashboards(run_dir, config=config, device="cpu", progress=False)


def _events(run_dir) -> list[tuple]:
    db = sqlite3.connect(run_dir / schema.DATABASE_NAME)
    try:
        return db.execute(
            "SELECT kind, snapshot, before, after FROM lineage_events WHERE held ORDER BY event"
        ).fetchall()
    finally:
        db.close()


def test_a_database_built_before_the_check_was_written_again_is_refused_until_rebuilt(run, tmp_path, capsys):  # noqa: F811
    run_dir, result = run
    copy = tf.copy_tree(run_dir, tmp_path / "run")
    database = (copy / schema.DATABASE_NAME).read_bytes()
    fewer = _fewer_events(result)
    save_run_emergence(copy, fewer, _store(run_dir))  # `crosslens analyze` ran again after `dashboards`
    fix = f"rebuild it with `crosslens dashboards {copy} --overwrite`"
    why = f"holds an earlier emergence check than {copy / EMERGENCE_NAME}"

    with pytest.raises(ExportError) as refused:
        export_run(copy, format="neuronpedia", out=tmp_path / "np")
    message = str(refused.value)
    assert "\n" not in message and why in message and fix in message
    err = one_line_error(["export", str(copy), "--format", "neuronpedia", "--out", str(tmp_path / "np2")], capsys)
    assert why in err and fix in err
    assert not (tmp_path / "np").exists() and not (tmp_path / "np2").exists()
    with pytest.raises(DatabaseProblem, match="holds an earlier emergence check") as refused:
        make_server(copy, BrowseConfig(port=0))
    assert fix in str(refused.value)
    with pytest.raises(StaleDatabaseError, match="pass --overwrite to replace it") as refused:
        _compute(copy)
    assert why in str(refused.value)
    assert (copy / schema.DATABASE_NAME).read_bytes() == database  # nothing written lost

    (copy / EMERGENCE_NAME).rename(tmp_path / EMERGENCE_NAME)  # and one whose check is gone
    with pytest.raises(ExportError, match=f"holds the emergence check of {copy / EMERGENCE_NAME}, which is gone"):
        export_run(copy, format="neuronpedia", out=tmp_path / "np")
    (tmp_path / EMERGENCE_NAME).rename(copy / EMERGENCE_NAME)

    _compute(copy, overwrite=True)
    want = [(e.kind, e.snapshot, json.dumps(e.before), json.dumps(e.after)) for e in fewer.lineage.events]
    assert _events(copy) == want
    flags = json.loads(
        (export_run(copy, format="neuronpedia", out=tmp_path / "np") / "emergence_flags.json").read_text()
    )
    assert flags["record"] == file_sha256(copy / EMERGENCE_NAME)
    make_server(copy, BrowseConfig(port=0)).server_close()


def test_a_database_built_without_a_check_is_refused_once_analyze_wrote_one(run, tmp_path):  # noqa: F811
    run_dir, result = run
    copy = tf.copy_tree(run_dir, tmp_path / "run")
    (copy / EMERGENCE_NAME).unlink()
    _compute(copy, overwrite=True)
    make_server(copy, BrowseConfig(port=0)).server_close()
    save_run_emergence(copy, result, _store(run_dir))
    with pytest.raises(ExportError, match=f"was built without the emergence check {copy / EMERGENCE_NAME} holds now"):
        export_run(copy, format="neuronpedia", out=tmp_path / "np")


def test_a_pass_stopped_before_analyze_wrote_the_check_again_goes_on(run, tmp_path, monkeypatch, capsys):  # noqa: F811
    """The check only fills the emergence tables: the saved pass continues, and the database holds
    the check written last."""
    run_dir, result = run
    copy = tf.copy_tree(run_dir, tmp_path / "run")
    real, calls = compute_module.apply_updates, {"n": 0}

    def stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    for name in (schema.DATABASE_NAME, schema.RECORD_NAME):  # the run's first pass
        (copy / name).unlink()
    monkeypatch.setattr(compute_module, "apply_updates", stop)
    with pytest.raises(DashboardsInterrupted):
        _compute(copy)
    monkeypatch.setattr(compute_module, "apply_updates", real)
    fewer = _fewer_events(result)
    save_run_emergence(copy, fewer, _store(run_dir))
    capsys.readouterr()
    _compute(copy)
    assert "continuing the saved pass at" in capsys.readouterr().out
    assert not (copy / "dashboards.partial").exists()
    assert len(_events(copy)) == len(fewer.lineage.events)
    record = json.loads((copy / schema.RECORD_NAME).read_text())
    assert record["partners"]["emergence"] == file_sha256(copy / EMERGENCE_NAME)
    export_run(copy, format="neuronpedia", out=tmp_path / "np")


def test_a_report_without_the_store_keeps_the_check_measured_with_it(tmp_path, capsys):
    """`crosslens report` rebuilds the report from what is on disk: where the store latent scaling read
    is gone, the saved check is neither replaced by one without latent scaling nor left out."""
    tf.write_suite(tmp_path / "suite")
    tf.harvest(tmp_path / "suite", tmp_path / "store")
    run = tmp_path / "run"
    tf.train(tmp_path / "store", run)
    main(["analyze", "--crosscoder", str(run), "--device", "cpu"])  # on the store the run trained on
    saved, measured = (run / EMERGENCE_NAME).read_bytes(), read_emergence(run)
    assert measured.check is not None and SCALED in (run / REPORT_NAME).read_text()
    shutil.move(tmp_path / "store", tmp_path / "moved")
    capsys.readouterr()
    main(["report", str(run), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert f"emergence check and lineage: kept {run / EMERGENCE_NAME}, which latent scaling measured on a store" in (
        printed
    )
    assert f"emergence check (latent scaling on {measured.scaling.n_tokens:,} tokens)" in printed
    assert (run / EMERGENCE_NAME).read_bytes() == saved
    page = (run / REPORT_NAME).read_text()
    assert SCALED in page and "Latent scaling was not run" not in page
    (run / EMERGENCE_TENSORS_NAME).unlink()  # a check whose tables are gone is not said to be kept
    main(["report", str(run), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "kept" not in printed and "the check latent scaling measured on a store could not be read" in printed
    assert "Latent scaling was not run" in (run / REPORT_NAME).read_text() and read_emergence(run).check is None


def test_analyze_without_the_store_says_it_replaces_a_record_it_cannot_read(tmp_path, capsys):
    """A saved record whose seal is broken, or of an older format, is there but cannot be read: it may
    hold a check latent scaling measured on a store, which an analysis without one cannot measure
    again. It is replaced, as before, and the analysis says so, naming --store."""
    tf.write_suite(tmp_path / "suite")
    tf.harvest(tmp_path / "suite", tmp_path / "store")
    run = tmp_path / "run"
    tf.train(tmp_path / "store", run)
    main(["analyze", "--crosscoder", str(run), "--device", "cpu"])  # on the store the run trained on
    record = read_sealed(run / EMERGENCE_NAME, EMERGENCE_KEY)
    shutil.move(tmp_path / "store", tmp_path / "moved")
    damaged = json.loads((run / EMERGENCE_NAME).read_text())
    damaged["counts"]["contested"] += 1  # the seal no longer matches
    older = {k: v for k, v in record.items() if k != EMERGENCE_KEY} | {"format": "crosslens.emergence/1"}
    for write in (
        lambda: (run / EMERGENCE_NAME).write_text(json.dumps(damaged)),
        lambda: write_sealed(run / EMERGENCE_NAME, older, EMERGENCE_KEY),
    ):
        write()
        capsys.readouterr()
        main(["analyze", "--crosscoder", str(run), "--device", "cpu"])
        printed = capsys.readouterr().out
        assert (
            "emergence check and lineage: the saved record could not be read (its seal is broken, or an older "
            in printed
        )
        assert f"replaced by this analysis's, without latent scaling: {run / EMERGENCE_NAME}; pass --store" in printed
        assert "kept" not in printed and read_emergence(run).check is None
    capsys.readouterr()
    main(["analyze", "--crosscoder", str(run), "--device", "cpu"])  # a readable record without latent scaling
    assert f"emergence check and lineage: {run / EMERGENCE_NAME}\n" in capsys.readouterr().out


def test_the_database_and_a_report_without_the_store_class_dead_latents_as_the_check_did(tmp_path, capsys):
    """The check reads a latent as dead where it did not fire on analyze's sample of tokens; the
    feature database (whose pass reads other tokens, and more) and a report rebuilt without the store
    class latents by that same firing, so a latent is not dead in the report and persistent there."""
    tf.write_suite(tmp_path / "suite")
    store = tf.harvest(tmp_path / "suite", tmp_path / "store")
    run = tmp_path / "run"
    tf.train(tmp_path / "store", run)
    crosscoder = load_crosscoder_folder(run / "final", device="cpu")
    analysis, _ = analyze_crosscoder(crosscoder, store=store, n_frequency_tokens=2, progress=False)
    save_run_emergence(run, analysis.emergence, store)
    _compute(run)
    db = sqlite3.connect(run / schema.DATABASE_NAME)
    classes, density = zip(*db.execute("SELECT class, density FROM features ORDER BY feature").fetchall())
    db.close()
    dead = [f for f, c in enumerate(analysis.classes) if c == "dead"]
    assert dead and any(density[f] > 0 for f in dead)  # firing in the pass, not on analyze's sample
    assert list(classes) == list(analysis.classes)

    shutil.move(tmp_path / "store", tmp_path / "moved")
    capsys.readouterr()
    main(["report", str(run), "--device", "cpu"])
    printed = capsys.readouterr().out
    counts = ", ".join(f"{name} {n}" for name, n in analysis.class_counts().items())
    assert f"feature classes: {counts}\n" in printed
    assert "its dead features are those of the saved emergence check's firing frequencies" in printed
