"""``crosslens browse``: the JSON API against the database it reads, the server's one-line errors,
and the pages in a real headless Chromium (driven by Selenium), whose plots and contexts must
equal what the database holds.

The database is synthetic (tests/feature_db.py writes it through ``schema.create_schema``).
Without Chromium, its driver or selenium, the browser tests skip and say what to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from feature_db import FeatureDbShape, write_feature_database

from crosslens.browser import BrowseConfig, DatabaseProblem, make_server
from crosslens.core.errors import CrosslensError
from crosslens.dashboards import schema
from crosslens.dashboards.record import write_record
from crosslens.htmlreport import Report

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver"
SCREENS = Path("/tmp/browse_screens")
SHAPE = FeatureDbShape(n_features=64, n_snapshots=6, tasks=("agreement", "ioi"))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    write_feature_database(run / schema.DATABASE_NAME, SHAPE)
    write_record(run, partners={}, settings={}, n_tokens=0)  # sealed as crosslens dashboards seals one
    figure = go.Figure(go.Scatter(x=[0, 1], y=[1, 2], meta={"link": "feature", "feature": 7}))
    report = Report("a run").add_table(
        [{"feature": 5, "density": 0.25}, {"feature": 9, "density": 0.5}], title="features"
    )
    report.add_figure(figure).write(run / "report.html")
    return run


@contextlib.contextmanager
def serving(run_dir: Path) -> Iterator:
    """``browse`` of ``run_dir`` on a free port, served from a thread until the block ends."""
    server = make_server(run_dir, BrowseConfig(port=0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(run_dir):
    with serving(run_dir) as server:
        yield server


@pytest.fixture(scope="module")
def oracle(run_dir) -> Oracle:
    return Oracle(run_dir / schema.DATABASE_NAME)


class Oracle:
    """The database read whole into Python, and the list's filters written out plainly, to check
    the server's SQL against."""

    def __init__(self, path: Path) -> None:
        db = sqlite3.connect(path)
        db.row_factory = sqlite3.Row
        self.db = db
        self.features = {r["feature"]: dict(r) for r in db.execute("SELECT * FROM features")}
        self.snap = {(r["feature"], r["snapshot"]): dict(r) for r in db.execute("SELECT * FROM feature_snapshots")}
        self.causal = [dict(r) for r in db.execute("SELECT * FROM causal")]
        self.texts = dict(db.execute("SELECT rowid, text FROM context_search").fetchall())
        self.vocab = dict(db.execute("SELECT token_id, text FROM vocabulary").fetchall())

    def select(
        self,
        *,
        q="",
        ids=(),
        classes=(),
        emerged=(None, None),
        at=None,
        state="",
        task="",
        relie_class="",
        min_relevance=None,
    ) -> list[int]:
        out = []
        for f, row in sorted(self.features.items()):
            e = row["emergence_snapshot"]
            fade = row["fade_snapshot"]
            present = at is not None and e is not None and e <= at and (fade is None or fade > at)
            density = self.snap[(f, at)]["density"] if at is not None else None
            tests = [
                not q or q.lower() in self.texts.get(f, "").lower(),
                not ids or any(lo <= f <= hi for lo, hi in ids),
                not classes or row["class"] in classes,
                emerged[0] is None or (row["emergence_step"] is not None and row["emergence_step"] >= emerged[0]),
                emerged[1] is None or (row["emergence_step"] is not None and row["emergence_step"] <= emerged[1]),
                state != "fires" or density > 0,
                state != "present" or present,
                state != "absent" or not present,
                state != "emerges" or e == at,
                self._task_ok(f, task, relie_class, min_relevance),
            ]
            if all(tests):
                out.append(f)
        return out

    def _task_ok(self, f, task, relie_class, min_relevance) -> bool:
        rows = [r for r in self.causal if r["feature"] == f and (not task or r["task"] == task)]
        if relie_class and not any(r["relie_class"] == relie_class for r in rows):
            return False
        if min_relevance is None:
            return True
        if task:
            return bool(rows) and max(abs(r["ie"]) for r in rows) >= min_relevance
        relevance = self.features[f]["relevance"]
        return relevance is not None and relevance >= min_relevance

    def contexts(self, feature: int, snapshot: int, kind: str) -> list[tuple[list[str], list[float], float]]:
        rows = self.db.execute(
            "SELECT token_ids, activations, activation FROM contexts WHERE feature = ? AND snapshot = ? AND kind = ? ORDER BY rank",
            (feature, snapshot, kind),
        )
        return [
            ([self.vocab[t] for t in np.frombuffer(ids, "<i4")], np.frombuffer(acts, "<f2").astype(float).tolist(), a)
            for ids, acts, a in rows
        ]

    def a_search_string(self, length: int) -> str:
        """A string of ``length`` characters that occurs in some features' texts but not in all."""
        for text in self.texts.values():
            for start in range(0, len(text) - length):
                needle = text[start : start + length]
                if "\n" in needle:
                    continue
                hits = sum(needle.lower() in t.lower() for t in self.texts.values())
                if 2 <= hits <= len(self.texts) // 2:
                    return needle
        raise AssertionError("no selective search string")


