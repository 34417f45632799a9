"""``crosslens browse`` over a run's explanations: the list searched by meaning (ranked, with the
list's filters and sorts), a feature's explanations per phase with the drift matrix, explanations
of another feature database left out; and in a real headless Chromium, a search by meaning that
opens its result. Screenshots go to $CROSSLENS_SHOTS (default /tmp/explain_screens)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from explain_fixtures import CAT, DEAD, DRIFTER, N_SNAPSHOTS, rows, write_planted_database
from test_browser import driver, get, listed, open_page, screenshot, server, serving, shown_features, wait_for  # noqa: F401 (fixtures on run_dir)

from crosslens.browser.database import Database
from crosslens.browser.explained import meaning_matches
from crosslens.explain import ExplainConfig, StubEndpoint, explain_run, import_explanations

SHOTS = Path(os.environ.get("CROSSLENS_SHOTS", "/tmp/explain_screens"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A planted run, explained (test_browser's server serves it)."""
    run = write_planted_database(tmp_path_factory.mktemp("explained") / "run").parent
    with StubEndpoint(model="stub") as stub:
        explain_run(run, ExplainConfig(endpoint=stub.url, model="stub", progress=False))
    # two explanations made elsewhere, one saying "cat" far more than the other: the search ranks them
    listing = run.parent / "neuronpedia.json"
    long = "the cat, among many other animals and household objects in long sentences"
    rows = [
        {"modelId": "pico", "layer": "0-res-crosslens__step100", "index": "5", "description": "cat cat cat"},
        {"modelId": "pico", "layer": "0-res-crosslens__step100", "index": "6", "description": long},
    ]
    listing.write_text(json.dumps(rows))
    import_explanations(run, listing, ExplainConfig(progress=False))
    return run


def ids(page: dict) -> list[int]:
    return [row["feature"] for row in page["rows"]]


def test_the_list_is_searched_by_meaning_ranked_and_filtered(server):
    summary = get(server, "/api/run")[1]["explained"]
    assert summary["problem"] is None and summary["flagged"] == 1 and summary["prompt_format"] == "crosslens-explain/1"
    assert ids(listed(server, meaning="dog")) == [DRIFTER]
    cats = listed(server, meaning="cat")
    assert cats["meaning"] == {"features": 4} and set(ids(cats)) == {CAT, DRIFTER, 5, 6}
    assert ids(cats).index(5) < ids(cats).index(6)  # "cat cat cat" matches better than one cat in a long sentence
    assert [r["explanation"]["text"] for r in cats["rows"] if r["feature"] == 5] == ["cat cat cat"]
    assert set(ids(listed(server, meaning="ca"))) == {CAT, DRIFTER, 5, 6}  # the last word is also a prefix
    assert set(ids(listed(server, meaning="texts cat "))) == {CAT, DRIFTER}  # stemmed; every word
    assert ids(listed(server, meaning='"cat text"')) == []  # a phrase keeps its order
    assert set(ids(listed(server, meaning='"text cat"'))) == {CAT, DRIFTER}
    assert ids(listed(server, meaning="cat", drifted="1")) == [DRIFTER]
    assert ids(listed(server, drifted="1")) == [DRIFTER]
    assert set(ids(listed(server, meaning="cat", ids="0-1", **{"class": "persistent"}))) == {CAT, DRIFTER}
    by_id = listed(server, meaning="cat", sort="feature")
    assert ids(by_id) == sorted(ids(by_id))  # the list's own sorts apply to a search too
    detection = listed(server, sort="detection", order="desc")
    values = [r["explained"]["detection"] for r in detection["rows"]]
    known = [v for v in values if v is not None]
    assert known == sorted(known, reverse=True) and values[: len(known)] == known
    high = listed(server, min_detection="0.9")
    assert high["rows"] and all(r["explained"]["detection"] >= 0.9 for r in high["rows"])
    assert DEAD not in ids(listed(server, meaning="text"))
    for bad, fix in ((dict(sort="match"), "add meaning=WORDS"), (dict(min_detection="x"), "not a number")):
        status, answer = get(server, "/api/features?" + urllib.parse.urlencode(bad))
        assert status == 400 and fix in answer["error"]


def test_a_feature_shows_its_explanations_per_phase_with_the_drift_matrix(server):
    status, found = get(server, f"/api/feature/{DRIFTER}/explanations")
    assert status == 200 and found["available"]
    by_reading = {e["snapshot"]: e for e in found["explanations"]}
    last = N_SNAPSHOTS - 1
    assert by_reading[0]["phases"] == ["emergence"] and by_reading[last]["phases"] == ["last"]
    assert by_reading[-1]["phases"] == ["code"] and by_reading[-1]["detection"] == 1.0
    assert by_reading[0]["scores"][str(last)]["balanced_accuracy"] == 0.5
    assert found["verdict"] == {"detection": 1.0, "drift": 0.5, "explained": 0, "scored_on": last, "flagged": True}
    assert get(server, "/api/feature/9999/explanations")[0] == 404
    assert get(server, f"/api/feature/{DEAD}/explanations")[1]["explanations"] == []


