"""The emergence check and lineage where users look: saved beside the run by ``analyze``, read into
the feature database by ``dashboards`` (refused before the pass when it is of another crosscoder),
served by ``browse`` (the list's filters, a feature's curves and relatives, in Chromium) and carried
by ``export --format neuronpedia``.

A tiny trained run (3 snapshots, 32 latents, 40 steps) whose latents all read as present from the
first snapshot; the check's settings are set so that it has verdicts and events to carry (presence
by latent scaling only near each latent's largest amplitude, a one-snapshot margin, lineage's
cosines low, its events kept where the activations do not hold them), since what is tested here is
the carrying, not the method.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sqlite3
import threading
import urllib.request
from pathlib import Path

import pytest
import torch
import trust_fixtures as tf
from safetensors.torch import load_file, save_file
from test_browser import driver, open_page, serving, wait_for  # noqa: F401  (driver: Chromium, a fixture)

from crosslens.activations import ActivationStore, harvest_activations
from crosslens.analysis import EvolutionAnalysis, analyze_crosscoder
from crosslens.analysis.emergence_check import EmergenceCheckConfig
from crosslens.analysis.emergence_record import (
    EmergenceRecordError,
    LineageAgreement,
    compute_emergence,
    read_emergence,
    save_run_emergence,
)
from crosslens.analysis.lineage_events import LineageConfig, LineageEvent, counts_text, first_snapshot_events
from crosslens.analysis.scaling import LatentScalingConfig, latent_scaling
from crosslens.browser import BrowseConfig, make_server
from crosslens.checkpoints import CheckpointSuite
from crosslens.core.errors import PartnerMismatchError
from crosslens.core.hashing import AGREEMENT_READING, crosscoder_sha256, file_sha256
from crosslens.core.paths import EMERGENCE_NAME, EMERGENCE_TENSORS_NAME, REPORT_NAME
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.dashboards import DashboardsConfig, DashboardsError, compute_dashboards, schema
from crosslens.exports import export_run

LOOSE = dict(
    check_config=EmergenceCheckConfig(
        presence_threshold=0.95, fade_threshold=0.9, contested_margin=1, min_fire=2, min_t=0
    ),
    lineage_config=LineageConfig(
        same_cosine=0.3, apart_cosine=0.1, successor_cosine=0.2, min_snapshots=1, held_by_activations=False
    ),
    scaling_config=LatentScalingConfig(n_tokens=4096),
)
DASHBOARDS = dict(top_k=3, n_quantile=2, window=2, reservoir=4, batch_size=48, n_bins=8, n_logits=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run, analysed (its check saved), with its feature database."""
    root = tmp_path_factory.mktemp("emergence")
    tf.write_suite(root / "suite")
    tf.harvest(root / "suite", root / "store")
    tf.train(root / "store", root / "run", architecture="jumprelu_crosscoder")
    crosscoder = load_crosscoder_folder(root / "run" / "final", device="cpu")
    store = ActivationStore.open(root / "store")
    analysis, report = analyze_crosscoder(crosscoder, store=store, progress=False, **LOOSE)
    save_run_emergence(root / "run", analysis.emergence, store)
    report.write(root / "run" / "report.html")
    compute_dashboards(root / "run", config=DashboardsConfig(**DASHBOARDS), device="cpu", progress=False)
    return root / "run", analysis.emergence


def test_the_saved_check_reads_back_whole(run):
    run_dir, result = run
    again = read_emergence(run_dir)
    assert torch.equal(again.check.contested, result.check.contested)
    assert torch.equal(again.check.scaled_emergence, result.check.scaled_emergence)
    assert again.check.early_presence == result.check.early_presence
    assert torch.equal(again.scaling.amplitude, result.scaling.amplitude)
    assert again.lineage.events == result.lineage.events and torch.equal(
        again.lineage.relatives, result.lineage.relatives
    )
    assert again.summary() == result.summary()
    assert result.check.counts()["contested"] > 0 and result.lineage.events  # the loose settings give both


def test_the_events_the_activations_do_not_hold_are_set_aside_and_read_back(run, tmp_path):
    run_dir, result = run
    copy = tf.copy_tree(run_dir, tmp_path / "run")
    store = ActivationStore.open(run_dir.parent / "store")
    crosscoder = load_crosscoder_folder(copy / "final", device="cpu")
    held_config = dataclasses.replace(LOOSE["lineage_config"], held_by_activations=True)
    analysis, _ = analyze_crosscoder(
        crosscoder, store=store, progress=False, **{**LOOSE, "lineage_config": held_config}
    )
    held = analysis.emergence.lineage
    # the strict presence line holds few latents: some events go aside, and the two lists part the decoder's
    assert held.set_aside and len(held.events) + len(held.set_aside) == len(result.lineage.events)
    assert sorted(held.events + held.set_aside, key=result.lineage.events.index) == result.lineage.events
    assert f"({len(held.set_aside)} more read from decoder rows the activations do not hold, set aside)" in (
        analysis.emergence.summary()
    )
    save_run_emergence(copy, analysis.emergence, store)
    again = read_emergence(copy)
    assert again.lineage.set_aside == held.set_aside and again.lineage.events == held.events
    assert again.summary() == analysis.emergence.summary()
    assert result.lineage.set_aside == [] and "set aside" not in result.summary()