def get(server, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def listed(server, **params) -> dict:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None} | {"limit": 500})
    status, page = get(server, "/api/features?" + query)
    assert status == 200, page
    return page


# --------------------------------------------------------------------------- the API
def test_the_feature_list_answers_what_the_database_holds(server, oracle):
    assert get(server, "/api/run")[1]["n_features"] == SHAPE.n_features
    three, two = oracle.a_search_string(3), oracle.a_search_string(2)
    steps = [r[0] for r in oracle.db.execute("SELECT step FROM snapshots ORDER BY snapshot")]
    cases = [
        ({}, {}),
        ({"q": three}, {"q": three}),
        ({"q": three.upper()}, {"q": three}),
        ({"q": two}, {"q": two}),
        ({"ids": "3, 10-12 #40"}, {"ids": ((3, 3), (10, 12), (40, 40))}),
        ({"class": "transient,dead"}, {"classes": ("transient", "dead")}),
        ({"emerged_from": steps[1], "emerged_to": steps[3]}, {"emerged": (steps[1], steps[3])}),
        ({"at": 2, "state": "fires"}, {"at": 2, "state": "fires"}),
        (
            {"at": 3, "state": "present", "class": "persistent"},
            {"at": 3, "state": "present", "classes": ("persistent",)},
        ),
        ({"at": 3, "state": "absent"}, {"at": 3, "state": "absent"}),
        ({"at": 4, "state": "emerges"}, {"at": 4, "state": "emerges"}),
        ({"task": "ioi", "min_relevance": 0.05}, {"task": "ioi", "min_relevance": 0.05}),
        ({"relie_class": "specific"}, {"relie_class": "specific"}),
        ({"min_relevance": 0.02}, {"min_relevance": 0.02}),
    ]
    for params, expected in cases:
        page = listed(server, **params)
        want = oracle.select(**expected)
        assert [r["feature"] for r in page["rows"]] == want and page["total"] == len(want), params
    assert listed(server, q=two)["search"] == {"route": "scan", "complete": True, "features": len(oracle.select(q=two))}


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_common_string_is_scanned_and_a_rare_one_looked_up_with_one_answer(run_dir, oracle, share):
    from crosslens.browser import queries

    connection = sqlite3.connect(f"file:{run_dir / schema.DATABASE_NAME}?mode=ro", uri=True)
    for length in (3, 5):
        needle = oracle.a_search_string(length)
        found = queries._search(connection, needle, scan_share=share)
        assert (found.route, found.complete) == ("scan" if share == 0.0 else "index", True)
        assert found.features == oracle.select(q=needle)


def test_the_feature_list_sorts_on_any_stored_metric_and_pages(server, oracle):
    def key(column, at=None):
        def value(f):
            v = oracle.snap[(f, at)][column] if at is not None else oracle.features[f][column]
            return (v is None, -(v or 0), f)

        return value

    for column in ("density", "max_activation", "peak_decoder_norm", "relevance", "emergence_step"):
        want = sorted(oracle.features, key=key(column))
        assert [r["feature"] for r in listed(server, sort=column, order="desc")["rows"]] == want, column
    for column in ("decoder_norm", "density", "max_activation", "relative_norm"):
        want = sorted(oracle.features, key=key(column, at=2))
        page = listed(server, sort="at_" + column, order="desc", at=2)
        assert [r["feature"] for r in page["rows"]] == want, column
        assert page["rows"][0]["at"][column] == oracle.snap[(want[0], 2)][column]
    ascending = listed(server, sort="max_activation", order="asc")["rows"]
    assert [r["max_activation"] for r in ascending] == sorted(r["max_activation"] for r in ascending)
    pages = [get(server, f"/api/features?sort=density&order=desc&limit=20&offset={o}")[1] for o in (0, 20, 40, 60)]
    assert [r["feature"] for p in pages for r in p["rows"]] == sorted(oracle.features, key=key("density"))
    assert {p["total"] for p in pages} == {SHAPE.n_features} and len(pages[-1]["rows"]) == SHAPE.n_features - 60
    first = listed(server, ids="1")["rows"][0]
    assert first["norms"] == [round(oracle.snap[(1, s)]["relative_norm"], 4) for s in range(SHAPE.n_snapshots)]
    snippet = oracle.contexts(1, -1, "top")[0]
    assert first["snippet"]["tokens"] == snippet[0] and first["snippet"]["activation"] == snippet[2]


