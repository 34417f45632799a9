"""``crosslens explain``: the prompt format and the formulas, then the whole path against a stand-in
OpenAI-compatible endpoint of the standard library (:class:`crosslens.explain.StubEndpoint`, driven
through the real ``openai`` client) that answers deterministically and misbehaves on demand:
explaining, scoring, drift, resuming, faults, bad input, the key's secrecy.

The feature database is planted (tests/explain_fixtures.py): features reading known words, one
whose meaning drifts, one too dense to score, one dead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
from explain_fixtures import CAT, DEAD, DENSE, DRIFTER, N_SNAPSHOTS, WINDOW, rows, write_planted_database

from crosslens.dashboards.explanation_schema import EXPLANATIONS_NAME, MAX_SNAPSHOTS, SOURCES, STRIDE, explanation_id
from crosslens.explain import ExplainConfig, ExplainError, StubEndpoint, dry_run, explain_run
from crosslens.explain.contexts import FeatureContexts, held_out_passages, plan_feature, silent_stretches
from crosslens.explain.prompts import (
    PROMPT_FORMAT,
    AnswerError,
    Window,
    explain_messages,
    parse_explanation,
    parse_judgements,
)
from crosslens.explain.run import Explainer, Work
from crosslens.explain.scoring import DriftRule, balanced_accuracy, detection, feature_drift
from crosslens.explain.store import Binding

ROOT = Path(__file__).resolve().parents[1]
MODEL = "stub-model"


def config(stub: StubEndpoint | None = None, **kwargs) -> ExplainConfig:
    settings = {"progress": False, "backoff": 0.01, "deadline": 5.0}
    if stub is not None:
        settings |= {"endpoint": stub.url, "model": MODEL}
    return ExplainConfig(**(settings | kwargs))


@pytest.fixture
def run(tmp_path) -> Path:
    write_planted_database(tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def stub():
    with StubEndpoint(model=MODEL) as endpoint:
        yield endpoint


def content(run: Path) -> dict[str, list]:
    """Everything the explanations file holds but its meta's endpoint (which names the stub's port)."""
    tables = ("explanations", "phases", "scores", "feature_scores", "failures")
    return {t: rows(run, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}


# --------------------------------------------------------------------------- the prompt format
def test_explain_prompt_marks_the_strongest_tokens_and_lists_their_strength():
    windows = [
        Window((" the", " big", " cat", " sat"), (0.0, 2.0, 4.0, 1.0)),  # 1.0 < 0.3 x 4: unmarked
        Window((" a", "\n", " dog"), (0.0, 0.0, 2.0)),
    ]
    system, user = explain_messages(windows)
    assert system["role"] == "system" and "Explanation:" in system["content"]
    lines = user["content"].splitlines()
    assert lines[2] == "Passage 1:  the<< big cat>> sat"  # neighbours share one pair
    assert lines[3] == 'Strengths: " big" 5, " cat" 10'  # on the scale of the largest shown, 4.0
    assert lines[4] == "Passage 2:  a\\n<< dog>>"  # a line break written as an escape
    assert lines[5] == 'Strengths: " dog" 5'


def test_answers_are_read_strictly():
    assert parse_explanation("thinking...\nExplanation: the token dog.") == "the token dog"
    assert parse_explanation('[EXPLANATION]: "Names of months"') == "Names of months"
    assert parse_explanation('**Explanation:** the text "cat"') == 'the text "cat"'
    for bad in (
        "I am not sure.",
        "",
        None,
        "Explanation: Explanation could not be parsed.",
        "Explanation: " + "x" * 500,
    ):
        with pytest.raises(AnswerError):
            parse_explanation(bad)
    assert parse_judgements("[0, 1]\nso: [1, 0, true]", 3) == [True, False, True]
    for bad in ("[1, 0]", "[1, 2, 0]", "no list", "[1, 0, 1"):
        with pytest.raises(AnswerError):
            parse_judgements(bad, 3)


def test_balanced_accuracy_and_drift():
    assert balanced_accuracy(3, 4, 1, 2) == pytest.approx((0.75 + 0.5) / 2)
    counts = detection([True, True, False, False, True], [True, False, False, None, None])
    assert (counts.true_positives, counts.n_activating, counts.true_negatives, counts.n_non_activating) == (1, 2, 1, 1)
    rule, judge = DriftRule(min_score=0.7, min_drop=0.2), ("m", PROMPT_FORMAT)
    held = [("crosslens", judge, 0, 0, 0.9), ("crosslens", judge, 0, 3, 0.85)]
    held += [("crosslens", judge, 3, 3, 0.95), ("crosslens", judge, 3, 0, 0.8)]
    assert feature_drift(held, {0, 3}, rule).flagged is False
    moved = [("crosslens", judge, 0, 0, 1.0), ("crosslens", judge, 0, 3, 0.5)]
    moved += [("crosslens", judge, 3, 3, 0.6), ("crosslens", judge, 3, 0, 0.1)]
    found = feature_drift(moved, {0, 3}, rule)
    assert (found.drift, found.explained, found.scored_on, found.flagged) == (0.5, 0, 3, True)  # 3's own 0.6 < 0.7
    assert feature_drift(moved, {0}, rule) is None  # no other life reading
    judged_elsewhere = [("delphi", ("m", "delphi-detection"), 0, 0, 1.0), ("delphi", judge, 0, 3, 0.5)]
    assert feature_drift(judged_elsewhere, {0, 3}, rule) is None  # two judges' scores: no pair


def test_a_python_config_reads_what_the_flags_take_and_refuses_a_limit_under_1():
    """From Python, ``features="0-3"`` and ``features=[1, 2]`` failed to unpack inside the run,
    ``classes="persistent"`` was read letter by letter, and ``max_features=0`` read as no limit: every
    feature explained, and paid for."""
    from crosslens.explain.config import ExplainError

    config = ExplainConfig(features="0-3, 7", classes="persistent", phases="code,peak")
    assert (config.features, config.classes, config.phases) == ([(0, 3), (7, 7)], ["persistent"], ["code", "peak"])
    assert ExplainConfig(features=[1, (4, 6), [8, 9]]).features == [(1, 1), (4, 6), (8, 9)]
    for bad in ([(5, 2)], [(-3, 2)], ["3"]):
        with pytest.raises(ExplainError, match=r"^features: .* is not a feature id or a \(low, high\) range of ids"):
            ExplainConfig(features=bad)
    for limit in (0, -1):
        with pytest.raises(ExplainError, match=rf"^--max-features must be >= 1, got {limit}; leave it unset"):
            ExplainConfig(max_features=limit)
    for endpoint in ("http://127.0.0.1:99999/v1", "127.0.0.1:8000", 8000, "http://me:secret@host:x/v1"):
        with pytest.raises(ExplainError) as refused:  # the port reached urllib's "Port out of range 0-65535"
            ExplainConfig(endpoint=endpoint)
        message = str(refused.value)
        assert message.startswith("--endpoint takes the http(s) URL") and "secret" not in message
    assert ExplainConfig(endpoint="https://me:secret@api.example.com/v1").endpoint.endswith("/v1")


def test_explanation_ids_of_one_feature_stay_within_its_stride_and_more_snapshots_are_refused():
    """explanation_id gives a feature STRIDE ids; from 1,365 snapshots a feature's last readings
    took the next feature's ids, and a stored explanation silently stood for another's."""
    assert MAX_SNAPSHOTS == 1364
    readings = range(-1, MAX_SNAPSHOTS)
    ids = [explanation_id(f, s, source) for f in (0, 1) for s in readings for source in SOURCES]
    assert len(set(ids)) == len(ids) and max(ids[: len(ids) // 2]) < STRIDE <= min(ids[len(ids) // 2 :])
    assert explanation_id(0, MAX_SNAPSHOTS, SOURCES[-1]) >= STRIDE  # one snapshot more overflows
    assert Binding(None, None, 10, MAX_SNAPSHOTS).n_snapshots == MAX_SNAPSHOTS
    with pytest.raises(ExplainError) as caught:
        Binding(None, None, 10, MAX_SNAPSHOTS + 1)
    assert str(caught.value) == (
        "this run has 1365 snapshots; crosslens explain numbers the explanations of at most 1364 per feature "
        "(explanation_schema.STRIDE 4096): explain a crosscoder of at most 1364 snapshots"
    )


def test_a_run_refused_at_the_snapshot_limit_leaves_no_connection_open(run, stub, monkeypatch):
    """A run of more snapshots than explanation ids can number was refused with the read-only
    connection to its feature database left open (until the garbage collector found it)."""
    import sqlite3

    import crosslens.explain.run as running

    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect
    binding = running.Binding

    def recording(*args, **kwargs):
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    # the run's database read as one of a snapshot more than explanation ids can number
    monkeypatch.setattr(running, "Binding", lambda **kw: binding(**{**kw, "n_snapshots": MAX_SNAPSHOTS + 1}))
    monkeypatch.setattr(sqlite3, "connect", recording)
    for attempt in (
        lambda: explain_run(run, config(stub)),
        lambda: dry_run(run, config()),
        lambda: Explainer(run, config()),
    ):
        opened.clear()
        with pytest.raises(
            ExplainError, match=f"^this run has {MAX_SNAPSHOTS + 1} snapshots; .* at most {MAX_SNAPSHOTS} snapshots$"
        ):
            attempt()
        assert len(opened) == 2  # the database's checks, then the run's own reading of it
        for connection in opened:
            with pytest.raises(sqlite3.ProgrammingError, match="closed"):
                connection.execute("SELECT 1")
    assert not (run / EXPLANATIONS_NAME).exists()


def test_held_out_contexts_are_verified_and_split_from_the_shown_ones(run):
    from crosslens.dashboards.record import open_database

    db = open_database(run)
    contexts = FeatureContexts(db)
    plan = plan_feature(contexts, DRIFTER, 0, 1, ("code", "emergence", "peak", "last"))
    assert [(p.phase, p.snapshot, p.explained) for p in plan.phases] == [
        ("code", -1, -1),
        ("emergence", 0, 0),
        ("peak", 1, 1),
        ("last", N_SNAPSHOTS - 1, N_SNAPSHOTS - 1),
    ]
    reading = plan.readings[N_SNAPSHOTS - 1]
    assert [c.rank for c in reading.shown] == [0, 2, 4] and {c.kind for c in reading.shown} == {"top"}
    judged = held_out_passages(reading, WINDOW, 10, 0, DRIFTER)
    assert judged.n_activating == 5 and judged.n_non_activating == 5  # 3 odd top + 2 quantile; as many silent
    assert all(("dog" in p) == label for p, label in zip(judged.passages, judged.activating))
    assert judged == held_out_passages(reading, WINDOW, 10, 0, DRIFTER)  # seeded: the same every time
    window = reading.contexts[0].window
    assert silent_stretches(window, WINDOW) == [(0, WINDOW), (WINDOW + 1, 2 * WINDOW + 1)]
    dense = plan_feature(contexts, DENSE, 1, 2, ("last",))
    assert held_out_passages(dense.readings[N_SNAPSHOTS - 1], WINDOW, 10, 0, DENSE) is None  # never silent
    same = plan_feature(contexts, CAT, 2, 2, ("emergence", "peak"))  # emergence and peak at one snapshot
    assert [(p.phase, p.explained) for p in same.phases] == [("emergence", 2), ("peak", 2)]
    db.close()


def test_passages_are_cut_shorter_where_a_feature_fires_on_many_tokens():
    from crosslens.explain.contexts import Context, Reading

    def context(rank: int) -> Context:  # fires on 3 neighbouring tokens: 3 silent ones each side
        tokens = tuple(f"<t{rank}{k}>" for k in range(9))
        return Context("top", rank, rank, 10, 4, Window(tokens, (0, 0, 0, 1.0, 2.0, 1.0, 0, 0, 0)))

    reading = Reading(0, [context(rank) for rank in range(8)])
    judged = held_out_passages(reading, 4, 10, 0, 7)  # no silent stretch of 4: cut to 3 tokens
    assert judged.n_activating == 4 and judged.n_non_activating == 4
    assert {p.count("<t") for p in judged.passages} == {3}
    dense = Reading(0, [Context("top", r, r, 10, 4, Window(("a",) * 9, (1.0,) * 9)) for r in range(4)])
    assert held_out_passages(dense, 4, 10, 0, 7) is None


def test_no_held_out_passage_holds_a_token_of_a_shown_window():
    """A quantile context at a shown top context's position, or a few tokens from one, was judged
    as held out: text the explanation was written from."""
    import re

    from crosslens.explain.contexts import Context, Reading

    def context(kind: str, rank: int, seq: int, pos: int) -> Context:  # fires at pos; tokens name (seq, pos)
        tokens = tuple(f" s{seq}p{pos - 4 + k}" for k in range(9))
        return Context(kind, rank, seq, pos, 4, Window(tokens, (0, 0, 0, 0, 2.0, 0, 0, 0, 0)))

    shown = [context("top", 0, 0, 100), context("top", 2, 1, 100)]  # positions 96-104 of sequences 0 and 1
    held = [
        context("top", 1, 2, 100),  # clear of both
        context("quantile", 0, 0, 100),  # a shown context again
        context("quantile", 1, 1, 103),  # fires inside a shown window
        context("quantile", 2, 0, 107),  # fires 3 tokens past one: its passages start after it
    ]
    reading = Reading(0, shown + held)
    seen = {(seq, pos) for c in shown for seq, pos in [(c.seq, c.pos - 4 + k) for k in range(9)]}
    for seed in range(20):
        judged = held_out_passages(reading, 4, 10, seed, 7)
        held_tokens = [(int(s), int(p)) for text in judged.passages for s, p in re.findall(r"s(\d+)p(\d+)", text)]
        assert held_tokens and not set(held_tokens) & seen
        assert judged.n_activating == 2  # of sequence 2 and at position 107 of sequence 0
        (past,) = [text for text, label in zip(judged.passages, judged.activating) if label and "s0p" in text]
        assert past in {" s0p105 s0p106 s0p107 s0p108", " s0p106 s0p107 s0p108 s0p109", " s0p107 s0p108 s0p109 s0p110"}


# --------------------------------------------------------------------------- the whole path
def test_every_feature_is_explained_scored_and_its_drift_flagged(run, stub):
    planned = dry_run(run, config())
    assert stub.requests == 0  # a dry run sends nothing
    summary = explain_run(run, config(stub))
    assert (summary.explain_requests, summary.score_requests) == (planned.explain_requests, planned.score_requests)
    assert (
        stub.requests
        == planned.explain_requests + planned.score_requests
        == summary.explain_requests + summary.score_requests
    )
    assert summary.traffic.prompt_tokens > 0 and summary.traffic.failed == 0

    texts = dict(((f, s), t) for f, s, t in rows(run, "SELECT feature, snapshot, text FROM explanations"))
    assert {s for f, s in texts if f == CAT} == {-1, 1, 2, N_SNAPSHOTS - 1}
    assert all(t == 'the text "cat"' for (f, _), t in texts.items() if f == CAT)
    assert texts[(DRIFTER, 0)] == 'the text "cat"' and texts[(DRIFTER, N_SNAPSHOTS - 1)] == 'the text "dog"'
    assert not [f for f, _ in texts if f == DEAD]
    assert {prompt for (prompt,) in rows(run, "SELECT DISTINCT prompt FROM explanations")} == {PROMPT_FORMAT}
    meta = dict(rows(run, "SELECT key, value FROM meta"))
    assert json.loads(meta["prompt_format"]) == PROMPT_FORMAT

    scores = {
        (f, s, on): value
        for f, s, on, value in rows(
            run,
            "SELECT e.feature, e.snapshot, s.scored_on, s.balanced_accuracy FROM scores s JOIN explanations e ON e.id = s.explanation",
        )
    }
    assert all(v == 1.0 for (f, _, _), v in scores.items() if f == CAT)  # it reads " cat" everywhere
    last = N_SNAPSHOTS - 1
    assert scores[(DRIFTER, 0, 0)] == 1.0 and scores[(DRIFTER, 0, last)] == 0.5  # "cat" fails on the "dog" contexts
    assert scores[(DRIFTER, last, last)] == 1.0 and scores[(DRIFTER, last, 0)] == 0.5
    assert (DRIFTER, -1, 0) not in scores  # the code's explanation is scored on its own reading only
    assert (
        not [key for key in scores if key[0] == DENSE] and summary.unscorable == 10
    )  # never silent: 4 explanations, 1 + 3 x 3 scores not asked
    flagged = rows(run, "SELECT feature, drift, explained, scored_on FROM feature_scores WHERE flagged = 1")
    assert flagged == [(DRIFTER, 0.5, 0, last)]

    again = explain_run(run, config(stub))  # everything stored: nothing is asked again
    assert again.explain_requests == again.score_requests == 0
    assert stub.requests == summary.explain_requests + summary.score_requests


def test_the_same_answers_give_the_same_bytes_whatever_their_order(tmp_path, stub):
    files = []
    for concurrency in (1, 6):
        run = write_planted_database(tmp_path / f"run{concurrency}").parent
        explain_run(run, config(stub, concurrency=concurrency))
        files.append((run / EXPLANATIONS_NAME).read_bytes())
        assert not (run / (EXPLANATIONS_NAME + "-wal")).exists()  # a finished run leaves one file
    assert hashlib.sha256(files[0]).hexdigest() == hashlib.sha256(files[1]).hexdigest()


def test_a_misbehaving_endpoint_is_retried_and_unreadable_answers_asked_again(run, stub, tmp_path):
    clean_run = write_planted_database(tmp_path / "clean").parent
    with StubEndpoint(model=MODEL) as clean:
        explain_run(clean_run, config(clean, concurrency=1))
    stub.slow_seconds = 1.0
    stub.fail_next("429", "500", "malformed", "slow", "empty", "429")
    summary = explain_run(run, config(stub, concurrency=1, deadline=0.3))
    assert (
        summary.traffic.retried == 5 and summary.traffic.failed == 0
    )  # 429, 500, malformed, slow, 429 retried; "empty" asked again
    assert [e["fault"] for e in stub.log[:7]] == ["429", "500", "malformed", "slow", "empty", "429", None]
    assert content(run) == content(clean_run)  # nothing lost, nothing stored from a bad answer

    # an answer that cannot be read twice in a row: recorded as failed, never stored; asked again next run
    rerun = write_planted_database(tmp_path / "again").parent
    stub.fail_next("garbled", "garbled")
    explain_run(rerun, config(stub, concurrency=1))
    failures = rows(rerun, "SELECT feature, snapshot, kind, attempts, error FROM failures")
    assert len(failures) == 1 and failures[0][2] == "explain" and "no 'Explanation:' line" in failures[0][4]
    feature, snapshot = failures[0][:2]
    assert not rows(rerun, "SELECT 1 FROM explanations WHERE feature = ? AND snapshot = ?", (feature, snapshot))
    before = stub.requests
    explain_run(rerun, config(stub))
    assert rows(rerun, "SELECT count(*) FROM failures") == [(0,)]
    assert stub.requests - before >= 2  # the explanation and its scores
    assert content(rerun) == content(clean_run)


def test_retries_give_up_and_the_run_goes_on(run, stub):
    stub.fail_next("500", "500", "500")
    summary = explain_run(run, config(stub, concurrency=1, retries=2))
    assert summary.traffic.failed == 1 and summary.traffic.retried == 2
    (failure,) = rows(run, "SELECT kind, attempts, error FROM failures")
    assert failure[0] == "explain" and "after 3 tries: 500" in failure[2]


def test_one_refusal_of_every_request_stops_the_run_quoting_it(run, stub):
    """A 400 every request gets (a parameter the model does not take) was recorded request after
    request, and the run went on asking for the whole selection."""
    from crosslens.explain.client import LOST_AFTER, EndpointError
    from crosslens.explain.stub import UNSUPPORTED

    explain_run(run, config(stub, features=str(CAT)))
    kept = content(run)["explanations"]
    before = stub.requests
    stub.fail_next(*["400"] * 40)
    with pytest.raises(EndpointError) as caught:
        explain_run(run, config(stub, concurrency=1))
    message = str(caught.value)
    assert stub.requests - before == LOST_AFTER == 8  # no retry of a 4xx; stopped at the 8th alike
    assert len(message.splitlines()) == 1 and f"refused {LOST_AFTER} requests in a row alike" in message
    assert f"400: {UNSUPPORTED}" in message and "--max-tokens" in message and "--model stub-model" in message
    assert "run the same command again" in message
    assert content(run)["explanations"] == kept  # what was answered is kept
    # each refused request recorded, as any failed one is, but the one that stops the run
    assert rows(run, "SELECT count(*), min(attempts) FROM failures") == [(LOST_AFTER - 1, 1)]


def test_a_slow_server_is_told_apart_from_a_lost_one(run, stub):
    """Requests that time out on a server that answers, only slowly, ended the run with "lost ...:
    restart the server"."""
    from crosslens.explain.client import LOST_AFTER, EndpointError

    stub.slow_seconds = 0.6
    stub.fail_next(*["slow"] * 40)
    with pytest.raises(EndpointError) as caught:
        explain_run(run, config(stub, deadline=0.3, retries=1, concurrency=2))
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "lost" not in message and "restart" not in message, message
    assert f"answered none of {LOST_AFTER} requests in a row within --deadline 0.3 seconds" in message
    assert "raise --deadline, or lower --concurrency (now 2)" in message