def test_the_summary_and_the_report_count_events_among_latents_strongest_at_the_first_snapshot(run):
    run_dir, result = run
    counts = result.lineage.counts()
    d_sae = result.lineage.relatives.shape[0]
    every = result.summary(torch.zeros(d_sae, dtype=torch.long))  # every latent peaks at the first snapshot
    line = every.splitlines()[-1]
    assert line == (
        f"  of them, joining latents strongest at step {result.steps[0]}"
        + (" (the untrained model)" if result.steps[0] == 0 else "")
        + f": {counts_text(counts)}"
    )
    assert every.startswith(result.summary())
    assert result.summary(torch.ones(d_sae, dtype=torch.long)) == result.summary()  # none does: no line
    # one event's latents, and only those, strongest at the first snapshot
    event = result.lineage.events[0]
    peak_F = torch.ones(d_sae, dtype=torch.long)
    peak_F[list(event.latents)] = 0
    first = first_snapshot_events(result.lineage.events, peak_F)
    assert first[event.kind] >= 1 and sum(first.values()) == sum(
        set(e.latents) <= set(event.latents) for e in result.lineage.events
    )
    # the report says it in the lineage paragraph where the run's own peaks give any
    analysis = EvolutionAnalysis.from_crosscoder(load_crosscoder_folder(run_dir / "final", device="cpu"), result.steps)
    own = first_snapshot_events(result.lineage.events, analysis.lifetimes.peak)
    html = (run_dir / "report.html").read_text()
    assert ("Of them, joining latents strongest at step" in html) == any(own.values())


def test_the_database_holds_the_check_and_lineage(run):
    run_dir, result = run
    db = sqlite3.connect(run_dir / schema.DATABASE_NAME)
    check = result.check
    contested = dict(db.execute("SELECT feature, contested FROM emergence WHERE contested IS NOT NULL").fetchall())
    assert contested == {f: check.direction(f) for f in check.contested_features()}
    scaled = dict(db.execute("SELECT feature, scaled_snapshot FROM emergence").fetchall())
    assert all(scaled[f] == (None if int(e) < 0 else int(e)) for f, e in enumerate(check.scaled_emergence.tolist()))
    presence = db.execute("SELECT presence FROM emergence_snapshots ORDER BY feature, snapshot").fetchall()
    assert [round(p[0], 5) for p in presence] == [round(float(p), 5) for p in check.presence.flatten()]
    carrier = db.execute(
        "SELECT carrier, carrier_cosine FROM emergence_snapshots ORDER BY feature, snapshot"
    ).fetchall()
    expected = zip(result.scaling.carrier.flatten().tolist(), result.scaling.carrier_cosine.flatten().tolist())
    assert [(k, round(c, 5)) for k, c in carrier] == [(k if k >= 0 else None, round(c, 5)) for k, c in expected]
    events = db.execute("SELECT kind, snapshot, before, after FROM lineage_events ORDER BY event").fetchall()
    assert events == [(e.kind, e.snapshot, json.dumps(e.before), json.dumps(e.after)) for e in result.lineage.events]
    members = db.execute("SELECT count(*) FROM lineage_members").fetchone()[0]
    assert members == sum(len(e.latents) for e in result.lineage.events)
    relatives = db.execute("SELECT count(*) FROM relatives").fetchone()[0]
    assert relatives == int((result.lineage.relatives >= 0).sum())
    meta = json.loads(db.execute("SELECT value FROM meta WHERE key = 'emergence'").fetchone()[0])
    assert meta["counts"] == result.counts() and meta["n_tokens"] == result.scaling.n_tokens


def test_a_check_of_another_crosscoder_is_refused_before_the_pass(run, tmp_path):
    run_dir, _ = run
    copy = tf.copy_tree(run_dir, tmp_path / "run")
    database = (copy / schema.DATABASE_NAME).read_bytes()
    record = json.loads((copy / EMERGENCE_NAME).read_text())
    record["partners"]["crosscoder"] = "0" * 64
    from crosslens.core.sealed import write_sealed

    write_sealed(
        copy / EMERGENCE_NAME, {k: v for k, v in record.items() if k != "emergence_sha256"}, "emergence_sha256"
    )
    with pytest.raises(DashboardsError) as refused:
        compute_dashboards(copy, config=DashboardsConfig(**DASHBOARDS, overwrite=True), device="cpu", progress=False)
    message = str(refused.value)
    assert "\n" not in message and "computed for another crosscoder" in message
    assert f"run `crosslens analyze --crosscoder {copy}`" in message
    assert (copy / schema.DATABASE_NAME).read_bytes() == database  # nothing written lost
    (copy / EMERGENCE_TENSORS_NAME).write_bytes(b"damaged")
    with pytest.raises(EmergenceRecordError, match="missing or altered"):
        read_emergence(copy)
    # tables that lack what this version reads, sealed as they are, name the same fix
    tables = {k: v for k, v in load_file(str(run_dir / EMERGENCE_TENSORS_NAME)).items() if k != "scaling.carrier"}
    save_file(tables, str(copy / EMERGENCE_TENSORS_NAME))
    record["tensors_sha256"] = file_sha256(copy / EMERGENCE_TENSORS_NAME)
    record["partners"]["crosscoder"] = crosscoder_sha256(copy)
    write_sealed(
        copy / EMERGENCE_NAME, {k: v for k, v in record.items() if k != "emergence_sha256"}, "emergence_sha256"
    )
    with pytest.raises(
        EmergenceRecordError, match=r"lacks tables \(latent scaling tables missing: carrier\); run `crosslens analyze"
    ):
        read_emergence(copy)
    # lineage found under other rules (an earlier version's, without a line this one draws) is found again
    record["partners"]["crosscoder"] = crosscoder_sha256(copy)
    save_file(load_file(str(run_dir / EMERGENCE_TENSORS_NAME)), str(copy / EMERGENCE_TENSORS_NAME))
    record["tensors_sha256"] = file_sha256(copy / EMERGENCE_TENSORS_NAME)
    earlier = {**record, "settings": {**record["settings"], "lineage": dict(record["settings"]["lineage"])}}
    del earlier["settings"]["lineage"]["max_shared"]
    write_sealed(
        copy / EMERGENCE_NAME, {k: v for k, v in earlier.items() if k != "emergence_sha256"}, "emergence_sha256"
    )
    with pytest.raises(
        EmergenceRecordError,
        match=r"lineage found under other rules than this crosslens's \(without max_shared\); run `crosslens analyze",
    ):
        read_emergence(copy)
    # the same for the check's and latent scaling's settings, read through the same door
    for section, what in (("check", "an emergence check"), ("latent_scaling", "latent scaling")):
        other = {**record, "settings": {**record["settings"], section: {**record["settings"][section], "unknown": 1}}}
        write_sealed(
            copy / EMERGENCE_NAME, {k: v for k, v in other.items() if k != "emergence_sha256"}, "emergence_sha256"
        )
        with pytest.raises(EmergenceRecordError, match=rf"{what} found under other rules .*\(with unknown\)"):
            read_emergence(copy)
    # a record of an older format is computed again: a /1 record's tables lack what this version
    # reads, and a /2 record's events can list latents the activations hold at no snapshot
    for older in ("crosslens.emergence/1", "crosslens.emergence/2"):
        record["format"] = older
        write_sealed(
            copy / EMERGENCE_NAME, {k: v for k, v in record.items() if k != "emergence_sha256"}, "emergence_sha256"
        )
        with pytest.raises(
            EmergenceRecordError,
            match=rf"not a crosslens.emergence/3 record \(it is '{older}', written under other rules\); "
            "run `crosslens analyze",
        ):
            read_emergence(copy)