def test_bad_parameters_and_unknown_features_answer_one_line(server):
    for query, words in [
        ("sort=bogus", "sort=bogus: sort on one of"),
        ("at=99", "at=99: snapshots are 0 to 5"),
        ("state=fires", "add at=SNAPSHOT"),
        ("sort=at_density", "add at=SNAPSHOT"),
        ("ids=abc", "write ids and ranges"),
        ("task=nope", "task=nope: this run has attribution for agreement, ioi"),
        ("limit=x", "limit=x: not a whole number"),
        ("limit=0", "limit=0: use 1 to 500 features per page"),  # the pager steps by what it asked for
        ("limit=100000", "limit=100000: use 1 to 500 features per page"),
        ("class=nonsense", "class=nonsense: this run's classes are initialization, persistent"),
        ("diffing=any", "diffing=any: latent scaling's verdicts are of a two-model crosscoder"),
        ("relie_class=specfic", "relie_class=specfic: use one of other, shared, specific, below_floor, no_behaviour"),
    ]:
        status, payload = get(server, "/api/features?" + query)
        assert status == 400 and words in payload["error"] and "\n" not in payload["error"], query
    assert get(server, "/api/feature/999") == (404, {"error": "feature 999: this database holds features 0 to 63."})
    assert get(server, "/api/feature/999/contexts")[0] == 404
    assert get(server, "/api/nothing")[0] == 404