def test_explanations_of_another_feature_database_are_left_out(run_dir, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    write_planted_database(copy, seed=3)  # rebuilt: another database
    (copy / "explanations.sqlite").write_bytes((run_dir / "explanations.sqlite").read_bytes())
    with serving(copy) as server:
        explained = get(server, "/api/run")[1]["explained"]
        assert "another feature database" in explained["problem"] and "explain the run again" in explained["problem"]
        status, answer = get(server, "/api/features?meaning=cat")
        assert status == 400 and "no explanations" in answer["error"]
        assert get(server, "/api/features")[0] == 200  # the feature database itself is served as ever


def test_a_running_browser_searches_the_explanations_an_overwrite_wrote(tmp_path):
    """explain --overwrite deleted the file and wrote a new one, while a running crosslens browse
    went on searching the deleted file through the connections it held."""
    run = write_planted_database(tmp_path / "run").parent
    with StubEndpoint(model="stub") as stub:
        settings = dict(endpoint=stub.url, model="stub", progress=False)
        explain_run(run, ExplainConfig(features=str(CAT), **settings))
        browser = Database(run)  # crosslens browse RUN
        try:
            with browser.connection() as connection:
                assert meaning_matches(connection, browser.facts.explained, "cat").ranked == [CAT]
            explain_run(run, ExplainConfig(features="4", overwrite=True, **settings))  # feature 4 reads " lamp"
            with browser.connection() as connection:
                assert meaning_matches(connection, browser.facts.explained, "cat").ranked == []
                assert meaning_matches(connection, browser.facts.explained, "lamp").ranked == [4]
                stored = connection.execute("SELECT DISTINCT feature FROM explained.explanations").fetchall()
                assert stored == [(4,)]
        finally:
            browser.close()


def stored(run: Path) -> tuple[int, int]:
    """(features, explanations) the run's explanations file holds."""
    return rows(run, "SELECT count(DISTINCT feature), count(*) FROM explanations")[0]


def test_a_running_browser_counts_the_explanations_written_since_it_started(tmp_path):
    """browse read the explanations' counts once, at start: what an explain run wrote while it
    served was not counted, searched or shown until it was started again."""
    from crosslens.explain.run import Explainer
    from crosslens.explain.store import ExplanationStore

    run = write_planted_database(tmp_path / "run").parent
    with StubEndpoint(model="stub") as stub, serving(run) as server:
        settings = dict(endpoint=stub.url, model="stub", progress=False)
        assert get(server, "/api/run")[1]["explained"] is None
        assert get(server, "/api/features?meaning=cat")[0] == 400
        explain_run(run, ExplainConfig(features=str(CAT), **settings))  # the run's first explanations
        first = get(server, "/api/run")[1]["explained"]
        assert first["problem"] is None and (first["features"], first["explanations"]) == stored(run) == (1, 4)
        assert ids(listed(server, meaning="cat")) == [CAT]
        assert get(server, f"/api/feature/{CAT}/explanations")[1]["available"]
        explain_run(run, ExplainConfig(features="4", **settings))  # feature 4 reads " lamp"
        second = get(server, "/api/run")[1]["explained"]
        assert (second["features"], second["explanations"]) == stored(run) == (2, 8)
        assert ids(listed(server, meaning="lamp")) == [4]
        explainer = Explainer(run, ExplainConfig(progress=False))
        store = ExplanationStore(run, explainer.binding)
        explainer.close()
        try:  # a run still writing: its committed answers are in the WAL, not yet in the file
            store.add_explanation(5, -1, "crosslens", 'the text "sun"', model="stub", prompt="crosslens-explain/1")
            store.commit()
            third = get(server, "/api/run")[1]["explained"]
            assert (third["features"], third["explanations"]) == stored(run) == (3, 9)
            assert ids(listed(server, meaning="sun")) == [5]
        finally:
            store.close()


def test_a_search_by_meaning_in_chromium_opens_its_result(driver, server):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(driver, server, "/")
    assert driver.find_element(By.ID, "meaning-filters").is_displayed()
    before = driver.execute_script("return Number(document.body.dataset.request || 0)")
    driver.find_element(By.ID, "meaning").send_keys("dog", Keys.ENTER)
    wait_for(
        lambda: driver.execute_script(
            f"return Number(document.body.dataset.request) > {before} && document.body.dataset.state === 'ready'"
        ),
        what="search",
    )
    assert (
        shown_features(driver) == [DRIFTER]
        and "meaning=dog" in driver.current_url
        and "sort=match" in driver.current_url
    )
    cell = driver.find_element(By.CSS_SELECTOR, "table.features td.explanation")
    assert 'the text "dog"' in cell.text and "meaning drifted" in cell.text
    screenshot(driver, "search", SHOTS)
    driver.find_element(By.CSS_SELECTOR, f"tr[data-feature='{DRIFTER}'] td.id a").click()
    wait_for(
        lambda: driver.execute_script(
            f"return document.getElementById('explanations-panel').dataset.feature === '{DRIFTER}'"
        ),
        what="explanations panel",
    )
    assert driver.current_url.split("?")[0].endswith(f"/feature/{DRIFTER}")
    phases = driver.execute_script(
        "return [...document.querySelectorAll('table.explanations tbody tr')].map(r => [r.dataset.snapshot, r.querySelector('.xtext').textContent])"
    )
    assert [str(-1), 'the text "cat"'] in phases and [str(N_SNAPSHOTS - 1), 'the text "dog"'] in phases
    cells = driver.execute_script(
        "return [...document.querySelectorAll('table.drift td.cell')].map(c => c.textContent)"
    )
    assert len(cells) == 9 and "0.50" in cells and "1.00" in cells  # 3 life readings x 3
    assert "meaning drifted" in driver.find_element(By.ID, "drift-chip").text
    wait_for(lambda: driver.execute_script("return document.body.dataset.state === 'ready'"), what="plots")
    screenshot(driver, "feature", SHOTS)