def test_a_run_without_a_check_gets_empty_tables_and_the_command(run, tmp_path, capsys):
    run_dir, _ = run
    copy = tf.copy_tree(run_dir, tmp_path / "run")
    (copy / EMERGENCE_NAME).unlink()
    compute_dashboards(copy, config=DashboardsConfig(**DASHBOARDS, overwrite=True), device="cpu", progress=False)
    assert f"run `crosslens analyze --crosscoder {copy}` first" in capsys.readouterr().out
    db = sqlite3.connect(copy / schema.DATABASE_NAME)
    assert db.execute("SELECT count(*) FROM emergence").fetchone()[0] == 0
    assert db.execute("SELECT value FROM meta WHERE key = 'emergence'").fetchone()[0] == "null"
    with pytest.raises(EmergenceRecordError, match="has no emergence check"):
        read_emergence(copy)


def test_neuronpedia_export_carries_the_flags(run, tmp_path):
    run_dir, result = run
    out = export_run(run_dir, format="neuronpedia", out=tmp_path / "np")
    manifest = json.loads((out / "crosslens_export.json").read_text())
    assert manifest["neuronpedia"]["emergence_flags"] == "emergence_flags.json"
    flags = json.loads((out / "emergence_flags.json").read_text())
    labels = [
        s["revision"]
        for s in json.loads((run_dir / "final" / "cfg.json").read_text())["metadata"]["suite"]["snapshots"]
    ]
    for f in result.check.contested_features():
        entry = flags["features"][str(f)]
        assert entry["contested"] == result.check.direction(f)
        assert entry["latent_scaled_emergence"] == labels[int(result.check.scaled_emergence[f])]
    in_events = {f for e in result.lineage.events for f in e.latents}
    assert {f for f, entry in flags["features"].items() if entry["lineage"]} == {str(f) for f in in_events}
    assert flags["counts"] == result.counts()


@pytest.fixture(scope="module")
def server(run):
    with serving(run[0]) as server:
        yield server


def api(server, path: str):
    return json.loads(urllib.request.urlopen(server.url.rstrip("/") + path).read())


def test_the_api_filters_on_the_check_and_serves_a_features_relatives(run, server):
    _, result = run
    check = result.check
    summary = api(server, "/api/run")["emergence"]
    assert summary["computed"] and summary["latent_scaling"]
    page = api(server, "/api/features?contested=any&limit=500")
    assert sorted(r["feature"] for r in page["rows"]) == check.contested_features()
    assert all(r["contested"] == check.direction(r["feature"]) for r in page["rows"])
    kind = result.lineage.events[0].kind
    page = api(server, f"/api/features?lineage={kind}&limit=500")
    assert sorted(r["feature"] for r in page["rows"]) == sorted(
        {f for e in result.lineage.events if e.kind == kind for f in e.latents}
    )
    feature = result.lineage.events[0].latents[0]
    detail = api(server, f"/api/feature/{feature}")
    assert [e["kind"] for e in detail["lineage"]] == [e.kind for e in result.lineage.events_of(feature)]
    expected = [
        [int(r) for r in result.lineage.relatives[feature, s] if r >= 0] for s in range(check.presence.shape[1])
    ]
    assert [[r for r, _ in snapshot] for snapshot in detail["relatives"]] == expected
    with pytest.raises(urllib.error.HTTPError, match="400"):
        api(server, "/api/features?contested=sometimes")


