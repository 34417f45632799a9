"""``crosslens browse``'s live panels: the live API against :class:`crosslens.live.LiveModels`, its
one-line refusals (the server goes on, nothing on disk changes), many requests while the models
load, and the panels in a real headless Chromium, whose numbers must equal the Python function's.

Screenshots of the panels go to ``$CROSSLENS_SCREENSHOTS`` (default /tmp/live_screens).
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import types
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import trust_fixtures as tf
from live_fixtures import PROMPT, TEXT, edited_copy, live, run, words  # noqa: F401  (fixtures)
from test_browser import driver, open_page, screenshot, wait_for  # noqa: F401  (driver: the module's Chromium)

from crosslens.browser import BrowseConfig, make_server
from crosslens.checkpoints import CheckpointSuite
from crosslens.dashboards import schema
from crosslens.live import LiveAnswers, LiveModels

SCREENS = Path(os.environ.get("CROSSLENS_SCREENSHOTS", "/tmp/live_screens"))


def serve(run: Path, backend, config: BrowseConfig | None = None):
    server = make_server(run, config or BrowseConfig(port=0), backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(run, live):
    server = serve(run, LiveAnswers(live))
    yield server
    server.shutdown()
    server.server_close()


def get(server, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def query(**params) -> str:
    return urllib.parse.urlencode(params)


def assert_unavailable_beside_the_stored_pages(server, problem: str) -> None:
    """The live status says the panels are unavailable, for ``problem``, and the stored pages work."""
    state = get(server, "/api/live/status")[1]
    assert (state["state"], state["problem"]) == ("unavailable", problem)
    assert get(server, "/api/feature/3")[0] == 200


# --------------------------------------------------------------------------- the API
def test_the_live_api_answers_what_the_python_function_returns(server, live):
    status, answer = get(server, "/api/live/text?" + query(text=TEXT))
    assert status == 200, answer
    acts = live.activations(TEXT)
    assert answer["tokens"] == acts.tokens
    for reading in (-1, 0, 1, 2):
        want = [[f, round(a, 6), t] for f, a, t in acts.top(reading, 20)]
        assert answer["readings"][str(reading)] == want
        for f, _, _ in want:
            assert answer["rows"][str(f)]["feature"] == f and len(answer["rows"][str(f)]["norms"]) == 3
    feature = answer["readings"]["-1"][0][0]
    status, heat = get(server, f"/api/live/feature/{feature}/text?" + query(text=TEXT))
    assert status == 200 and heat["rows"] == [-1, 0, 1, 2] and heat["tokens"] == acts.tokens
    assert heat["acts"] == [[round(a, 6) for a in row] for row in acts.feature(feature).tolist()]
    steer = dict(prompt=PROMPT, strength=6, mode="clamp", tokens=7, temperature=0.5, seed=3)
    status, steered = get(server, f"/api/live/feature/{feature}/steer?" + query(**steer))
    assert status == 200, steered
    want = live.steer(feature, PROMPT, strength=6.0, mode="clamp", n_tokens=7, temperature=0.5, seed=3)
    assert [(r["plain"], r["steered"]) for r in steered["snapshots"]] == [(r.plain, r.steered) for r in want.snapshots]
    # unasked settings are the library's defaults, which the page's form is also given
    status, plain = get(server, f"/api/live/feature/{feature}/steer?" + query(prompt=PROMPT, strength=6))
    want = live.steer(feature, PROMPT, strength=6.0)
    assert [(r["plain"], r["steered"]) for r in plain["snapshots"]] == [(r.plain, r.steered) for r in want.snapshots]
    signature = inspect.signature(live.steer).parameters
    assert get(server, "/api/run")[1]["steer_defaults"] == {
        "mode": signature["mode"].default,
        "tokens": signature["n_tokens"].default,
        "temperature": signature["temperature"].default,
        "seed": signature["seed"].default,
    }
    status, state = get(server, "/api/live/status")
    assert state["state"] == "ready" and state["resident"] == [0, 1, 2] and state["loads"] == [1, 1, 1]


def test_bad_live_requests_answer_one_line_and_the_server_goes_on(server, run):
    before = tf.tree_bytes(run)
    long_text, too_many = "x" * 4001, words(80)
    steer = "/api/live/feature/3/steer?prompt=the+dog&"
    cases = [
        ("/api/live/text?text=", 400, "text= is empty: type the text"),
        ("/api/live/text", 400, "text= is empty"),
        ("/api/live/text?" + query(text=long_text), 400, "text= has 4,001 characters: at most 4,000"),
        ("/api/live/text?text=%FF%FEdog", 400, "parameters are not valid UTF-8"),
        ("/api/live/text?" + query(text=too_many), 400, "past the models' context of 64"),
        ("/api/live/feature/3/steer?prompt=%20%20&strength=1", 400, "prompt= is empty"),
        (steer + "strength=nan", 400, "strength=nan: give a finite number"),
        (steer + "strength=inf", 400, "strength=inf: give a finite number"),
        (steer + "strength=-1e400", 400, "give a finite number"),
        (steer + "strength=abc", 400, "strength=abc: not a number"),
        (steer + "strength=", 400, "strength= is missing: give a number"),
        (steer + "strength=1e7", 400, "strength=1e7: give a number from -1e+06 to 1e+06"),
        (steer + "strength=1&tokens=65", 400, "tokens=65: give a whole number from 1 to 64"),
        (steer + "strength=1&tokens=1.5", 400, "tokens=1.5: not a whole number"),
        (steer + "strength=1&tokens=62", 400, "past the models' context of 64"),
        (steer + "strength=1&temperature=-1", 400, "temperature=-1: give a number from 0 to 10"),
        (steer + "strength=1&seed=-1", 400, "seed=-1: give a whole number from 0"),
        (steer + "strength=1&mode=scale", 400, "mode=scale: use add"),
        ("/api/live/feature/99999999999999999999/text?text=dog", 404, "this database holds features 0 to 31."),
        ("/api/live/feature/-1/steer?prompt=dog&strength=1", 404, "feature -1: this database holds features 0 to 31."),
        ("/api/live/feature/32/text?text=dog", 404, "feature 32: this database holds features 0 to 31."),
        ("/api/live/feature/abc/text?text=dog", 404, "feature abc: not a feature id"),
        ("/api/live/text?text=hello%20world", 400, "100% of the text's tokens ('hello', 'world') are unknown"),
        ("/api/live/elsewhere", 404, "no API endpoint /api/live/elsewhere"),
        ("/api/feature/99999999999999999999", 404, "this database holds features 0 to 31."),
        ("/api/feature/-3", 404, "feature -3: this database holds features 0 to 31."),
        ("/api/feature/99999999999999999999/contexts", 404, "this database holds features 0 to 31."),
        (
            "/api/feature/3/contexts?snapshot=99",
            400,
            "snapshot=99: give -1 (the crosscoder's code) or a snapshot 0 to 2",
        ),
        ("/api/feature/3/contexts?snapshot=-2", 400, "snapshot=-2: give -1"),
        ("/api/feature/3/contexts?snapshot=123456789012345678901234", 400, "snapshot=1234567890"),
    ]
    for path, code, words_ in cases:
        status, payload = get(server, path)
        assert status == code and words_ in payload["error"] and "\n" not in payload["error"], (path, payload)
    assert get(server, "/api/feature/3")[0] == 200 and get(server, "/api/live/text?text=dog")[0] == 200
    assert tf.tree_bytes(run) == before


class HeldSuite(CheckpointSuite):
    """The suite, whose snapshot models load only once ``gate`` is set, counting each load."""

    gate: threading.Event
    loaded: list[int]

    def load(self, snapshot, **kwargs):
        assert self.gate.wait(60), "the test never opened the gate"
        self.loaded.append(snapshot.index)
        return super().load(snapshot, **kwargs)


def test_many_live_requests_while_the_models_load_are_each_answered_once(run):
    """Each request is answered once: computed, or (a text or heatmap a newer one of its kind replaced
    while it waited) told so; the newest of each kind is computed, and each model loads once."""
    held = HeldSuite.local(run.parent / "suite")
    held.gate, held.loaded = threading.Event(), []
    server = serve(run, LiveAnswers(LiveModels(run, suite=held, device="cpu")))
    try:
        paths = [f"/api/live/text?{query(text=t)}" for t in (TEXT, PROMPT, TEXT, "the dog", PROMPT, TEXT)]
        paths += [f"/api/live/feature/{f}/text?{query(text=TEXT)}" for f in (1, 2)]
        paths += [f"/api/live/feature/4/steer?{query(prompt=PROMPT, strength=2, tokens=3)}"]
        answers: dict[int, tuple[int, dict]] = {}

        def ask(i: int, path: str) -> None:
            answers[i] = get(server, path)

        threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(paths)]
        for thread in threads:
            thread.start()
        wait_for(lambda: get(server, "/api/live/status")[1].get("busy"), what="a live request loading models")
        # while every live request waits on the models, the stored pages answer
        assert get(server, "/api/feature/3")[0] == 200 and get(server, "/api/features?limit=5")[0] == 200
        assert get(server, "/api/live/status")[1]["state"] in ("loading", "ready")
        assert all(status == 409 for status, _ in list(answers.values()))  # none computed yet
        held.gate.set()
        for thread in threads:
            thread.join(120)
        assert sorted(answers) == list(range(len(paths))), answers
        for status, payload in answers.values():
            assert status == 200 or (status == 409 and "a newer " in payload["error"]), payload
        assert all(any(answers[i][0] == 200 for i in kind) for kind in (range(6), range(6, 8), [8]))
        assert sorted(held.loaded) == [0, 1, 2]  # each snapshot model loaded once
        for i in range(6):  # which texts were computed depends on the threads' order; each is the text's own
            if answers[i][0] == 200:
                assert get(server, paths[i])[1]["readings"] == answers[i][1]["readings"]
    finally:
        held.gate.set()
        server.shutdown()
        server.server_close()


def held_server(run):
    """A server whose live models are open (and paired with the database) and whose snapshot models
    load once ``held.gate`` is set; ``ask(name, path)`` requests in a thread, answered into ``answers``."""
    held = HeldSuite.local(run.parent / "suite")
    held.gate, held.loaded = threading.Event(), []
    server = serve(run, LiveAnswers(LiveModels(run, suite=held, device="cpu")))
    assert get(server, "/api/live/status?prepare=1")[1]["state"] == "ready"
    answers: dict[str, tuple[int, dict]] = {}

    def ask(name: str, path: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: answers.update({name: get(server, path)}))
        thread.start()
        return thread

    return held, server, answers, ask


STEER = f"/api/live/feature/4/steer?{query(prompt=PROMPT, strength=2, tokens=3)}"


def until_waiting(server, n: int) -> None:
    wait_for(lambda: get(server, "/api/live/status")[1].get("queued") == n, 60, what=f"{n} question(s) waiting")


def steering_with_one_waiting(server, ask, name: str, path: str) -> tuple[threading.Thread, threading.Thread]:
    """A steering request computed (held at its gate) and request ``name`` waiting behind it."""
    steering = ask("steer", STEER)
    wait_for(lambda: get(server, "/api/live/status")[1]["busy"], what="the steering loading models")
    waiting = ask(name, path)
    until_waiting(server, 1)
    return steering, waiting


def test_a_newer_request_of_a_kind_replaces_the_one_still_waiting_its_turn(run):
    """Requests queued behind a long one were each computed in turn, the page's stale ones too; a
    newer one replaces only its own asker's (another tab's, and a script's, are answered)."""
    held, server, answers, ask = held_server(run)
    try:
        mine = "/api/live/text?" + query(text=TEXT, asker="tab1")
        steering, first = steering_with_one_waiting(server, ask, "first", mine)
        other = ask("other", "/api/live/text?" + query(text=TEXT, asker="tab2"))
        script = ask("script", "/api/live/text?" + query(text=TEXT))
        until_waiting(server, 3)
        second = ask("second", "/api/live/text?" + query(text=PROMPT, asker="tab1"))
        first.join(30)
        assert not held.gate.is_set() and answers["first"][0] == 409, answers
        line = answers["first"][1]["error"]
        assert (
            line
            == "a newer question of its kind, from the same asker, came before this one's turn; it is answered instead"
        )
        held.gate.set()
        for thread in (steering, other, script, second):
            thread.join(120)
        assert answers["steer"][0] == 200 and answers["second"][0] == 200 and answers["second"][1]["text"] == PROMPT
        assert answers["other"][0] == 200 and answers["script"][0] == 200, answers
        assert get(server, "/api/live/text?" + query(text=TEXT, asker="a b"))[0] == 400
    finally:
        held.gate.set()
        server.shutdown()
        server.server_close()