def test_every_status_the_server_answers_is_one_its_docstring_names(server, monkeypatch):
    """The server's docstring said every error is JSON with status 400 or 404; it also answers 403,
    500 and 501, two of them not as JSON."""
    import http.client

    import crosslens.browser.server as server_module

    def answer(path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type"), response.read()
        finally:
            connection.close()

    def failing():
        raise RuntimeError("no summary")

    monkeypatch.setattr(server, "run_summary", failing)
    json_kind, answers = "application/json", {}
    for path, status in (("/api/features?sort=bogus", 400), ("/api/nothing", 404), ("/api/run", 500)):
        answers[status] = answer(path)
    answers[403] = answer("/api/feature/3", headers={"Sec-Fetch-Site": "cross-site"})
    answers["host"] = answer("/api/feature/3", headers={"Host": "elsewhere.example"})
    answers[501] = answer("/api/feature/3", method="POST")
    for status in (400, 404, 500, 403):
        assert answers[status][:2] == (status, json_kind) and list(json.loads(answers[status][2])) == ["error"]
    assert json.loads(answers[500][2]) == {"error": "the server failed on /api/run (RuntimeError: no summary)"}
    assert answers["host"] == (403, "text/plain; charset=utf-8", b"forbidden host\n")
    assert answers[501][:2] == (501, "text/html;charset=utf-8") and b"<html" in answers[501][2]
    said = set(map(int, re.findall(r"\b([45]\d\d)\b", server_module.__doc__)))
    assert said == {400, 403, 404, 409, 500, 501, 503}, said
    for words in ('``{"error": "one line"}``', "plain-text 403 (``forbidden host``)", "501 page (HTML)"):
        assert words in " ".join(server_module.__doc__.split())


def test_a_feature_answers_what_the_database_holds(server, oracle):
    causal_features = sorted({r["feature"] for r in oracle.causal})
    feature = causal_features[0]
    status, detail = get(server, f"/api/feature/{feature}")
    assert status == 200
    assert {k: detail[k] for k in oracle.features[feature]} == oracle.features[feature]
    for s in range(SHAPE.n_snapshots):
        row = oracle.snap[(feature, s)]
        assert [detail["series"][c][s] for c in ("decoder_norm", "density", "max_activation")] == [
            row["decoder_norm"],
            row["density"],
            row["max_activation"],
        ]
        assert detail["histograms"][s] == np.frombuffer(row["histogram"], "<u4").tolist()
        top = [oracle.vocab[t] for t in np.frombuffer(row["logit_top_ids"], "<i4")]
        assert [t for t, _ in detail["logits"][s]["top"]] == top
        assert [v for _, v in detail["logits"][s]["bottom"]] == pytest.approx(
            np.frombuffer(row["logit_bottom_values"], "<f4"), abs=1e-4
        )
    for r in (r for r in oracle.causal if r["feature"] == feature):
        assert detail["causal"][r["task"]]["ie"][r["snapshot"]] == r["ie"]
    status, contexts = get(server, f"/api/feature/{feature}/contexts")
    for reading in [-1, *range(SHAPE.n_snapshots)]:
        for kind in ("top", "quantile"):
            got = contexts["readings"].get(str(reading), {}).get(kind, [])
            want = oracle.contexts(feature, reading, kind)
            assert [c["tokens"] for c in got] == [w[0] for w in want]
            assert [c["acts"] for c in got] == [pytest.approx(w[1], abs=1e-3) for w in want]
    one = get(server, f"/api/feature/{feature}/contexts?snapshot=2")[1]
    assert list(one["readings"]) in ([], ["2"]) and one["readings"].get("2") == contexts["readings"].get("2")


# --------------------------------------------------------------------------- the server
def test_a_port_in_use_is_one_line_naming_the_fix(run_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CrosslensError) as error:
            make_server(run_dir, BrowseConfig(port=port))
    message = str(error.value)
    assert f"port {port} on 127.0.0.1 is in use" in message and "--port" in message and "\n" not in message
    with pytest.raises(CrosslensError, match="--port 70000"):
        BrowseConfig(port=70000)


def test_a_missing_foreign_or_damaged_database_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(
        DatabaseProblem, match=r"no feature database \(dashboards.sqlite\): run `crosslens dashboards .*` first"
    ):
        make_server(tmp_path)
    with pytest.raises(DatabaseProblem, match="no such folder"):
        make_server(tmp_path / "nowhere")
    (tmp_path / "run" / "final").mkdir(parents=True)  # RUN/final is answered with its run
    (tmp_path / "run" / "run.json").write_text("{}")
    (tmp_path / "run" / "final" / "cfg.json").write_text("{}")
    final, run = tmp_path / "run" / "final", tmp_path / "run"
    with pytest.raises(DatabaseProblem) as caught:
        make_server(final)
    assert str(caught.value) == (
        f"{final} is a crosscoder's folder inside the run {run}; pass the run folder {run}, "
        f"after `crosslens dashboards {run}`."
    )
    foreign = tmp_path / schema.DATABASE_NAME
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(
        DatabaseProblem,
        match=r"has no sealed record beside it .*; rebuild it with `crosslens dashboards .* --overwrite`",
    ):
        make_server(tmp_path)  # the run's own database is the one `crosslens dashboards` sealed, or none
    named = BrowseConfig(port=0, database=str(foreign))
    name_one = r"name the dashboards.sqlite that `crosslens dashboards RUN` writes in RUN\.$"
    with pytest.raises(
        DatabaseProblem, match=rf"^--database {foreign}: not a crosslens feature database \(no meta table\): {name_one}"
    ):
        make_server(tmp_path, named)
    with pytest.raises(  # RUN naming a file reads it as the database
        DatabaseProblem, match=rf"^{foreign}: not a crosslens feature database .*: pass the run folder, or {name_one}"
    ):
        make_server(foreign)
    with pytest.raises(DatabaseProblem, match=rf"^--database {tmp_path / 'gone.sqlite'}: no such file: {name_one}"):
        make_server(tmp_path, BrowseConfig(port=0, database=str(tmp_path / "gone.sqlite")))
    foreign.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(DatabaseProblem) as error:
        make_server(tmp_path, named)
    assert str(error.value).startswith(f"--database {foreign}: damaged or not SQLite")
    assert str(error.value).endswith("writes in RUN.") and "\n" not in str(error.value)
    write_feature_database(foreign, FeatureDbShape(n_features=8, n_snapshots=3))
    write_record(tmp_path, partners={}, settings={}, n_tokens=0)
    make_server(tmp_path).server_close()  # sealed: served
    with open(foreign, "r+b") as file:  # one byte changed after the seal
        file.seek(-5, 2)
        byte = file.read(1)
        file.seek(-5, 2)
        file.write(bytes([byte[0] ^ 1]))
    with pytest.raises(
        DatabaseProblem,
        match=r"sha256 differs: damaged or edited\); rebuild it with `crosslens dashboards .* --overwrite`",
    ):
        make_server(tmp_path)
    other = tmp_path / "other.sqlite"
    write_feature_database(other, FeatureDbShape(n_features=8, n_snapshots=3))
    with sqlite3.connect(other) as db:
        db.execute("UPDATE meta SET value = '\"crosslens.dashboards/0\"' WHERE key = 'format'")
    with pytest.raises(DatabaseProblem, match="written in another layout"):
        make_server(tmp_path, BrowseConfig(port=0, database=str(other)))


def test_a_folder_as_database_names_the_file_inside_it_and_the_fix_serves(tmp_path, capsys):
    from crosslens.cli import main

    run, other, empty = tmp_path / "run", tmp_path / "other", tmp_path / "empty"
    for folder in (run, other):
        write_feature_database(folder / schema.DATABASE_NAME, FeatureDbShape(n_features=8, n_snapshots=3))
    write_record(run, partners={}, settings={}, n_tokens=0)
    empty.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["browse", str(run), "--database", str(other), "--port", "0", "--no-live"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"crosslens browse: error: --database {other} is a folder, not the database file: pass the file "
        f"inside it, --database {other / schema.DATABASE_NAME}."
    )
    make_server(run, BrowseConfig(port=0, database=str(other / schema.DATABASE_NAME))).server_close()  # its fix
    with pytest.raises(DatabaseProblem) as error:
        make_server(run, BrowseConfig(port=0, database=str(run)))
    assert str(error.value) == (
        f"--database {run} is the run folder itself: leave --database out to serve its {schema.DATABASE_NAME}."
    )
    make_server(run).server_close()
    name_one = f"name the {schema.DATABASE_NAME} that `crosslens dashboards RUN` writes in RUN."
    with pytest.raises(DatabaseProblem) as error:
        make_server(run, BrowseConfig(port=0, database=str(empty)))
    assert str(error.value) == f"--database {empty} is a folder, holding no {schema.DATABASE_NAME}: {name_one}"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_browse_prints_its_url_serves_without_torch_and_stops_on_ctrl_c(run_dir):
    code = (
        "import atexit, sys; from crosslens.browser import browse; "
        "atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); "
        f"browse({str(run_dir)!r}, port=0)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + process.stderr.read()
        assert "64 features x 6 snapshots" in line and "Ctrl-C" in line
        with urllib.request.urlopen(match[0] + "api/feature/3") as response:
            assert json.loads(response.read())["feature"] == 3
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stopped." in out and "torch loaded: False" in out


def test_pages_load_nothing_from_the_network_and_serve_the_report(server, run_dir):
    base = server.url.rstrip("/")
    for path in ("/", "/feature/3"):
        page = urllib.request.urlopen(base + path).read().decode()
        assert re.findall(r'(?:src|href)="([^"]+)"', page), path
        assert all(url.startswith(("/", "data:")) for url in re.findall(r'(?:src|href)="([^"]+)"', page)), path
    feature_page = urllib.request.urlopen(base + "/feature/3").read().decode()
    scripts = re.findall(r'<script src="(/static/[\w.-]+\?v=\w+)"', feature_page)
    assert any("/static/charts.js?" in url for url in scripts) and not any("plotly" in url for url in scripts)
    with urllib.request.urlopen(base + scripts[0]) as response:  # a script's URL names its content: cached for good
        assert "immutable" in response.headers["Cache-Control"]
    report = urllib.request.urlopen(base + "/report").read().decode()
    assert '<a class="feature-link" href="feature/5">5</a>' in report
    forbidden = urllib.request.Request(base + "/api/run", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(forbidden)


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_another_sites_page_cannot_make_the_api_compute(server, site):
    """A page elsewhere (or at another port of this machine) could not read the answers, but its
    image or script tags could make the server load models and compute; the page itself can go
    there (a link to a feature is followed), and a script, which sends no Sec-Fetch-Site, is answered."""
    from crosslens.browser.server import CROSS_SITE

    base = server.url.rstrip("/")
    for path in ("/api/run", "/api/live/status?prepare=1", "/api/feature/3"):
        request = urllib.request.Request(base + path, headers={"Sec-Fetch-Site": site})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403 and json.loads(refused.value.read()) == {"error": CROSS_SITE}
    for headers in ({"Sec-Fetch-Site": site}, {}):
        with urllib.request.urlopen(urllib.request.Request(base + "/feature/3", headers=headers)) as page:
            assert page.status == 200
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {}):
        with urllib.request.urlopen(urllib.request.Request(base + "/api/feature/3", headers=headers)) as answer:
            assert json.loads(answer.read())["feature"] == 3


# --------------------------------------------------------------------------- in Chromium
def _browser_missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"no headless Chromium at {path}: {INSTALL}"
    return None


@pytest.fixture(scope="module")
def driver():
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="crosslens-chromium-")
    # a closed machine: no sandbox, GPU, QUIC, sync, component updates or background fetches
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    try:
        chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield chrome
        finally:
            chrome.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)  # one profile a module, none left behind in the temp folder