def test_the_feature_page_draws_both_emergence_curves_and_links_relatives(run, server, driver):  # noqa: F811
    _, result = run
    check = result.check
    feature = check.contested_features()[0]
    open_page(driver, server, f"/feature/{feature}")
    wait_for(lambda: driver.execute_script("return document.body.dataset.reading") is not None, what="plots")
    traces = driver.execute_script(
        "return document.getElementById('plot-emergence').data.map(t => [t.name || '', t.y])"
    )
    presence = dict(traces)["latent-scaled presence"]
    assert presence == pytest.approx([round(float(p), 4) for p in check.presence[feature]], abs=1e-4)
    chip = driver.execute_script("return document.querySelector('#emergence-chip .chip').textContent")
    assert chip == f"contested: present {check.direction(feature)} by latent scaling"
    links = driver.execute_script(
        "return [...document.querySelectorAll('#relatives a')].map(a => a.getAttribute('href'))"
    )
    first = next(s for s in range(check.presence.shape[1]) if int(result.lineage.relatives[feature, s, 0]) >= 0)
    assert links[0] == f"/feature/{int(result.lineage.relatives[feature, first, 0])}?snapshot={first}"
    open_page(driver, server, "/?contested=any")
    wait_for(lambda: driver.execute_script("return document.querySelectorAll('table.features tbody tr').length") > 0)
    shown = driver.execute_script(
        "return [...document.querySelectorAll('table.features tbody tr')].map(r => Number(r.dataset.feature))"
    )
    assert sorted(shown) == check.contested_features()
    assert driver.execute_script("return document.getElementById('contested').value") == "any"
    chips = driver.execute_script("return [...document.querySelectorAll('table.features .chip.contested')].length")
    assert chips == len(check.contested_features())


def test_a_decoupled_early_presence_names_the_latents_that_carried_it(run, tmp_path, driver):  # noqa: F811
    _, result = run
    check, scaling = result.check, result.scaling
    # the carrying, not the method: a measured feature is recorded as present by latent scaling from
    # the first snapshot, by its decoder norm from the last, its early presence carried by others
    feature = int(check.measured.nonzero()[0])
    last = check.presence.shape[1] - 1
    early_presence = [("reconstruction" if f == feature else p) for f, p in enumerate(check.early_presence)]
    scaled = dataclasses.replace(
        check.scaled, emergence=check.scaled.emergence.clone().index_fill_(0, torch.tensor([feature]), 0)
    )
    recorded = dataclasses.replace(
        check,
        decoder_emergence=check.decoder_emergence.clone().index_fill_(0, torch.tensor([feature]), last),
        scaled=scaled,
        contested=check.contested.clone().index_fill_(0, torch.tensor([feature]), True),
        early_presence=early_presence,
    )
    copy = browsed_with(run, tmp_path, dataclasses.replace(result, check=recorded))
    # a latent under the carrier line points elsewhere: what it reconstructs was not counted, nor is it named
    nearest = [s for s in range(last) if int(scaling.carrier[feature, s]) >= 0]
    early = [s for s in nearest if float(scaling.carrier_cosine[feature, s]) >= check.config.carrier_cosine]
    with serving(copy) as server:
        open_page(driver, server, f"/feature/{feature}")
        wait_for(lambda: driver.execute_script("return document.body.dataset.reading") is not None, what="plots")
        note = driver.execute_script("return document.getElementById('emergence-note').textContent")
        links = driver.execute_script(
            "return [...document.querySelectorAll('#emergence-note a')].map(a => a.getAttribute('href'))"
        )
    assert "carried by other latents: decoupled (" in note and "points its way" in note
    assert early and links == [f"/feature/{int(scaling.carrier[feature, s])}?snapshot={s}" for s in early]
    assert len(early) < len(nearest)  # one nearest latent under the line is left out


def browsed_with(run, tmp_path, result) -> Path:
    """A copy of ``run``'s folder whose saved check and lineage are ``result``'s, its feature database
    computed again from them."""
    run_dir, _ = run
    copy = tf.copy_tree(run_dir, tmp_path / "run")
    save_run_emergence(copy, result, ActivationStore.open(run_dir.parent / "store"))
    compute_dashboards(copy, config=DashboardsConfig(**DASHBOARDS, overwrite=True), device="cpu", progress=False)
    return copy


def with_four_events(result, a: int, b: int, c: int):
    """``result``'s lineage with three held events among latents a, b and c, one of each reading
    (a split of a and b by divergence, a's handoff to c by succession, b's to a by a turn), and a
    merge of a and b set aside."""
    last = result.check.presence.shape[1] - 1
    events = [
        LineageEvent("split", 1, (a, b), (a, b), 0.3, "divergence"),
        LineageEvent("handoff", min(2, last), (a,), (c,), 0.8, "succession"),
        LineageEvent("handoff", last, (b,), (a,), 0.75, "turn"),
    ]
    aside = [LineageEvent("merge", 1, (a, b), (a, b), 0.95, "divergence")]
    return dataclasses.replace(result.lineage, events=events, set_aside=aside)


def test_the_feature_page_says_how_each_lineage_event_was_read(run, tmp_path, driver):  # noqa: F811
    """A feature's events read as parting, a fade into an emergence, or a handover to a latent that
    turned, each as lineage found it (``LineageEvent.how``); an event set aside (the activations do
    not hold it) is listed and marked there, and counted by no filter."""
    _, result = run
    a, b = (int(f) for f in result.check.measured.nonzero()[:2, 0])
    lineage = with_four_events(result, a, b, b)
    copy = browsed_with(run, tmp_path, dataclasses.replace(result, lineage=lineage))
    db = sqlite3.connect(copy / schema.DATABASE_NAME)
    assert db.execute("SELECT kind, held FROM lineage_events ORDER BY event").fetchall() == [
        ("split", 1),
        ("merge", 0),
        ("handoff", 1),
        ("handoff", 1),
    ]
    with serving(copy) as server:
        summary = api(server, "/api/run")["emergence"]
        merges = api(server, "/api/features?lineage=merge&limit=500")["rows"]
        listed = api(server, "/api/features?lineage=any&limit=500")["rows"]
        open_page(driver, server, f"/feature/{a}")
        wait_for(lambda: driver.execute_script("return document.querySelectorAll('#lineage-events li').length") == 4)
        items = driver.execute_script(
            "return [...document.querySelectorAll('#lineage-events li')]"
            ".map(li => [li.dataset.kind, li.dataset.held, li.textContent])"
        )
    assert summary["events"] == {"split": 1, "merge": 0, "handoff": 2} and summary["set_aside"] == 1
    flags = json.loads(
        (export_run(copy, format="neuronpedia", out=tmp_path / "np") / "emergence_flags.json").read_text()
    )
    assert [e["kind"] for e in flags["features"][str(a)]["lineage"]] == ["split", "handoff", "handoff"]
    assert merges == [] and sorted(r["feature"] for r in listed) == sorted({a, b})
    assert all("merge" not in r["lineage"] for r in listed)
    assert [(kind, held) for kind, held, _ in items] == [
        ("split", "true"),
        ("merge", "false"),
        ("handoff", "true"),
        ("handoff", "true"),
    ]
    assert "(coincide, then part, cosine 0.3)" in items[0][2] and "set aside" not in items[0][2]
    assert "(part, then coincide, cosine 0.95) set aside: the activations do not hold its latents there" in items[1][2]
    assert "(fade as others emerge, cosine 0.8)" in items[2][2]
    assert "(one fades or emerges as another turns, cosine 0.75)" in items[3][2]