def test_stopping_the_server_refuses_the_requests_waiting_and_waits_for_the_one_computed(run):
    """Ctrl-C waited for every queued request to be computed, for no one."""
    held, server, answers, ask = held_server(run)
    try:
        steering, waiting = steering_with_one_waiting(server, ask, "text", "/api/live/text?" + query(text=TEXT))
        stopping = threading.Thread(target=lambda: (server.shutdown(), server.server_close()))
        stopping.start()
        waiting.join(30)
        assert not held.gate.is_set() and answers["text"] == (
            503,
            {"error": "the live models were closed before this question's turn came; ask again"},
        ), answers
        assert stopping.is_alive()  # it waits for the steering being computed
        held.gate.set()
        stopping.join(120)
        steering.join(120)
        assert answers["steer"][0] == 200 and held.loaded == [0, 1, 2]
    finally:
        held.gate.set()


class UnreadableOnce(CheckpointSuite):
    """The suite, whose snapshot ``unreadable`` cannot be read the first time it loads (a disk or a
    network that failed once)."""

    unreadable: int
    failed: bool

    def load(self, snapshot, **kwargs):
        if snapshot.index == self.unreadable and not self.failed:
            self.failed = True
            raise OSError(errno.EIO, "Input/output error", str(self.root / snapshot.revision))
        return super().load(snapshot, **kwargs)