def wait_for(condition, timeout: float = 10.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what or condition}")


def open_page(driver, server, path: str) -> None:
    driver.get(server.url.rstrip("/") + path)
    wait_for(lambda: driver.execute_script("return document.body.dataset.state") == "ready", what=path)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def list_update(driver, action) -> None:
    """Do ``action`` on the list page and wait for the list it asks for."""
    before = driver.execute_script("return Number(document.body.dataset.request || 0)")
    action()
    wait_for(
        lambda: driver.execute_script(
            f"return Number(document.body.dataset.request) > {before} && document.body.dataset.state === 'ready'"
        ),
        what="list",
    )


def shown_features(driver) -> list[int]:
    return driver.execute_script(
        "return [...document.querySelectorAll('table.features tbody tr')].map(r => Number(r.dataset.feature))"
    )


def screenshot(driver, name: str, folder: Path = SCREENS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 120, 800), 3000))
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def test_the_list_page_searches_filters_sorts_and_pages(driver, server, oracle):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(driver, server, "/")
    assert shown_features(driver) == list(range(50))
    screenshot(driver, "list")
    list_update(driver, lambda: driver.find_element(By.ID, "next").click())
    assert shown_features(driver) == list(range(50, 64)) and "offset=50" in driver.current_url
    list_update(driver, lambda: driver.find_element(By.ID, "prev").click())

    needle = oracle.a_search_string(4)
    list_update(driver, lambda: driver.find_element(By.ID, "q").send_keys(needle, Keys.ENTER))
    assert shown_features(driver) == oracle.select(q=needle)
    assert driver.find_element(By.ID, "summary").text.startswith(f"{len(oracle.select(q=needle))} of 64 features")
    screenshot(driver, "list_search")
    list_update(
        driver,
        lambda: (
            driver.find_element(By.CSS_SELECTOR, "#q").clear() or driver.find_element(By.ID, "q").send_keys(Keys.ENTER)
        ),
    )

    list_update(driver, lambda: driver.find_element(By.CSS_SELECTOR, "#classes input[value=transient]").click())
    assert shown_features(driver) == oracle.select(classes=("transient",))
    chips = driver.execute_script(
        "return [...document.querySelectorAll('table.features tbody .chip')].map(c => c.textContent)"
    )
    assert set(chips) == {"transient"}

    from selenium.webdriver.support.select import Select

    list_update(driver, lambda: Select(driver.find_element(By.ID, "at")).select_by_value("3"))
    list_update(driver, lambda: Select(driver.find_element(By.ID, "state")).select_by_value("fires"))
    assert shown_features(driver) == oracle.select(classes=("transient",), at=3, state="fires")
    list_update(driver, lambda: driver.find_element(By.CSS_SELECTOR, "th[data-sort=at_density]").click())
    want = sorted(
        oracle.select(classes=("transient",), at=3, state="fires"), key=lambda f: (-oracle.snap[(f, 3)]["density"], f)
    )
    assert shown_features(driver) == want
    assert all(
        part in driver.current_url
        for part in ("class=transient", "at=3", "state=fires", "sort=at_density", "order=desc")
    )
    screenshot(driver, "list_filtered")
    open_page(driver, server, driver.current_url.removeprefix(server.url.rstrip("/")))  # the URL is the state
    assert shown_features(driver) == want

    list_update(driver, lambda: driver.find_element(By.ID, "reset").click())
    list_update(driver, lambda: driver.find_element(By.ID, "ids").send_keys("3, 10-12", Keys.ENTER))
    assert shown_features(driver) == [3, 10, 11, 12]

    # a page size the selector does not list (the URL's, or browse --page-size 30) is listed and shown
    open_page(driver, server, "/?limit=30")
    assert shown_features(driver) == list(range(30))
    sizes = Select(driver.find_element(By.ID, "limit"))
    assert sizes.first_selected_option.text == "30"
    assert [o.text for o in sizes.options] == ["25", "30", "50", "100", "200"]