def test_a_merge_not_checked_against_another_crosscoder_is_called_the_weakest_event(run, tmp_path, driver):  # noqa: F811
    """A held merge on a feature's page says a merge is the weakest of the three events (a reused
    latent ends on its partner's row too) and names the check, where none was made; a split does not."""
    _, result = run
    a, b = (int(f) for f in result.check.measured.nonzero()[:2, 0])
    events = [
        LineageEvent("split", 1, (a, b), (a, b), 0.3, "divergence"),
        LineageEvent("merge", 2, (a, b), (a, b), 0.95, "divergence"),
    ]
    lineage = dataclasses.replace(result.lineage, events=events, set_aside=[])
    copy = browsed_with(run, tmp_path, dataclasses.replace(result, lineage=lineage))
    with serving(copy) as server:
        open_page(driver, server, f"/feature/{a}")
        wait_for(lambda: driver.execute_script("return document.querySelectorAll('#lineage-events li').length") == 2)
        items = driver.execute_script(
            "return [...document.querySelectorAll('#lineage-events li')].map(li => [li.dataset.kind, li.textContent])"
        )
    assert [kind for kind, _ in items] == ["split", "merge"]
    assert "weakest" not in items[0][1]
    assert (
        "a merge is the weakest of the three events: a latent reused after the feature it carried fades also ends on "
        "its partner's row; crosslens analyze --lineage-against RUN checks it against another crosscoder"
    ) in items[1][1]


def test_a_split_by_composition_is_kept_with_its_children_and_read_as_such(run, tmp_path, driver):  # noqa: F811
    """A split by composition keeps its children's terms through the emergence record and the feature
    database into the Neuronpedia flags, and a feature's page says how it was read (the parent turning beside latents born
    there, a child its row summed with one of theirs) and each child's terms, each latent a link."""
    _, result = run
    a, b = (int(f) for f in result.check.measured.nonzero()[:2, 0])
    split = LineageEvent("split", 1, (a,), (a, b), 0.4, "composition", composed=(((a, 1.0),), ((a, 2.5), (b, 1.5))))
    lineage = dataclasses.replace(result.lineage, events=[split], set_aside=[])
    copy = browsed_with(run, tmp_path, dataclasses.replace(result, lineage=lineage))
    assert read_emergence(copy).lineage.events == [split]
    with serving(copy) as server:
        listed = api(server, f"/api/feature/{b}")["lineage"]
        open_page(driver, server, f"/feature/{b}")
        wait_for(lambda: driver.execute_script("return document.querySelectorAll('#lineage-events li').length") == 1)
        text = driver.execute_script("return document.querySelector('#lineage-events li').textContent")
        links = driver.execute_script(
            "return [...document.querySelectorAll('#lineage-events li a')].map(a => a.getAttribute('href'))"
        )
    assert [e["composed"] for e in listed] == [[[[a, 1.0]], [[a, 2.5], [b, 1.5]]]]
    flags = json.loads(
        (export_run(copy, format="neuronpedia", out=tmp_path / "np") / "emergence_flags.json").read_text()
    )
    assert flags["features"][str(b)]["lineage"][0]["children"] == [[[a, 1.0]], [[a, 2.5], [b, 1.5]]]
    assert (
        "(the parent turns as latents born beside it fire with it; a child is its row summed with one of theirs, "
        f"cosine 0.4) children: 1 \u00d7 #{a}; 2.5 \u00d7 #{a} + 1.5 \u00d7 #{b}" in text
    )
    assert links[-3:] == [f"/feature/{a}?snapshot=1", f"/feature/{a}?snapshot=1", f"/feature/{b}?snapshot=1"]


def test_the_feature_page_marks_events_among_latents_strongest_at_the_first_snapshot(run, tmp_path, driver):  # noqa: F811
    """An event whose latents all peak at the first snapshot (step 0: the untrained model) is marked on a
    feature's page, from the database's peaks; one with a latent that peaks later is not."""
    run_dir, result = run
    analysis = EvolutionAnalysis.from_crosscoder(load_crosscoder_folder(run_dir / "final", device="cpu"), result.steps)
    measured = result.check.measured.nonzero().flatten().tolist()
    early = [i for i in measured if int(analysis.lifetimes.peak[i]) == 0]
    later = [i for i in measured if int(analysis.lifetimes.peak[i]) > 0]
    (p, q), r = early[:2], later[0]
    events = [
        LineageEvent("split", 1, (p, q), (p, q), 0.3, "divergence"),
        LineageEvent("handoff", 1, (p,), (r,), 0.8, "succession"),
    ]
    lineage = dataclasses.replace(result.lineage, events=events, set_aside=[])
    copy = browsed_with(run, tmp_path, dataclasses.replace(result, lineage=lineage))
    with serving(copy) as server:
        flags = [(e["kind"], e["first_snapshot"]) for e in api(server, f"/api/feature/{p}")["lineage"]]
        open_page(driver, server, f"/feature/{p}")
        wait_for(lambda: driver.execute_script("return document.querySelectorAll('#lineage-events li').length") == 2)
        items = driver.execute_script(
            "return [...document.querySelectorAll('#lineage-events li')].map(li => [li.dataset.first, li.textContent])"
        )
    assert flags == [("split", True), ("handoff", False)]
    assert [first for first, _ in items] == ["true", "false"]
    untrained = ", the untrained model, where a latent carries a single token's direction"
    assert "its latents are all strongest at " in items[0][1] and (untrained in items[0][1]) == (result.steps[0] == 0)
    assert "strongest at" not in items[1][1]