def test_a_snapshot_that_could_not_be_read_refuses_that_request_only_and_names_no_other_suite(run):
    """One failed read turned the live panels off until the server restarted, advising another --suite."""
    suite = UnreadableOnce.local(run.parent / "suite")
    suite.unreadable, suite.failed = 1, False
    server = serve(run, LiveAnswers(LiveModels(run, suite=suite, device="cpu")))
    try:
        status, payload = get(server, "/api/live/text?" + query(text=TEXT))
        line = payload["error"]
        assert status == 503 and line.startswith("snapshot step10 of ") and "could not be read" in line, payload
        assert "Input/output error" in line and line.endswith("ask again: the next question loads it again")
        assert "--suite" not in line and "pass the suite" not in line and "\n" not in line
        assert get(server, "/api/live/status")[1]["problem"] == line
        status, answer = get(server, "/api/live/text?" + query(text=TEXT))
        state = get(server, "/api/live/status")[1]
        assert status == 200 and answer["tokens"] and state["state"] == "ready" and state["problem"] is None
        assert state["loads"] == [1, 1, 1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_live_backend_that_could_not_be_made_is_made_by_the_next_request(run, monkeypatch):
    """``crosslens browse`` kept the first failure to make its live backend and answered it to every
    later request."""
    import crosslens.cli.browse as browse_command
    from crosslens.cli import build_parser
    from crosslens.core.errors import LiveUnavailableError
    from crosslens.live.config import LiveConfig

    made = browse_command.live_answers
    tries: list[int] = []

    def unreadable_once(args, config):
        tries.append(1)
        if len(tries) == 1:
            raise LiveUnavailableError("--suite S could not be read (Input/output error); ask again")
        return made(args, config)

    monkeypatch.setattr(browse_command, "live_answers", unreadable_once)
    args = build_parser().parse_args(["browse", str(run), "--device", "cpu"])
    server = serve(run, browse_command.DeferredLive(args, LiveConfig()))
    try:
        status, payload = get(server, "/api/live/text?" + query(text=TEXT))
        assert status == 503 and payload["error"] == "--suite S could not be read (Input/output error); ask again"
        assert get(server, "/api/live/status")[1]["problem"] == payload["error"]
        status, answer = get(server, "/api/live/text?" + query(text=TEXT))
        assert status == 200 and answer["tokens"] and get(server, "/api/live/status")[1]["state"] == "ready"
    finally:
        server.shutdown()
        server.server_close()


def test_where_the_models_cannot_load_the_live_api_says_why_and_the_stored_pages_work(run, tmp_path):
    moved = edited_copy(run, tmp_path / "moved", lambda meta: meta["suite"].update(root=str(tmp_path / "gone")))
    # its crosscoder's record was edited, so the database is named to be read as it is
    config = BrowseConfig(port=0, database=str(moved / schema.DATABASE_NAME))
    for backend in (LiveAnswers(LiveModels(moved, device="cpu")), None):
        server = serve(moved, backend, config)
        try:
            status, payload = get(server, "/api/live/text?text=dog")
            state = get(server, "/api/live/status")[1]
            if backend is None:
                assert status == 404 and "the live panels are off" in payload["error"] and state["state"] == "off"
            else:
                assert status == 503 and f"its folder {tmp_path / 'gone'} is gone" in payload["error"]
                assert "--suite" in payload["error"] and "\n" not in payload["error"]
                assert state["state"] == "unavailable" and state["problem"] == payload["error"]
            assert get(server, "/api/feature/3")[0] == 200 and get(server, "/api/features")[0] == 200
        finally:
            server.shutdown()
            server.server_close()


def test_a_crosscoder_the_database_was_not_computed_for_is_refused_in_one_line(run, tmp_path):
    """``browse OTHER --database RUN/dashboards.sqlite`` answered OTHER's crosscoder under the labels,
    feature ids and snapshots of the database, which was computed for RUN's: here OTHER is RUN with
    an earlier checkpoint of its training as its crosscoder (same width and snapshots)."""
    other = tf.copy_tree(run, tmp_path / "other")
    earlier = sorted(run.glob("step_*"))[0] / "sae_weights.safetensors"
    shutil.copyfile(earlier, other / "final" / "sae_weights.safetensors")
    config = BrowseConfig(port=0, database=str(run / schema.DATABASE_NAME))
    server = serve(other, LiveAnswers(LiveModels(other, device="cpu")), config)
    try:
        status, payload = get(server, "/api/live/text?" + query(text=TEXT))
        line = payload["error"]
        assert status == 503 and line.startswith(f"the live crosscoder (of {other}) is not the one "), payload
        assert "other weights (sha256 " in line and "\n" not in line
        assert line.endswith(f"or rebuild it with `crosslens dashboards {other} --overwrite`")
        for path in (
            f"/api/live/feature/3/text?{query(text=TEXT)}",
            f"/api/live/feature/3/steer?{query(prompt=PROMPT, strength=2)}",
        ):
            assert get(server, path) == (503, {"error": line})
        state = get(server, "/api/live/status?prepare=1")[1]
        assert (state["state"], state["problem"]) == ("unavailable", line)
        assert get(server, "/api/feature/3")[0] == 200  # the stored pages work
    finally:
        server.shutdown()
        server.server_close()


def test_a_bad_suite_flag_makes_the_live_panels_say_so_in_one_line(run, tmp_path):
    """``browse --suite`` naming no suite leaves the stored pages served and the live panels
    unavailable with one line that names the flag, as any other reason the models cannot load
    (the warm-up thread prints it): no exception of the command line's own escapes that thread."""
    from crosslens.cli import build_parser
    from crosslens.cli.browse import live_answers
    from crosslens.core.errors import LiveUnavailableError
    from crosslens.live.config import LiveConfig

    args = build_parser().parse_args(["browse", str(run), "--suite", str(tmp_path / "nope"), "--device", "cpu"])
    with pytest.raises(LiveUnavailableError) as refused:
        live_answers(args, LiveConfig())
    message = str(refused.value)
    assert message.startswith(f"--suite {tmp_path / 'nope'}: ") and "the path does not exist" in message
    assert message.endswith("or leave --suite out for the one it records") and "\n" not in message


SUITE_FIX = "pass the suite the crosscoder was trained on, or leave --suite out for the one it records"


def test_a_suite_folder_that_holds_no_suite_makes_the_live_api_answer_503_in_one_line(run, capsys):
    """``browse --suite`` naming the run's or its store's folder, which hold no snapshots, printed a
    traceback from the warm-up thread and answered every live request 500."""
    from crosslens.browser.server import _warm_up
    from crosslens.cli import build_parser
    from crosslens.cli.browse import DeferredLive
    from crosslens.live.config import LiveConfig

    for folder in (run, run.parent / "store"):
        args = build_parser().parse_args(["browse", str(run), "--suite", str(folder), "--device", "cpu"])
        server = serve(run, DeferredLive(args, LiveConfig()))
        try:
            capsys.readouterr()
            _warm_up(server.live)  # the thread's function, here: what escaped it went to stderr as a traceback
            out, err = capsys.readouterr()
            line = f"--suite {folder}: found no snapshots in {folder.resolve()}: expected a suite.json, or sub-folders"
            assert out.startswith(f"live panels unavailable (the stored pages work): {line}") and out.endswith(
                f"{SUITE_FIX}\n"
            ), out
            assert len(out.splitlines()) == 1 and err == ""
            for path in (
                f"/api/live/text?{query(text=TEXT)}",
                f"/api/live/feature/3/steer?{query(prompt=PROMPT, strength=2)}",
            ):
                status, payload = get(server, path)
                assert status == 503 and payload["error"].startswith(line), payload
                assert payload["error"].endswith(SUITE_FIX) and "\n" not in payload["error"]
            assert_unavailable_beside_the_stored_pages(server, payload["error"])
        finally:
            server.shutdown()
            server.server_close()


def test_an_olmo_suite_of_two_ingredients_makes_the_live_api_answer_503_in_one_line(run, tmp_path, capsys):
    """``browse --suite`` naming an OLMo repo whose cache holds two stage-2 ingredients raised
    SystemExit in the warm-up thread (the command line's exit, printed there) and every live
    request died with it, unanswered: the refusal is the panels' one line, naming @ingredientK."""
    from hf_cache import make_word_tokenizer, offline_hf_home_at, tiny_olmo2, write_fake_hub_repo

    from crosslens.browser.server import _warm_up
    from crosslens.checkpoints.hub import remember_stage_ends
    from crosslens.cli import build_parser
    from crosslens.cli.browse import DeferredLive
    from crosslens.live.config import LiveConfig

    repo = "allenai/OLMo-2-0425-1B"
    revisions = (
        "stage1-step1000-tokens3B",
        "stage2-ingredient1-step1000-tokens3B",
        "stage2-ingredient2-step1000-tokens3B",
    )
    write_fake_hub_repo(tmp_path, repo, {r: tiny_olmo2(seed=i) for i, r in enumerate(revisions)}, make_word_tokenizer())
    remember_stage_ends(repo, revisions)
    with offline_hf_home_at(tmp_path):
        args = build_parser().parse_args(["browse", str(run), "--suite", repo, "--device", "cpu"])
        server = serve(run, DeferredLive(args, LiveConfig()))
        try:
            capsys.readouterr()
            _warm_up(server.live)  # the thread's function, here: a SystemExit escaped it
            out, err = capsys.readouterr()
            assert out.startswith(f"live panels unavailable (the stored pages work): {repo}: the suite mixes stage-2 ")
            assert f"(CLI: --suite {repo}@ingredient1); {SUITE_FIX}\n" in out and len(out.splitlines()) == 1, out
            assert err == ""
            status, payload = get(server, f"/api/live/text?{query(text=TEXT)}")
            assert status == 503 and payload["error"] == out.split(": ", 1)[1].strip(), payload
            assert_unavailable_beside_the_stored_pages(server, payload["error"])
        finally:
            server.shutdown()
            server.server_close()


def test_browse_refuses_a_suite_path_that_holds_no_suite_before_it_serves(run, tmp_path, capsys, monkeypatch):
    """``browse --suite STORE`` started the server and failed in the warm-up thread: a path is read
    without torch, so the command refuses it in one line, exit status 2, before it serves."""
    import crosslens.browser
    from crosslens.cli import main

    served: list[str] = []
    monkeypatch.setattr(crosslens.browser, "browse", lambda run_dir, **settings: served.append(str(run_dir)))
    for folder, words_ in (
        (run.parent / "store", f"found no snapshots in {(run.parent / 'store').resolve()}: expected a suite.json"),
        (run, f"found no snapshots in {run.resolve()}"),
        (run / "run.json", "is a file, not a folder"),
        (tmp_path / "nope", "the path does not exist"),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["browse", str(run), "--suite", str(folder), "--port", "0"])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"--suite {folder}: " in err and words_ in err and err.count("--suite") <= 2, err
    assert served == []
    main(["browse", str(run), "--suite", str(run.parent / "suite"), "--port", "0"])  # a suite's folder
    main(["browse", str(run), "--suite", str(run.parent / "store"), "--no-live"])  # no live models: it is not read
    assert served == [str(run), str(run)]


def test_browse_refuses_a_suite_folder_without_the_crosscoders_steps_before_it_serves(
    run, tmp_path, capsys, monkeypatch
):
    """``browse --suite FOLDER`` whose suite lacks a step the crosscoder was trained on started the
    server, and only the live panels refused it (503): the folder's steps are read without torch,
    so the command refuses it in one line, exit status 2, before it serves."""
    import crosslens.browser
    from crosslens.cli import main

    served: list[str] = []
    monkeypatch.setattr(crosslens.browser, "browse", lambda run_dir, **settings: served.append(str(run_dir)))
    other = tmp_path / "other"  # the tiny suite without its step10
    other.mkdir()
    for step in ("step0", "step20"):
        (other / step).symlink_to(run.parent / "suite" / step)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["browse", str(run), "--suite", str(other), "--port", "0"])
    assert exit_info.value.code == 2 and served == []
    assert capsys.readouterr().err == (
        f"crosslens browse: error: --suite {other}: the suite has no step10, which the crosscoder was trained on "
        "(it lacks 1 of the crosscoder's 3 steps; its 2 snapshots are at steps 0 to 20); "
        f"`crosslens suite list {other}` lists them; {SUITE_FIX}\n"
    )
    main(["browse", str(run), "--suite", str(other), "--no-live"])  # no live models: it is not read
    main(["browse", str(run), "--suite", str(run.parent / "suite"), "--port", "0"])  # every step of the crosscoder
    assert served == [str(run), str(run)]