def test_a_key_with_a_line_break_is_refused_naming_its_variable(run, stub, monkeypatch):
    """A key read with its trailing line break made httpx refuse the header, which openai reports
    as a connection error: "cannot reach ...: start the server there"."""
    from crosslens.explain.client import EndpointError

    for key in ("sk-test-abcdefgh12345678\n", "sk-test-abcdefgh12345678\r", "sk-test abcdefgh12345678"):
        monkeypatch.setenv("OPENAI_API_KEY", key)
        with pytest.raises(EndpointError) as caught:
            explain_run(run, config(stub))
        message = str(caught.value)
        assert len(message.splitlines()) == 1 and "abcdefgh" not in message
        assert message.startswith("$OPENAI_API_KEY holds a line break, spaces") and "strip it" in message
    assert stub.requests == 0 and not (run / EXPLANATIONS_NAME).exists()  # refused before anything was asked


# --------------------------------------------------------------------------- Ctrl-C, kill, resume
def cli(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    environment = os.environ | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"} | (env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "crosslens", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def stored_digests(run: Path) -> Counter:
    """The digests of the requests whose answers the explanations file holds: the stub's digest of
    the messages crosslens sends for each stored explanation and score (two works may send the same
    messages: an explanation of the same text, judged on the same contexts)."""
    explainer = Explainer(run, config())
    found: Counter = Counter()
    lives = {
        f: (e, p)
        for f, e, p in explainer.database.execute("SELECT feature, emergence_snapshot, peak_snapshot FROM features")
    }
    stored = {(f, s): (i, t) for f, s, i, t in rows(run, "SELECT feature, snapshot, id, text FROM explanations")}
    scored = rows(
        run, "SELECT e.feature, e.snapshot, s.scored_on FROM scores s JOIN explanations e ON e.id = s.explanation"
    )
    for feature in {f for f, _ in stored}:
        plan = plan_feature(explainer.contexts, feature, *lives[feature], explainer.config.phases)
        works = [Work("explain", plan, s) for (f, s) in stored if f == feature]
        works += [
            Work("score", plan, s, "crosslens", on, stored[(f, s)], explainer.judged(plan, on))
            for f, s, on in scored
            if f == feature
        ]
        for work in works:
            text = json.dumps(explainer.messages(work), sort_keys=True)
            found[hashlib.sha256(text.encode()).hexdigest()] += 1
    explainer.close()
    return found


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_a_stopped_run_resumed_asks_nothing_twice(tmp_path, stop):
    clean_run = write_planted_database(tmp_path / "clean").parent
    with StubEndpoint(model=MODEL) as clean:
        explain_run(clean_run, config(clean))
        total, everything = clean.requests, Counter(clean.digests())
    run = write_planted_database(tmp_path / "run").parent
    with StubEndpoint(model=MODEL, delay=0.05) as stub:
        args = ["explain", str(run), "--endpoint", stub.url, "--model", MODEL, "--concurrency", "3"]
        process = cli(args)
        deadline = time.monotonic() + 60
        while stub.requests < total // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)
        if stop == signal.SIGINT:
            assert process.returncode == 130 and "interrupted:" in err and "run the same command" in err, err
            assert "Traceback" not in err
        time.sleep(0.2)  # the answers in flight land (and are thrown away)
        first = len(stub.digests())
        stored = stored_digests(run)
        assert 0 < sum(stored.values()) < total
        stub.delay = 0.0
        process = cli(args)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        second = Counter(stub.digests()[first:])
    # the resumed run asks exactly what is not stored: each missing request once, nothing stored again
    assert second == everything - stored
    assert content(run) == content(clean_run)


def test_explain_runs_where_an_event_loop_already_runs(run, stub, tmp_path):
    """A Jupyter kernel runs an event loop in the thread that runs a cell: explain_run goes on in a
    thread of its own there."""
    import asyncio

    planned = dry_run(run, config(max_features=2))
    assert planned.explain_requests > 0 and planned.score_requests > 0  # the run below has work to do

    async def cell():
        return explain_run(run, config(stub, max_features=2))

    summary = asyncio.run(cell())
    assert summary.explain_requests > 0 and summary.stored["explanations"] == summary.explain_requests
    # the thread asks exactly what the plan says, each request once
    assert (summary.explain_requests, summary.score_requests) == (planned.explain_requests, planned.score_requests)
    assert stub.requests == planned.explain_requests + planned.score_requests
    assert summary.stored["scores"] == planned.score_requests and summary.traffic.failed == 0
    # and stores what a run without an outer event loop stores
    plain = write_planted_database(tmp_path / "plain").parent
    explain_run(plain, config(stub, max_features=2))
    assert content(run) == content(plain)


# --------------------------------------------------------------------------- drift and errors
def drift_rule(run: Path) -> dict:
    return json.loads(dict(rows(run, "SELECT key, value FROM meta"))["drift_rule"])


def flagged(run: Path) -> list[int]:
    return [f for (f,) in rows(run, "SELECT feature FROM feature_scores WHERE flagged = 1 ORDER BY feature")]


def test_a_new_drift_rule_is_applied_to_every_stored_feature(run, stub, tmp_path):
    """A run wrote its drift rule to meta but recomputed the flags of its own features only, and an
    import recomputed with its rule and left meta's as it was: flags the rule in meta did not give."""
    from crosslens.explain import import_explanations

    explain_run(run, config(stub, features=f"{CAT},{DRIFTER}"))
    assert flagged(run) == [DRIFTER]  # 0.5 lower on the last snapshot's contexts
    explain_run(run, config(stub, features=str(CAT), drift_min_drop=0.6))
    assert drift_rule(run) == {"min_score": 0.7, "min_drop": 0.6}
    assert flagged(run) == []  # DRIFTER too, though this run did not select it
    listing = tmp_path / "neuronpedia.json"
    row = {"modelId": "pico", "layer": "0-res-crosslens__step200", "index": "5", "description": "boats"}
    listing.write_text(json.dumps([row]))
    import_explanations(run, listing, config(drift_min_drop=0.2))
    assert drift_rule(run) == {"min_score": 0.7, "min_drop": 0.2}
    assert flagged(run) == [DRIFTER]


def test_a_run_asking_fewer_phases_keeps_the_stored_phases_and_drift(run, stub):
    """A run with --phases code deleted every other phase row of the features it selected, and
    with them the drift verdicts and the browser's phase labels, while asking nothing."""
    explain_run(run, config(stub, features=f"{CAT},{DRIFTER}"))
    last = N_SNAPSHOTS - 1
    phases = rows(run, "SELECT phase, snapshot, explained FROM phases WHERE feature = ? ORDER BY phase", (DRIFTER,))
    assert phases == [("code", -1, -1), ("emergence", 0, 0), ("last", last, last), ("peak", 1, 1)]
    verdicts = rows(run, "SELECT * FROM feature_scores ORDER BY feature")
    assert verdicts == [(CAT, 1.0, 0.0, 1, 2, 0), (DRIFTER, 1.0, 0.5, 0, last, 1)]
    asked = stub.requests
    narrower = explain_run(run, config(stub, features=f"{CAT},{DRIFTER}", phases="code"))
    assert narrower.explain_requests == narrower.score_requests == 0 and stub.requests == asked
    after = rows(run, "SELECT phase, snapshot, explained FROM phases WHERE feature = ? ORDER BY phase", (DRIFTER,))
    assert after == phases
    assert rows(run, "SELECT * FROM feature_scores ORDER BY feature") == verdicts
    assert flagged(run) == [DRIFTER]


def test_drift_compares_the_scores_of_one_judge(run, stub):
    """Drift set an explanation's score on its own contexts, by one model, against its scores on the
    other phases' contexts by another."""
    explain_run(run, config(stub, features=str(DRIFTER), drift=False))  # each scored on its own reading
    with sqlite3.connect(run / EXPLANATIONS_NAME) as db:  # words the second judge wrote (another model's are refused)
        db.execute("UPDATE explanations SET model = 'other-judge'")
    db.close()
    with StubEndpoint(model="other-judge") as other:
        explain_run(run, config(other, model="other-judge", features=str(DRIFTER)))  # and on the others
    own = "scored_on = (SELECT snapshot FROM explanations e WHERE e.id = explanation)"
    assert set(rows(run, f"SELECT model, {own} FROM scores")) == {(MODEL, 1), ("other-judge", 0)}
    assert rows(run, "SELECT detection, drift, flagged FROM feature_scores") == [(1.0, None, 0)]


def test_scores_judged_on_other_passages_are_kept_said_once_and_never_set_against_these(run, stub):
    """A run with another --seed or --n-examples skipped the scores stored and asked the missing ones
    on other passages, and drift set the two against each other: a drop of passages, not meaning."""
    from crosslens.explain.contexts import score_prompt

    explain_run(run, config(stub, features=str(DRIFTER), drift=False, n_examples=2))  # each on its own reading
    first = rows(run, "SELECT * FROM scores ORDER BY 1, 2")
    assert {s[-1] for s in first} == {score_prompt(WINDOW, 2, 0)} and len(first) == 4
    settings = config(stub, features=str(DRIFTER), n_examples=10, seed=5)
    for call in (dry_run, explain_run):
        with pytest.warns(UserWarning) as caught:
            summary = call(run, settings)
        (warning,) = [str(w.message) for w in caught]
        assert len(warning.splitlines()) == 1 and str(run / EXPLANATIONS_NAME) in warning
        assert (
            f"holds 4 scores of these features judged on other held-out passages (4 with held-out/1 window={WINDOW} "
            f"n_examples=2 seed=0), not with held-out/1 window={WINDOW} n_examples=10 seed=5" in warning
        )
        assert "pass --overwrite to judge every one on these passages" in warning
        assert (summary.explain_requests, summary.score_requests) == (0, 6)  # the drift matrix's other cells
    assert set(first) <= set(rows(run, "SELECT * FROM scores"))  # the stored ones kept as they were
    assert rows(run, "SELECT detection, drift, flagged FROM feature_scores") == [(1.0, None, 0)]  # no pair of one judge

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explain_run(run, dataclasses.replace(settings, overwrite=True))
    assert {prompt for (prompt,) in rows(run, "SELECT DISTINCT prompt FROM scores")} == {score_prompt(WINDOW, 10, 5)}
    assert rows(run, "SELECT drift, flagged FROM feature_scores") == [(0.5, 1)]


def test_an_error_in_a_worker_stops_the_run_in_one_line(run, stub, monkeypatch):
    """A worker ended by anything but an EndpointError left the run waiting for it forever."""
    import sqlite3
    import threading

    from crosslens.explain import ExplainError
    from crosslens.explain.store import ExplanationStore

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ExplanationStore, "add_score", locked)
    outcome: dict = {}

    def target() -> None:
        try:
            explain_run(run, config(stub, concurrency=2, features=f"{CAT},{DRIFTER}"))
        except BaseException as error:  # noqa: BLE001 - looked at below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "explain_run still waits for its stopped workers"
    error = outcome.get("error")
    assert isinstance(error, ExplainError), error
    message = str(error)
    assert len(message.splitlines()) == 1 and "OperationalError: database is locked" in message, message
    assert "run the same command again" in message and str(run / EXPLANATIONS_NAME) in message
    assert rows(run, "SELECT count(*) FROM explanations")[0][0] > 0  # what was answered before is kept