def test_the_report_has_the_section_and_the_flow_picture(run):
    run_dir, result = run
    html = (run_dir / "report.html").read_text()
    section = html[html.index('id="is-this-emergence-real-latent-scaling-and-lineage"') :]
    counts = result.check.counts()
    assert f"Of {counts['measured']} measured live latents, {counts['contested']} have emergences" in section
    assert "Lineage events" in section and "one lane per latent" in section
    assert "crosslens analyze --lineage-against RUN (lineage_agreement in Python) counts the events" in section
    assert result.lineage.counts()["merge"] > 0 and "A merge is the weakest of the three events" in section
    # the lanes: the largest family's latents label the picture's rows, and every event kind drawn is named
    largest = result.lineage.families()[0]
    lanes = re.search(r'"ticktext":\[("#\d+"(?:,"#\d+")*)\]', section)
    assert lanes is not None and {f'"#{i}"' for i in largest} <= set(lanes.group(1).split(","))
    drawn = {kind for kind, n in result.lineage.counts().items() if n}
    assert all(f'"name":"{kind}s"' in section for kind in drawn)
    # the widest disagreement in a panel of its own, titled with both readings' steps
    check, steps = result.check, result.steps
    widest = max(check.contested_features(), key=lambda i: (abs(int(check.disagreement[i])), -i))
    decoder, scaled = int(check.decoder_emergence[widest]), int(check.scaled_emergence[widest])
    assert f"#{widest}: step {steps[decoder]} by decoder norm, step {steps[scaled]} by latent scaling" in section
    # the agreement heatmap prints each cell's count
    from_start = int(((check.decoder_emergence == 0) & (check.scaled_emergence == 0) & check.measured).sum())
    assert f'"text":[["{from_start}"' in section
    first = result.lineage.events[0]
    assert f'<a class="feature-link" href="feature/{first.before[0]}">{first.before[0]}</a>' in section
    events = result.lineage.counts()
    assert f"live latents: {counts_text(events, last=' and ')}. A split" in section


def test_a_store_of_other_snapshots_or_another_hook_is_refused_in_one_line(run, tmp_path):
    run_dir, _ = run
    root = run_dir.parent
    crosscoder = load_crosscoder_folder(run_dir / "final", device="cpu")
    other_hook = tf.harvest(root / "suite", tmp_path / "other-hook", hooks=tf.OTHER_HOOK)
    with pytest.raises(PartnerMismatchError) as refused:
        latent_scaling(crosscoder, other_hook)
    message = str(refused.value)
    assert "\n" not in message and f"pass a store harvested with --hook {tf.HOOK}" in message
    fewer = CheckpointSuite.local(root / "suite").select(indices=[0, 1])
    harvest_activations(fewer, tf.HOOK, tf.token_table(), tmp_path / "fewer", shard_tokens=80, progress=False)
    with pytest.raises(PartnerMismatchError, match=r"do not match: snapshots .*crosslens harvest"):
        latent_scaling(crosscoder, ActivationStore.open(tmp_path / "fewer"))


def test_the_check_without_its_evolution_analysis_names_the_fix(run):
    run_dir, _ = run
    crosscoder = load_crosscoder_folder(run_dir / "final", device="cpu")
    with pytest.raises(
        ValueError, match=r"pass the crosscoder's EvolutionAnalysis \(EvolutionAnalysis.from_crosscoder"
    ):
        compute_emergence(crosscoder, None)