def test_a_suite_flag_refusal_names_the_flag_once_and_the_steps_as_the_crosscoders(run, tmp_path):
    """``browse --suite`` refusals said the flag twice (``--suite X: --suite X: ...``) and refused the
    crosscoder's steps as ``--steps``, a flag browse has not."""
    from crosslens.cli import build_parser
    from crosslens.cli.browse import live_answers
    from crosslens.core.errors import LiveUnavailableError
    from crosslens.live.config import LiveConfig

    other = tmp_path / "other"  # the tiny suite without its step10
    other.mkdir()
    for step in ("step0", "step20"):
        (other / step).symlink_to(run.parent / "suite" / step)
    for spec, line in (
        (
            str(other),
            f"--suite {other}: the suite has no step10, which the crosscoder was trained on; nearest: step0, step20; "
            f"`crosslens suite list {other}` lists them; {SUITE_FIX}",
        ),
        (
            "nosuchorg/nosuchmodel",
            "--suite nosuchorg/nosuchmodel: no such local folder, and cannot tell which family "
            "'nosuchorg/nosuchmodel' is; pass 'pico', a local folder of checkpoints, or a hub id naming pythia, "
            f"OLMo or bloom; {SUITE_FIX}",
        ),
    ):
        args = build_parser().parse_args(["browse", str(run), "--suite", spec, "--device", "cpu"])
        with pytest.raises(LiveUnavailableError) as refused:
            live_answers(args, LiveConfig())
        assert str(refused.value) == line