def plotted(driver, plot: str) -> list[dict]:
    return driver.execute_script(
        f"return document.getElementById('{plot}').data.map(t => ({{type: t.type || 'scatter', name: t.name, x: t.x, y: t.y, z: t.z}}))"
    )


def shown_contexts(driver, kind: str) -> list[tuple[list[str], list[float]]]:
    return driver.execute_script(
        f"return [...document.querySelectorAll('table.contexts[data-kind={kind}] tr')].map(r => "
        "[[...r.querySelectorAll('.tok')].map(t => t.dataset.token), [...r.querySelectorAll('.tok')].map(t => Number(t.dataset.act))])"
    )


def check_reading(driver, oracle, feature: int, reading: int) -> None:
    for kind in ("top", "quantile"):
        got, want = shown_contexts(driver, kind), oracle.contexts(feature, reading, kind)
        assert [g[0] for g in got] == [w[0] for w in want], (kind, reading)
        assert [g[1] for g in got] == [pytest.approx(w[1], abs=1e-3) for w in want], (kind, reading)
    histogram = plotted(driver, "plot-histogram")[0]
    if reading == -1:
        assert histogram["type"] == "heatmap"
    else:
        assert histogram["y"] == np.frombuffer(oracle.snap[(feature, reading)]["histogram"], "<u4").tolist()
        top = [oracle.vocab[t] for t in np.frombuffer(oracle.snap[(feature, reading)]["logit_top_ids"], "<i4")]
        shown = driver.execute_script(
            "return [...document.querySelectorAll('table.logit[data-kind=top] .tokpill')].map(t => t.textContent)"
        )
        assert shown == [t.replace("\n", "\u21b5") for t in top]
    assert driver.current_url.endswith(f"?snapshot={reading}")