def test_a_run_asking_another_model_is_refused_naming_both_models_and_keeps_the_record(run, stub):
    """A run with another --model asked nothing, said nothing, and recorded the new model as the
    file's endpoint while every explanation stayed the first model's; then it only warned, after
    its model had judged the other model's explanations. It is refused before anything is sent."""
    explain_run(run, config(stub, features=f"{CAT},{DRIFTER}"))
    stored = rows(run, "SELECT count(*) FROM explanations")[0][0]
    assert stored == 8
    meta = dict(rows(run, "SELECT key, value FROM meta"))
    assert json.loads(meta["endpoint"]) == {"url": stub.url, "model": MODEL}
    with StubEndpoint(model="better-model") as better:
        settings = config(better, model="better-model", features=f"{CAT},{DRIFTER}")
        for call in (dry_run, explain_run):
            with pytest.raises(ExplainError) as refusal:
                call(run, settings)
            warning = str(refusal.value)
            assert len(warning.splitlines()) == 1 and str(run / EXPLANATIONS_NAME) in warning
            assert f"holds 8 explanations of these features written by {MODEL} (8), not better-model" in warning
            assert "pass --overwrite to ask better-model for every one, or move the file aside" in warning
        assert better.requests == 0
        assert rows(run, "SELECT count(*) FROM explanations")[0][0] == stored
        assert dict(rows(run, "SELECT key, value FROM meta"))["endpoint"] == meta["endpoint"]  # nothing was asked

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            explain_run(run, config(stub, features=f"{CAT},{DRIFTER}"))  # its own model: nothing to say
            fresh = explain_run(run, dataclasses.replace(settings, overwrite=True))
        assert fresh.explain_requests == 8 and better.requests > 0
    assert {model for (model,) in rows(run, "SELECT DISTINCT model FROM explanations")} == {"better-model"}
    assert json.loads(dict(rows(run, "SELECT key, value FROM meta"))["endpoint"])["model"] == "better-model"