def test_a_bad_device_or_dtype_flag_makes_the_live_api_answer_503_in_one_line(run):
    """``browse --dtype int8`` (or a device this machine has not) answered every live request 500,
    as a failure of the server's, where the live models cannot be made and the flag is the fix."""
    from crosslens.cli import build_parser
    from crosslens.cli.browse import DeferredLive
    from crosslens.live.config import LiveConfig

    for flags, words_ in (
        (["--device", "cpu", "--dtype", "int8"], "unsupported dtype 'int8'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ):
        args = build_parser().parse_args(["browse", str(run), *flags])
        server = serve(run, DeferredLive(args, LiveConfig()))
        try:
            status, payload = get(server, "/api/live/text?" + query(text=TEXT))
            assert status == 503 and words_ in payload["error"] and "\n" not in payload["error"], payload
            status, state = get(server, "/api/live/status?prepare=1")
            assert status == 200 and state["state"] == "unavailable" and state["problem"] == payload["error"]
            assert get(server, "/api/feature/3")[0] == 200
        finally:
            server.shutdown()
            server.server_close()


def test_the_page_and_live_models_run_the_snapshot_models_in_one_dtype_per_device(run):
    """On CUDA the page ran the snapshot models in bfloat16 and ``LiveModels(run)`` in float32, so one
    text gave two sets of numbers: both resolve the dtype through ``model_dtype`` now (CUDA itself is
    checked through that function, on a machine without one)."""
    from crosslens.cli import build_parser
    from crosslens.cli.browse import live_answers
    from crosslens.core.devices import model_dtype
    from crosslens.live.config import LiveConfig

    for device, want in (("cuda", "bfloat16"), ("cuda:1", "bfloat16"), ("cpu", "float32"), ("mps", "float32")):
        assert model_dtype(device) == want and model_dtype(device, "fp16") == "float16"
    for flags, dtype in (([], None), (["--dtype", "bf16"], "bf16")):
        args = build_parser().parse_args(["browse", str(run), "--device", "cpu", *flags])
        page = live_answers(args, LiveConfig()).models.dtype
        assert page == LiveModels(run, device="cpu", dtype=dtype).dtype
        assert str(page) == "torch." + model_dtype("cpu", dtype)


class Lines:
    """A subprocess's output, a line at a time, waited for with a timeout."""

    def __init__(self, process) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in process.stdout], daemon=True).start()

    def until(self, words_: str, timeout: float = 180) -> str:
        while True:
            line = self.queue.get(timeout=timeout)
            if words_ in line:
                return line