def test_the_feature_page_plots_what_the_database_holds_and_switches_snapshots(driver, server, oracle):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    feature = next(
        f for f in sorted({r["feature"] for r in oracle.causal}) if oracle.features[f]["class"] == "transient"
    )
    S = SHAPE.n_snapshots
    open_page(driver, server, f"/feature/{feature}?snapshot=2")
    assert driver.find_element(By.ID, "title").text == f"Feature #{feature}"
    traces = {t["name"]: t for t in plotted(driver, "plot-training")}
    norm = traces["decoder norm"]
    assert norm["x"] == list(range(S)) and norm["y"] == [oracle.snap[(feature, s)]["decoder_norm"] for s in range(S)]
    assert traces["density"]["y"] == [oracle.snap[(feature, s)]["density"] or None for s in range(S)]
    assert traces["max act"]["y"] == [oracle.snap[(feature, s)]["max_activation"] for s in range(S)]
    assert traces["mean act"]["y"] == [oracle.snap[(feature, s)]["mean_activation"] for s in range(S)]
    assert traces["emergence"]["x"] == [oracle.features[feature]["emergence_snapshot"]]
    causal = {t["name"]: t["y"] for t in plotted(driver, "plot-causal")}
    for task in SHAPE.tasks:
        rows = sorted(
            (r for r in oracle.causal if r["feature"] == feature and r["task"] == task), key=lambda r: r["snapshot"]
        )
        assert causal[f"IE ({task})"] == [r["ie"] for r in rows] and causal[f"RelIE ({task})"] == [
            r["relie"] for r in rows
        ]
    check_reading(driver, oracle, feature, 2)
    screenshot(driver, "feature")

    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    wait_for(lambda: driver.execute_script("return document.body.dataset.reading") == "3", what="reading 3")
    check_reading(driver, oracle, feature, 3)
    Select(driver.find_element(By.ID, "snapshot-select")).select_by_value("-1")
    wait_for(lambda: driver.execute_script("return document.body.dataset.reading") == "-1", what="reading -1")
    check_reading(driver, oracle, feature, -1)
    screenshot(driver, "feature_crosscoder_code")
    slider = driver.find_element(By.ID, "snapshot")
    for _ in range(S):
        slider.send_keys(Keys.ARROW_RIGHT)
    wait_for(lambda: driver.execute_script("return document.body.dataset.reading") == str(S - 1), what="last reading")
    check_reading(driver, oracle, feature, S - 1)
    driver.find_element(By.ID, "feature-next").click()
    wait_for(
        lambda: (
            driver.execute_script("return document.body.dataset.state") == "ready"
            and driver.find_element(By.ID, "title").text == f"Feature #{feature + 1}"
        ),
        what="next feature",
    )
    assert driver.current_url.endswith(f"/feature/{feature + 1}?snapshot={S - 1}")
    # a snapshot past the last is shown at the last, without a request the server refuses (open_page
    # fails on any error in the console)
    open_page(driver, server, f"/feature/{feature}?snapshot=99")
    assert driver.execute_script("return document.body.dataset.reading") == str(S - 1)
    check_reading(driver, oracle, feature, S - 1)