def test_another_crosscoder_s_agreement_is_stored_filtered_shown_and_exported(run, tmp_path, driver):  # noqa: F811
    """The agreement ``analyze --lineage-against`` measures travels with the emergence record into the
    feature database (a held event's, NULL for one set aside or with nothing to look for), the
    list's filter (made there too, or not, of one kind or any), a feature's page and the flags."""
    run_dir, result = run
    a, b, c = (int(f) for f in result.check.measured.nonzero()[:3, 0])
    lineage = with_four_events(result, a, b, c)
    referee = tf.copy_tree(run_dir, tmp_path / "referee-relu")  # a run whose crosscoder is the one measured
    agreement = LineageAgreement(
        str(referee), crosscoder_sha256(referee), 0.5, [0.5, 0.2, float("nan")]
    )  # 0.5: on the line, made
    copy = tf.copy_tree(run_dir, tmp_path / "run")
    store = ActivationStore.open(run_dir.parent / "store")
    before = [(copy / name).read_bytes() for name in (EMERGENCE_NAME, EMERGENCE_TENSORS_NAME)]
    with pytest.raises(ValueError, match=r"holds 2 values for 3 events: measure it on this lineage"):
        save_run_emergence(
            copy,
            dataclasses.replace(result, lineage=lineage, agreement=dataclasses.replace(agreement, agreement=[1, 0])),
        )
    assert [(copy / name).read_bytes() for name in (EMERGENCE_NAME, EMERGENCE_TENSORS_NAME)] == before
    save_run_emergence(copy, dataclasses.replace(result, lineage=lineage, agreement=agreement), store)
    back = read_emergence(copy).agreement
    assert (back.against, back.crosscoder_sha256, back.line) == (agreement.against, crosscoder_sha256(referee), 0.5)
    assert back.agreement[:2] == [0.5, 0.2] and back.agreement[2] != back.agreement[2]  # NaN read back as NaN
    assert back.made() == [True, False, None]
    compute_dashboards(copy, config=DashboardsConfig(**DASHBOARDS, overwrite=True), device="cpu", progress=False)
    db = sqlite3.connect(copy / schema.DATABASE_NAME)
    stored = {
        (kind, json.loads(before)[0], held): a
        for kind, before, held, a in db.execute("SELECT kind, before, held, agreement FROM lineage_events")
    }
    assert stored == {("split", a, 1): 0.5, ("merge", a, 0): None, ("handoff", a, 1): 0.2, ("handoff", b, 1): None}
    server = make_server(copy, BrowseConfig(port=0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        summary = api(server, "/api/run")["emergence"]["agreement"]
        listed = {
            query: sorted(r["feature"] for r in api(server, f"/api/features?{query}&limit=500")["rows"])
            for query in (
                "agreement=made",
                "agreement=not+made",
                "agreement=made&lineage=handoff",
                "agreement=not+made&lineage=handoff",
            )
        }
        open_page(driver, server, f"/feature/{a}")
        wait_for(lambda: driver.execute_script("return document.querySelectorAll('#lineage-events li').length") == 4)
        items = driver.execute_script(
            "return [...document.querySelectorAll('#lineage-events li')].map(li => [li.dataset.agreement, li.textContent])"
        )
        open_page(driver, server, "/?agreement=made")
        wait_for(
            lambda: driver.execute_script("return document.querySelectorAll('table.features tbody tr').length") > 0
        )
        shown = driver.execute_script(
            "return [...document.querySelectorAll('table.features tbody tr')].map(r => Number(r.dataset.feature))"
        )
        chips = driver.execute_script(
            "return [...document.querySelectorAll('table.features tbody tr')].map(r => [Number(r.dataset.feature), "
            "[...r.querySelectorAll('.chip.lineage')].map(c => [c.textContent, c.className])])"
        )
        made_rows = api(server, "/api/features?agreement=made&limit=500")["rows"]
        filter_ = driver.execute_script(
            "const s = document.getElementById('agreement');"
            "return [s.value, s.disabled, [...s.options].map(o => o.textContent), document.getElementById('emergence-hint').textContent]"
        )
        # the counts follow the lineage filter's kind
        per_kind = driver.execute_script(
            "const l = document.getElementById('lineage'); l.value = 'handoff'; l.dispatchEvent(new Event('change'));"
            "return [[...document.getElementById('agreement').options].map(o => o.textContent),"
            " document.getElementById('agreement-hint').textContent]"
        )
        open_page(driver, server, "/?lineage=handoff")  # the kind chosen by the URL
        wait_for(
            lambda: driver.execute_script("return document.querySelectorAll('table.features tbody tr').length") > 0
        )
        from_url = driver.execute_script("return document.getElementById('agreement-hint').textContent")
    finally:
        server.shutdown()
        server.server_close()
    assert summary["against"] == agreement.against and summary["line"] == 0.5
    assert summary["made"] == {"split": 1, "merge": 0, "handoff": 0}
    assert summary["read"] == {"split": 1, "merge": 0, "handoff": 1}
    assert listed == {
        "agreement=made": sorted({a, b}),
        "agreement=not+made": sorted({a, c}),
        "agreement=made&lineage=handoff": [],
        "agreement=not+made&lineage=handoff": sorted({a, c}),
    }
    assert sorted(shown) == sorted({a, b})
    # a split made there too; a's handoffs: one not made, one with nothing to look for; b's: the latter
    assert {r["feature"]: r["lineage_made"] for r in made_rows} == {
        a: {"handoff": False, "split": True},
        b: {"handoff": None, "split": True},
    }
    assert dict(chips) == {
        a: [["handoff", "chip lineage unmade"], ["split", "chip lineage"]],
        b: [["handoff", "chip lineage"], ["split", "chip lineage"]],
    }
    assert filter_[:3] == ["made", False, ["(any)", "makes it too (1)", "does not make it (1)"]]
    assert "Lineage checked against referee-relu: 1 of 2 events made there too (agreement 0.5 or more)." in filter_[3]
    assert per_kind == [
        ["(any)", "makes it too (0)", "does not make it (1)"],
        "Lineage checked against referee-relu: 0 of 1 handoff made there too (agreement 0.5 or more).",
    ]
    assert from_url == per_kind[1]
    by_value = sorted(items)
    assert [value for value, _ in by_value] == ["", "", "0.2", "0.5"]
    assert by_value[3][1].endswith("made by referee-relu's crosscoder too (agreement 0.5)")
    assert by_value[2][1].endswith("not made by referee-relu's crosscoder (agreement 0.2, under 0.5)")
    unread = [text for value, text in by_value[:2] if "set aside" not in text]
    aside = [text for value, text in by_value[:2] if "set aside" in text]
    assert len(unread) == len(aside) == 1 and "referee-relu" not in aside[0]  # set aside: counted nowhere
    assert "not checked against referee-relu's crosscoder: no latent of it is present beside" in unread[0]
    flags = json.loads(
        (export_run(copy, format="neuronpedia", out=tmp_path / "np") / "emergence_flags.json").read_text()
    )
    assert flags["agreement"] == {
        "against": agreement.against,
        "crosscoder": crosscoder_sha256(referee),
        "line": 0.5,
        "reading": AGREEMENT_READING,
    }
    exported = {(e["kind"], e["before"][0]): e["agreement"] for e in flags["features"][str(a)]["lineage"]}
    assert exported == {("split", a): 0.5, ("handoff", a): 0.2, ("handoff", b): None}


def test_an_agreement_whose_crosscoder_was_trained_again_or_is_gone_is_left_out(run, tmp_path, driver, capsys):  # noqa: F811
    """After the feature database was built, the crosscoder the lineage was checked against is trained
    again, then moved away: browse (list, filter, feature page), the flags and a database built again
    leave the agreement out, each saying why, as analyze and report do."""
    run_dir, result = run
    a, b, c = (int(f) for f in result.check.measured.nonzero()[:3, 0])
    referee, copy = tf.copy_tree(run_dir, tmp_path / "referee-relu"), tf.copy_tree(run_dir, tmp_path / "run")
    agreement = LineageAgreement(str(referee), crosscoder_sha256(referee), 0.5, [0.5, 0.2, float("nan")])
    checked = dataclasses.replace(result, lineage=with_four_events(result, a, b, c), agreement=agreement)
    save_run_emergence(copy, checked, ActivationStore.open(run_dir.parent / "store"))
    compute_dashboards(copy, config=DashboardsConfig(**DASHBOARDS, overwrite=True), device="cpu", progress=False)
    (copy / REPORT_NAME).write_text("<html><body><h1>run</h1><h2>Lineage checked against referee</h2></body></html>")
    with serving(copy) as server:
        assert api(server, "/api/run")["emergence"]["agreement"]["made"]["split"] == 1  # held while unchanged
        assert b"report-notice" not in urllib.request.urlopen(server.url + "report").read()
    weights = referee / "final" / "sae_weights.safetensors"
    tensors = load_file(weights)
    save_file({**tensors, "b_dec": tensors["b_dec"] + 1}, weights)  # the referee trained again
    why = f"{referee}'s crosscoder was trained again since the lineage was checked against it"
    with serving(copy) as server:
        summary = api(server, "/api/run")["emergence"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            api(server, "/api/features?agreement=made")
        events = api(server, f"/api/feature/{a}")["lineage"]
        rows = api(server, "/api/features?lineage=any&limit=500")["rows"]
        open_page(driver, server, "/")
        wait_for(lambda: driver.execute_script("return document.getElementById('agreement').disabled"), what="off")
        hint = driver.execute_script("return document.getElementById('agreement-hint').textContent")
        driver.get(server.url + "report")  # a report written while it held says it no longer does
        wait_for(lambda: driver.execute_script("return document.readyState") == "complete", what="report")
        notice = driver.execute_script("return document.getElementById('report-notice').textContent")
    assert summary["agreement"] is None and summary["agreement_dropped"] == why
    assert refused.value.code == 400 and f"lineage agreement no longer holds ({why})" in refused.value.read().decode()
    assert {(e["agreement"], e["made"]) for e in events} == {(None, None)}
    assert {kind: made for r in rows for kind, made in r["lineage_made"].items()} == {"split": None, "handoff": None}
    assert hint.startswith(f"Lineage agreement left out: {why}. Measure it again with `crosslens analyze")
    assert notice == (
        f"The lineage agreement no longer holds: {why}. An agreement this report shows is out of date; "
        f"crosslens report {copy} writes the report again without it."
    )
    capsys.readouterr()
    flags = json.loads(
        (export_run(copy, format="neuronpedia", out=tmp_path / "np") / "emergence_flags.json").read_text()
    )
    assert (
        "agreement" not in flags
        and f"emergence_flags.json leaves out the lineage's agreement: {why}" in capsys.readouterr().out
    )
    assert all("agreement" not in e for f in flags["features"].values() for e in f["lineage"])

    shutil.move(referee, tmp_path / "moved")  # gone: a database built again holds no agreement
    compute_dashboards(copy, config=DashboardsConfig(**DASHBOARDS, overwrite=True), device="cpu", progress=False)
    gone = f"{referee}, which the lineage was checked against, holds no crosscoder now"
    assert (
        f"note: the feature database leaves out the lineage's agreement: {gone}; `crosslens analyze"
        in capsys.readouterr().out
    )
    db = sqlite3.connect(copy / schema.DATABASE_NAME)
    assert db.execute("SELECT count(agreement) FROM lineage_events").fetchone()[0] == 0
    meta = json.loads(db.execute("SELECT value FROM meta WHERE key = 'emergence'").fetchone()[0])
    db.close()
    assert meta["agreement"] is None and meta["agreement_dropped"] == gone  # why it holds none, which browse says
    with serving(copy) as server:
        assert api(server, "/api/run")["emergence"]["agreement_dropped"] == gone


def test_without_an_agreement_its_filter_is_refused_and_disabled(run, server, driver, tmp_path):  # noqa: F811
    assert api(server, "/api/run")["emergence"]["agreement"] is None
    for value, said in (
        ("made", r"this database holds no lineage agreement; run `crosslens analyze .* --lineage-against OTHER`"),
        ("maybe", r"agreement=maybe: use one of made, not made"),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            api(server, f"/api/features?agreement={value}")
        assert refused.value.code == 400 and re.search(said, refused.value.read().decode())
    open_page(driver, server, "/")
    wait_for(lambda: driver.execute_script("return document.getElementById('agreement').disabled"), what="disabled")
    hint = driver.execute_script("return document.getElementById('emergence-hint').textContent")
    assert "Lineage not checked against another crosscoder (`crosslens analyze --lineage-against OTHER`)." in hint
    flags = json.loads(
        (export_run(run[0], format="neuronpedia", out=tmp_path / "np") / "emergence_flags.json").read_text()
    )
    assert "agreement" not in flags