def test_crosslens_browse_serves_the_live_panels_and_without_them_loads_no_torch(run):
    code = (
        "import atexit, sys; from crosslens.cli import main; "
        "atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules, flush=True)); "
        f"main(['browse', {str(run)!r}, '--port', '0', '--device', 'cpu', *sys.argv[1:]])"
    )
    for extra in (["--no-live"], ["--resident-models", "2"]):
        process = subprocess.Popen([sys.executable, "-c", code, *extra], stdout=subprocess.PIPE, text=True)
        try:
            lines = Lines(process)
            url = re.search(r"http://127\.0\.0\.1:\d+/", lines.until("crosslens browse:"))[0]
            server = types.SimpleNamespace(url=url)
            if extra == ["--no-live"]:
                assert get(server, "/api/live/status")[1]["state"] == "off"
            else:
                assert "live panels: ready" in lines.until("live panels")
                status, answer = get(server, "/api/live/text?" + query(text=TEXT))
                state = get(server, "/api/live/status")[1]
                assert status == 200 and answer["tokens"] and (state["resident"], state["loads"]) == ([0, 1], [1, 1, 1])
                budget = lines.until("resident budget")
                assert "live panels: 2 of 3 snapshot models kept resident" in budget and "KiB each" in budget
            assert get(server, "/api/feature/3")[0] == 200
            process.send_signal(signal.SIGINT)
            assert "stopped." in lines.until("stopped.")
            assert lines.until("torch loaded:").strip() == f"torch loaded: {extra != ['--no-live']}"
        finally:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- in Chromium