def test_the_reports_features_open_their_pages(driver, server, run_dir):
    from selenium.webdriver.common.by import By

    open_page(driver, server, "/")
    driver.find_element(By.CSS_SELECTOR, "header.bar a.report").click()
    wait_for(lambda: driver.current_url.endswith("/report"), what="report")
    driver.find_element(By.CSS_SELECTOR, "a.feature-link[href='feature/9']").click()
    wait_for(lambda: driver.execute_script("return document.body.dataset.state") == "ready", what="feature 9")
    assert (
        driver.current_url.startswith(server.url + "feature/9?")
        and driver.find_element(By.ID, "title").text == "Feature #9"
    )
    driver.get(server.url + "report")
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", what="report")
    driver.execute_script(
        "const d = document.querySelector('.plotly-graph-div'); "
        "d.emit('plotly_click', {points: [{data: d.data[0], customdata: null}]})"
    )
    wait_for(lambda: driver.current_url.startswith(server.url + "feature/7"), what="feature 7 from the plot")
    driver.get((run_dir / "report.html").as_uri())  # opened as a file, the ids read as plain text
    assert driver.execute_script(
        "return [...document.querySelectorAll('a.feature-link')].map(a => a.hasAttribute('href'))"
    ) == [False, False]


def test_moving_between_the_list_and_a_feature_keeps_the_list_as_it_was(driver, server, oracle):
    from selenium.webdriver.common.by import By

    open_page(driver, server, "/?class=persistent&sort=max_activation&order=desc")
    shown = shown_features(driver)
    assert shown == sorted(
        oracle.select(classes=("persistent",)), key=lambda f: (-oracle.features[f]["max_activation"], f)
    )
    driver.execute_script("window.PAGE_ID = 'kept'")  # gone if a link reloads the page
    driver.find_element(By.CSS_SELECTOR, f"tr[data-feature='{shown[1]}'] td.id a").click()
    wait_for(
        lambda: driver.execute_script(
            "return document.body.dataset.view === 'feature' && document.body.dataset.state === 'ready'"
        ),
        what="feature view",
    )
    assert driver.find_element(By.ID, "title").text == f"Feature #{shown[1]}"
    assert driver.current_url.endswith(f"/feature/{shown[1]}?snapshot=-1")
    driver.back()
    wait_for(
        lambda: driver.execute_script(
            "return document.body.dataset.view === 'list' && document.body.dataset.state === 'ready'"
        ),
        what="list view",
    )
    assert shown_features(driver) == shown and "class=persistent" in driver.current_url
    assert driver.execute_script("return window.PAGE_ID") == "kept"
    driver.forward()
    wait_for(lambda: driver.execute_script("return document.body.dataset.view") == "feature", what="forward")
    driver.find_element(By.CSS_SELECTOR, "header.bar form.goto input").send_keys("999\n")
    wait_for(lambda: driver.find_element(By.ID, "feature-error").is_displayed(), what="the error")
    assert "feature 999: this database holds features 0 to 63." in driver.find_element(By.ID, "feature-error").text
    driver.find_element(By.CSS_SELECTOR, "#feature-error a").click()
    wait_for(
        lambda: driver.execute_script(
            "return document.body.dataset.view === 'list' && document.body.dataset.state === 'ready'"
        ),
        what="back to the list",
    )
    assert driver.execute_script("return window.PAGE_ID") == "kept"