def settled(driver, panel: str, timeout: float = 120) -> str:
    return wait_for(
        lambda: driver.execute_script(
            f"const s = document.getElementById('{panel}').dataset.state; return ['done', 'error', 'unavailable'].includes(s) && s"
        ),
        timeout,
        what=f"{panel} to answer",
    )


def shown_live_rows(driver) -> list[list[float]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('table.live-features tbody tr')].map(r => "
        "[Number(r.dataset.feature), Number(r.querySelector('td.live-act').dataset.act)])"
    )


def shown_heatmap(driver, holder: str) -> tuple[list[int], list[list[float]]]:
    return driver.execute_script(
        f"const rows = [...document.querySelectorAll('#{holder} table.heatmap tbody tr')];"
        "return [rows.map(r => Number(r.dataset.reading)), rows.map(r => [...r.querySelectorAll('td.cell')].map(c => Number(c.dataset.act)))]"
    )


def test_the_list_page_runs_a_text_and_shows_the_features_and_a_heatmap(driver, server, live):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    acts = live.activations(TEXT)
    open_page(driver, server, "/")
    box = driver.find_element(By.ID, "live-text")
    box.send_keys(TEXT, Keys.ENTER)
    assert settled(driver, "live-list") == "done"
    assert shown_live_rows(driver) == [[f, pytest.approx(a, abs=1e-6)] for f, a, _ in acts.top(-1, 20)]
    top = acts.top(-1, 20)[0][0]
    readings, grid = shown_heatmap(driver, "live-list-heatmap")
    assert readings == [-1, 0, 1, 2] and grid == [
        [pytest.approx(a, abs=1e-6) for a in row] for row in acts.feature(top)
    ]
    assert "text=" in driver.current_url
    screenshot(driver, "list_your_text", SCREENS)

    Select(driver.find_element(By.ID, "live-reading")).select_by_value("1")
    assert shown_live_rows(driver) == [[f, pytest.approx(a, abs=1e-6)] for f, a, _ in acts.top(1, 20)]
    third = acts.top(1, 20)[2][0]
    driver.find_element(By.CSS_SELECTOR, f"table.live-features tr[data-feature='{third}'] td.live-act").click()
    wait_for(
        lambda: (
            shown_heatmap(driver, "live-list-heatmap")[1]
            and driver.execute_script(
                f"return document.querySelector('#live-list-heatmap table.heatmap').dataset.feature === '{third}'"
            )
        ),
        what="heatmap",
    )
    assert shown_heatmap(driver, "live-list-heatmap")[1] == [
        [pytest.approx(a, abs=1e-6) for a in r] for r in acts.feature(third)
    ]
    assert all(part in driver.current_url for part in ("reading=1", f"chosen={third}"))
    shared = driver.current_url.removeprefix(server.url.rstrip("/"))
    open_page(driver, server, shared)  # the URL is the answer: a new tab shows it again
    assert settled(driver, "live-list") == "done"
    assert shown_live_rows(driver) == [[f, pytest.approx(a, abs=1e-6)] for f, a, _ in acts.top(1, 20)]
    screenshot(driver, "list_your_text_snapshot_1", SCREENS)


def test_the_feature_page_shows_its_heatmap_and_steers_every_snapshot(driver, server, live):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    acts = live.activations(TEXT)
    feature = acts.top(-1, 1)[0][0]
    open_page(driver, server, f"/feature/{feature}?" + query(text=TEXT))
    assert settled(driver, "live-feature") == "done"
    readings, grid = shown_heatmap(driver, "live-feature-heatmap")
    assert readings == [-1, 0, 1, 2] and grid == [
        [pytest.approx(a, abs=1e-6) for a in row] for row in acts.feature(feature)
    ]

    form = {
        k: driver.find_element(By.ID, "steer-" + k).get_attribute("value")
        for k in ("mode", "tokens", "temperature", "seed")
    }
    assert form == {"mode": "add", "tokens": "20", "temperature": "0", "seed": "0"}  # the backend's defaults
    for key, value in (("prompt", PROMPT), ("strength", "6"), ("tokens", "8")):
        field = driver.find_element(By.ID, "steer-" + key)
        field.clear()
        field.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "#live-steer button[type=submit]").click()
    assert settled(driver, "live-steer") == "done"

    def shown_steering() -> list[tuple[list[str], list[str]]]:
        return driver.execute_script(
            "return [...document.querySelectorAll('table.steering tbody tr')].map(r => "
            "[[...r.querySelectorAll('td.plain .gen span')].map(s => s.textContent), "
            "[...r.querySelectorAll('td.steered .gen span')].map(s => s.textContent)])"
        )

    def as_shown(tokens: list[str]) -> list[str]:
        return [t.replace("\n", "\u21b5").replace("\t", "\u21e5") for t in tokens]

    want = live.steer(feature, PROMPT, strength=6.0, n_tokens=8)
    assert shown_steering() == [[as_shown(r.plain), as_shown(r.steered)] for r in want.snapshots]
    screenshot(driver, "feature_your_text_and_steering", SCREENS)

    Select(driver.find_element(By.ID, "steer-mode")).select_by_value("clamp")
    field = driver.find_element(By.ID, "steer-strength")
    field.clear()
    field.send_keys("0")
    driver.execute_script("document.getElementById('live-steer').dataset.state = 'idle'")
    driver.find_element(By.CSS_SELECTOR, "#live-steer button[type=submit]").click()
    assert settled(driver, "live-steer") == "done"
    want = live.steer(feature, PROMPT, strength=0.0, mode="clamp", n_tokens=8)
    assert shown_steering() == [[as_shown(r.plain), as_shown(r.steered)] for r in want.snapshots]
    assert all(part in driver.current_url for part in ("mode=clamp", "strength=0", "prompt="))
    open_page(driver, server, driver.current_url.removeprefix(server.url.rstrip("/")))  # shared: steers again
    assert settled(driver, "live-steer") == "done" and shown_steering() == [
        [as_shown(r.plain), as_shown(r.steered)] for r in want.snapshots
    ]
    screenshot(driver, "feature_steering_clamped", SCREENS)

    field = driver.find_element(By.ID, "steer-tokens")
    field.clear()
    field.send_keys("500")
    driver.find_element(By.CSS_SELECTOR, "#live-steer button[type=submit]").click()
    assert settled(driver, "live-steer") == "error"
    assert (
        "tokens=500: give a whole number from 1 to 64"
        in driver.find_element(By.CSS_SELECTOR, "#live-steer .live-status").text
    )
    logged = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert len(logged) == 1 and "tokens=500" in logged[0] and "400 (Bad Request)" in logged[0]  # the one refused


def test_the_live_panels_say_in_the_page_why_they_cannot_load(driver, run, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    moved = edited_copy(run, tmp_path / "moved", lambda meta: meta["suite"].update(root=str(tmp_path / "gone")))
    config = BrowseConfig(port=0, database=str(moved / schema.DATABASE_NAME))
    server = serve(moved, LiveAnswers(LiveModels(moved, device="cpu")), config)
    try:
        open_page(driver, server, "/?" + query(text=TEXT))
        assert settled(driver, "live-list") == "unavailable"
        line = driver.find_element(By.CSS_SELECTOR, "#live-list .live-status").text
        assert line.startswith("Live panels unavailable: ") and f"its folder {tmp_path / 'gone'} is gone" in line
        assert driver.find_elements(By.CSS_SELECTOR, "table.features:not(.live-features) tbody tr")  # the list is there
        screenshot(driver, "list_live_unavailable", SCREENS)
    finally:
        server.shutdown()
        server.server_close()


SETTLED = """
window.settledFetches = [];
const fetchJSON = CL.fetchJSON;
CL.fetchJSON = async function (url) {
  try {
    return await fetchJSON(url);
  } finally {
    setTimeout(() => window.settledFetches.push(url), 0);  // a task: after its caller has used the answer
  }
};
"""
"""Counts the page's requests whose answer its caller has drawn or dropped (``window.settledFetches``)."""


def test_a_steering_answer_for_the_feature_left_is_not_drawn_on_the_next_one(driver, run):  # noqa: F811
    """The steering of feature 4, answered after the page moved to feature 5, was drawn there."""
    from selenium.webdriver.common.by import By

    held, server, _, _ = held_server(run)
    try:
        open_page(driver, server, "/feature/4")
        driver.execute_script(SETTLED)
        driver.find_element(By.ID, "steer-prompt").send_keys(PROMPT)
        driver.find_element(By.CSS_SELECTOR, "#live-steer button[type=submit]").click()
        wait_for(lambda: get(server, "/api/live/status")[1]["busy"], what="feature 4's steering loading models")
        driver.execute_script("CL.navigate('/feature/5')")
        wait_for(lambda: driver.execute_script("return Live.feature === 5"), what="feature 5's live panels")
        held.gate.set()
        wait_for(
            lambda: driver.execute_script("return window.settledFetches.some((url) => url.includes('/steer?'))"),
            120,
            what="feature 4's steering answered",
        )
        assert driver.execute_script("return document.querySelector('#live-steer-result').children.length") == 0
        assert driver.find_element(By.ID, "live-steer").get_attribute("data-state") == "idle"
        assert "/feature/5" in driver.current_url
    finally:
        held.gate.set()
        server.shutdown()
        server.server_close()
