"""``crosslens explain`` from the command line: bad input answered in one line naming the fix with
nothing stored lost, the key kept off disk, logs and messages, ``--dry-run``, and explanations
imported from delphi's output and Neuronpedia's export."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from explain_fixtures import CAT, DRIFTER, N_SNAPSHOTS, rows, write_planted_database

from crosslens.browser.database import Database
from crosslens.dashboards.config import DashboardsError
from crosslens.dashboards.explanation_schema import EXPLANATIONS_NAME
from crosslens.dashboards.record import open_database, write_record
from crosslens.dashboards.schema import RECORD_NAME
from crosslens.explain import StubEndpoint
from crosslens.training.runfolder import finished_run_problem

ROOT = Path(__file__).resolve().parents[1]
MODEL = "stub-model"
KEY = "sk-test-0123456789abcdefSECRET"
HOOK = "blocks.0.hook_resid_post"


def crosslens(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    environment |= {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "crosslens", *args], env=environment, capture_output=True, text=True, timeout=300
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crosslens explain: error: "), result.stderr
    return lines[0]


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def explained(tmp_path) -> Path:
    """A planted run explained once (features CAT and DRIFTER)."""
    run = write_planted_database(tmp_path / "run").parent
    with StubEndpoint(model=MODEL) as stub:
        result = crosslens(
            "explain", str(run), "--endpoint", stub.url, "--model", MODEL, "--features", f"{CAT},{DRIFTER}"
        )
    assert result.returncode == 0, result.stderr
    assert "holds 8 explanations of 2 features" in result.stdout and "1 features whose meaning drifted" in result.stdout
    return run


def test_bad_input_is_one_line_naming_the_fix_and_loses_nothing(explained, tmp_path):
    stored = explained / EXPLANATIONS_NAME
    before = sha(stored)
    with StubEndpoint(model=MODEL, key=KEY) as stub:
        url = stub.url
        cases = [
            (
                ["--endpoint", f"http://127.0.0.1:{free_port()}/v1", "--model", MODEL],
                {},
                "cannot reach",
                "start the server",
            ),
            (
                ["--endpoint", url, "--model", MODEL],
                {"OPENAI_API_KEY": "sk-wrong-key-1234567890"},
                "refused the key",
                "set OPENAI_API_KEY",
            ),
            (["--endpoint", url, "--model", MODEL], {}, "which is not set", "set OPENAI_API_KEY"),
            (
                ["--endpoint", url, "--model", "no-such-model"],
                {"OPENAI_API_KEY": KEY},
                "does not serve model 'no-such-model'",
                MODEL,
            ),
            (["--model", MODEL], {}, "needs --endpoint URL", "--dry-run"),
            (["--import", str(tmp_path)], {}, "neither a delphi run's output", "pass one of those"),
            (["--phases", "code,middle"], {}, "--phases code,middle", "pick from code,emergence,peak,last"),
            (["--features", "3,99", "--dry-run"], {}, "--features names feature 99", "0 to 9"),
            (["--drift-min-score", "2", "--dry-run"], {}, "--drift-min-score 2.0", "in [0, 1]"),
        ]
        for flags, env, what, fix in cases:
            line = one_line_error(crosslens("explain", str(explained), *flags, env=env))
            assert what in line and fix in line, line
            assert KEY not in line and "sk-wrong-key-1234567890" not in line
        assert stub.requests == 0  # every refusal came before a paid request
    assert sha(stored) == before  # nothing stored was touched

    line = one_line_error(crosslens("explain", str(tmp_path / "nowhere"), "--dry-run"))
    assert line.endswith(f"{tmp_path / 'nowhere'} does not exist; pass the --out folder of `crosslens train`")
    line = one_line_error(crosslens("explain", str(explained.parent), "--dry-run"))  # a folder, but no run's
    assert "has no feature database" in line and "crosslens dashboards" in line
    earlier = write_planted_database(tmp_path / "earlier").parent
    write_record(earlier, partners={"run": "0" * 64}, settings={}, n_tokens=4096)  # computed for another training
    line = one_line_error(crosslens("explain", str(earlier), "--dry-run"))
    assert "computed for an earlier run" in line and "--overwrite" in line

    write_planted_database(explained, seed=1)  # crosslens dashboards rebuilt: other contexts
    with StubEndpoint(model=MODEL) as stub:
        line = one_line_error(crosslens("explain", str(explained), "--endpoint", stub.url, "--model", MODEL))
    assert "another feature database" in line and "move it aside" in line and "--overwrite" in line
    assert sha(stored) == before


def test_each_refusal_names_a_command_that_then_runs(tmp_path):
    """RUN/final is answered with its run (dashboards refuses RUN/final), a database without its record
    with --overwrite (dashboards refuses to replace it without), and a store or an empty folder as
    what it is, not as a run to finish with `train --resume`."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "final" / "cfg.json").write_text("{}")
    with pytest.raises(DashboardsError) as caught:
        open_database(run / "final")
    assert str(caught.value) == (
        f"{run / 'final'} is a crosscoder's folder inside the run {run}; pass the run folder {run}, "
        f"after `crosslens dashboards {run}`"
    )
    write_planted_database(run)
    with pytest.raises(DashboardsError) as caught:
        open_database(run / "final")
    assert str(caught.value).endswith(f"inside the run {run}; pass the run folder {run}")
    (run / RECORD_NAME).unlink()
    with pytest.raises(DashboardsError) as caught:
        open_database(run)
    assert str(caught.value).endswith(f"rebuild it with `crosslens dashboards {run} --overwrite`")

    store, empty = tmp_path / "store", tmp_path / "empty"
    store.mkdir(), empty.mkdir()
    (store / "manifest.json").write_text("{}")
    assert finished_run_problem(store) == (
        f"{store} is an activation store, not a training run; pass the --out folder of `crosslens train`"
    )
    assert finished_run_problem(empty).startswith(f"{empty} holds no trained crosscoder (no run.json")
    assert "--resume" not in finished_run_problem(empty)
    (run / "final" / "cfg.json").unlink()
    assert "finish its training with `crosslens train --resume`" in finished_run_problem(run)


def test_a_bad_selection_is_refused_before_the_explanations_file_is_touched(explained):
    """--overwrite deleted the paid explanations, and a run without it rewrote their meta, before a
    typo in --features or --classes was found."""
    stored = explained / EXPLANATIONS_NAME
    before = sha(stored)
    with StubEndpoint(model=MODEL) as stub:
        for flags, what, fix in (
            (["--overwrite", "--features", "99"], "--features names feature 99", "0 to 9"),
            (["--classes", "persistant"], "--classes persistant", "this run's classes are dead, persistent"),
        ):
            line = one_line_error(
                crosslens("explain", str(explained), "--endpoint", stub.url, "--model", MODEL, *flags)
            )
            assert what in line and fix in line, line
            assert sha(stored) == before, flags
        assert stub.requests == 0


def test_import_refuses_a_dry_run_and_a_selection_before_the_file_is_touched(explained, tmp_path):
    """--import went ahead past --dry-run (with --overwrite deleting the paid explanations) and
    stored every explanation its file holds whatever --features, --classes or --max-features said."""
    stored = explained / EXPLANATIONS_NAME
    before = sha(stored)
    listing = tmp_path / "api.json"
    listing.write_text(json.dumps([neuronpedia_row(5, "0-res-crosslens__step200", "boats")]))
    for flags, named, keep in (
        (["--overwrite", "--dry-run"], "--import takes no --dry-run:", True),
        (["--features", "5"], "--import takes no --features:", False),
        (["--classes", "persistent", "--max-features", "1"], "--import takes no --classes, --max-features:", False),
    ):
        line = one_line_error(crosslens("explain", str(explained), "--import", str(listing), *flags))
        assert named in line and "leave" in line, line
        assert ("without --overwrite it keeps every explanation stored" in line) == keep, line
        assert sha(stored) == before, flags
    assert rows(explained, "SELECT count(*), group_concat(DISTINCT source) FROM explanations") == [(8, "crosslens")]
    assert "1 added" in crosslens("explain", str(explained), "--import", str(listing)).stdout


def test_a_run_finishing_while_browse_reads_the_file_keeps_its_answers_and_compacts_later(tmp_path):
    """A finished run exited 2 with "database is locked" while crosslens browse had the file open:
    leaving WAL mode to compact it needs the file to itself."""
    run = write_planted_database(tmp_path / "run").parent
    path = run / EXPLANATIONS_NAME
    with StubEndpoint(model=MODEL) as stub:
        ask = ("explain", str(run), "--endpoint", stub.url, "--model", MODEL)
        assert crosslens(*ask, "--features", str(CAT)).returncode == 0
        writing = sqlite3.connect(path)
        writing.execute("PRAGMA journal_mode = WAL")  # as a run leaves it while it writes
        writing.close()
        browser = Database(run)  # crosslens browse RUN, started meanwhile
        try:
            with browser.connection() as connection:
                assert connection.execute("SELECT count(*) FROM explained.explanations").fetchone() == (4,)
            result = crosslens(*ask, "--features", f"{CAT},{DRIFTER}")
            assert result.returncode == 0, result.stderr
            assert "holds 8 explanations of 2 features" in result.stdout
            assert "1 features whose meaning drifted" in result.stdout
            warning = [line for line in result.stderr.splitlines() if "not compacted" in line]
            assert len(warning) == 1 and warning[0].startswith(f"crosslens: warning: {path} holds every answer"), (
                result.stderr
            )
            assert "the next crosslens explain of this run that finishes while none does compacts it" in warning[0]
            with browser.connection() as connection:  # the browser reads every answer meanwhile
                assert connection.execute("SELECT count(*) FROM explained.explanations").fetchone() == (8,)
        finally:
            browser.close()
        again = crosslens(*ask, "--features", f"{CAT},{DRIFTER}")
        assert again.returncode == 0 and "not compacted" not in again.stderr, again.stderr
        assert "asked 0 explanations and 0 scores" in again.stdout
    assert rows(run, "PRAGMA journal_mode") == [("delete",)]  # compacted once no reader held it
    assert not path.with_name(path.name + "-wal").exists()
    assert rows(run, "SELECT count(*) FROM explanations") == [(8,)]


def test_the_key_reaches_no_file_log_or_message(tmp_path):
    run = write_planted_database(tmp_path / "run").parent
    env = {"CROSSLENS_KEY": KEY}
    with StubEndpoint(model=MODEL, key=KEY) as stub:
        stub.fail_next("401")  # the endpoint turns the key down mid-run, repeating it in its refusal
        args = ("explain", str(run), "--endpoint", stub.url, "--model", MODEL, "--api-key-env", "CROSSLENS_KEY")
        refused = crosslens(*args, env=env)
        done = crosslens(*args, env=env)
        wrong = crosslens(*args, env={"CROSSLENS_KEY": KEY[::-1]})
        passed_as_name = crosslens(*args[:-1], KEY, env=env)
    line = one_line_error(refused)
    assert "refused the key in $CROSSLENS_KEY" in line and "Incorrect API key provided: ***" in line
    assert done.returncode == 0, done.stderr
    assert "Incorrect API key provided: ***" in one_line_error(wrong)
    assert "not the key itself" in one_line_error(passed_as_name)
    texts = [r.stdout + r.stderr for r in (refused, done, wrong, passed_as_name)]
    files = [p.read_bytes() for p in run.rglob("*") if p.is_file()]
    for secret in (KEY, KEY[::-1]):
        pieces = {secret[k : k + 8] for k in range(len(secret) - 7)}
        assert not [t for t in texts if any(piece in t for piece in pieces)]
        assert not [f for f in files if secret.encode() in f]
    assert rows(run, "SELECT count(*) FROM explanations")[0][0] > 0


def test_dry_run_counts_what_a_run_sends_and_sends_nothing(tmp_path):
    run = write_planted_database(tmp_path / "run").parent
    with StubEndpoint(model=MODEL) as stub:
        planned = crosslens("explain", str(run), "--dry-run", "--endpoint", stub.url, "--model", MODEL)
        assert planned.returncode == 0 and stub.requests == 0, planned.stderr
        assert "dry run: 9 features need 116 requests (36 explanations, 80 detection scores)" in planned.stdout
        assert "nothing was sent" in planned.stdout and not (run / EXPLANATIONS_NAME).exists()
        done = crosslens("explain", str(run), "--endpoint", stub.url, "--model", MODEL, "--max-features", "4")
        assert done.returncode == 0 and stub.requests > 0
        sent = stub.requests
    remaining = crosslens("explain", str(run), "--dry-run")
    assert remaining.returncode == 0
    left = int(remaining.stdout.split(" requests (")[0].rsplit(" ", 1)[1])
    assert left == 116 - sent and "already stored, not asked again" in remaining.stdout
    afresh = crosslens("explain", str(run), "--dry-run", "--overwrite")  # a run with it asks everything
    assert "dry run: 9 features need 116 requests" in afresh.stdout, afresh.stdout + afresh.stderr
    assert "already stored" not in afresh.stdout
    write_planted_database(run, seed=1)  # crosslens dashboards rebuilt it: a run refuses the file
    line = one_line_error(crosslens("explain", str(run), "--dry-run"))
    assert "another feature database" in line and "move it aside" in line and "--overwrite" in line


def test_the_failure_summary_counts_what_the_same_command_asks_again(tmp_path):
    """The summary counted the failures of the whole file and said the same command asks them
    again, though it asks only those of the features it selects."""
    run = write_planted_database(tmp_path / "run").parent
    with StubEndpoint(model=MODEL) as stub:
        args = ("explain", str(run), "--endpoint", stub.url, "--model", MODEL, "--concurrency", "1")
        stub.fail_next("garbled", "garbled")  # the first explanation's answer cannot be read, twice
        failed = crosslens(*args, "--features", str(CAT))
        other = crosslens(*args, "--features", str(DRIFTER))
        again = crosslens(*args, "--features", str(CAT))
    assert failed.returncode == other.returncode == again.returncode == 0, failed.stderr + other.stderr
    assert "1 requests failed (table failures); run the same command again to ask them again" in failed.stdout
    assert "requests failed" not in other.stdout, other.stdout
    assert "1 more failed requests (table failures) are of features, phases or scores this command does not ask" in (
        other.stdout
    )
    assert "a command whose --features, --classes, --max-features and --phases select them" in other.stdout
    assert "failed" not in again.stdout.replace(", 0 failed)", ""), again.stdout
    assert rows(run, "SELECT count(*) FROM failures") == [(0,)]


# --------------------------------------------------------------------------- imports
def delphi_results(folder: Path, entries: dict[str, object], scores: dict[str, list] | None = None) -> Path:
    """A delphi run's output as its __main__ writes it."""
    (folder / "explanations").mkdir(parents=True)
    (folder / "scores" / "detection").mkdir(parents=True)
    (folder / "run_config.json").write_text(json.dumps({"explainer_model": "hf/Llama-3.1-70B", "hookpoints": []}))
    for name, text in entries.items():
        (folder / "explanations" / f"{name}.txt").write_bytes(json.dumps(text).encode())
    for name, samples in (scores or {}).items():
        (folder / "scores" / "detection" / f"{name}.txt").write_bytes(json.dumps(samples).encode())
    return folder


def test_delphi_explanations_and_detection_scores_are_imported(tmp_path):
    run = write_planted_database(tmp_path / "run").parent
    last = f"{HOOK}@step{100 * (N_SNAPSHOTS - 1)}"
    samples = [
        {"str_tokens": [" a"], "activating": True, "prediction": 1, "correct": True},
        {"str_tokens": [" b"], "activating": True, "prediction": 0, "correct": False},
        {"str_tokens": [" c"], "activating": False, "prediction": 0, "correct": True},
        {"str_tokens": [" d"], "activating": False, "prediction": None, "correct": None},  # a failed judgement
    ]
    results = delphi_results(
        tmp_path / "results" / "pico",
        {
            f"{last}_latent{DRIFTER}": "Dogs and other animals",
            f"{HOOK}@step100_latent5": "Explanation could not be parsed.",
        },
        {f"{last}_latent{DRIFTER}": samples},
    )
    result = crosslens("explain", str(run), "--import", str(results))
    assert result.returncode == 0, result.stderr
    assert (
        "delphi: read 2 explanations: 1 added, 0 already stored (kept), 1 without an explanation (skipped); 1 detection scores added"
        in result.stdout
    )
    (row,) = rows(run, "SELECT feature, snapshot, source, text, model, prompt FROM explanations")
    assert row == (DRIFTER, N_SNAPSHOTS - 1, "delphi", "Dogs and other animals", "hf/Llama-3.1-70B", "delphi")
    (score,) = rows(
        run, "SELECT balanced_accuracy, true_positives, n_activating, true_negatives, n_non_activating FROM scores"
    )
    assert score == (0.75, 1, 2, 1, 1)  # (1/2 + 1/1) / 2, the failed judgement left out
    assert rows(run, "SELECT phase, snapshot FROM phases WHERE feature = ? ORDER BY phase", (DRIFTER,))[0] == (
        "code",
        -1,
    )
    again = crosslens("explain", str(run), "--import", str(results / "explanations"))
    assert "0 added, 1 already stored (kept)" in again.stdout

    with StubEndpoint(model=MODEL) as stub:  # crosslens explain then scores it on the other phases too
        done = crosslens("explain", str(run), "--endpoint", stub.url, "--model", MODEL, "--features", str(DRIFTER))
    assert done.returncode == 0, done.stderr
    judged = rows(
        run, "SELECT s.scored_on FROM scores s JOIN explanations e ON e.id = s.explanation WHERE e.source = 'delphi'"
    )
    assert sorted(on for (on,) in judged) == [0, 1, N_SNAPSHOTS - 1]

    bad = delphi_results(tmp_path / "other", {f"{HOOK}_latent3": "Cats"})
    line = one_line_error(crosslens("explain", str(run), "--import", str(bad)))
    assert "names no snapshot" in line and "HOOK@REVISION" in line


def neuronpedia_row(feature: int, layer: str, text: str, type_name: str = "np_max-act-logits") -> dict:
    """An Explanation row as Neuronpedia's export-data.py dumps it."""
    return {
        "id": f"clx{feature}",
        "modelId": "pico",
        "layer": layer,
        "index": str(feature),
        "authorId": "clkht01d40000jv08hvalcvly",
        "description": text,
        "embedding": None,
        "typeName": type_name,
        "explanationModelName": "gpt-4o-mini",
        "umap_x": None,
        "umap_y": None,
        "umap_cluster": None,
        "umap_log_feature_sparsity": None,
    }


def test_neuronpedia_explanation_exports_are_imported(tmp_path):
    run = write_planted_database(tmp_path / "run").parent
    folder = tmp_path / "exports" / "pico" / "0-res-crosslens__step200" / "explanations"
    folder.mkdir(parents=True)
    lines = [
        neuronpedia_row(CAT, "0-res-crosslens__step200", "the word cat"),
        neuronpedia_row(DRIFTER, "0-res-crosslens__step200", "feline words"),
        neuronpedia_row(DRIFTER, "0-res-crosslens__step200", "cats", "crosslens-explain-1-code"),
        neuronpedia_row(4, "0-res-crosslens__step200", ""),
    ]
    with gzip.open(folder / "batch-0.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(r) for r in lines) + "\n")
    result = crosslens("explain", str(run), "--import", str(tmp_path / "exports"))
    assert result.returncode == 0, result.stderr
    assert "neuronpedia: read 4 explanations: 3 added" in result.stdout
    assert "1 of them are typed as crosslens's own, but no crosslens export manifest" in result.stdout
    got = rows(
        run, "SELECT feature, snapshot, source, text, model, prompt FROM explanations ORDER BY feature, snapshot"
    )
    assert got == [
        (CAT, 2, "neuronpedia", "the word cat", "gpt-4o-mini", "np_max-act-logits"),
        (DRIFTER, -1, "neuronpedia", "cats", "gpt-4o-mini", "crosslens-explain-1-code"),  # no manifest vouches
        (DRIFTER, 2, "neuronpedia", "feline words", "gpt-4o-mini", "np_max-act-logits"),
    ]
    listing = tmp_path / "api.json"  # the earlier /api/explanation/export answer: a JSON list
    listing.write_text(json.dumps([neuronpedia_row(5, "0-res-crosslens__step300", "boats")]))
    assert "1 added" in crosslens("explain", str(run), "--import", str(listing)).stdout
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(neuronpedia_row(5, "6-res-jb", "from another SAE")) + "\n")
    line = one_line_error(crosslens("explain", str(run), "--import", str(other)))
    assert "'6-res-jb' names no snapshot" in line and "LAYER-SET__REVISION" in line
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps(neuronpedia_row(5, "0-res-crosslens__step999", "x")) + "\n")
    assert "'step999' is not a snapshot of this run" in one_line_error(
        crosslens("explain", str(run), "--import", str(unknown))
    )
    assert len(rows(run, "SELECT 1 FROM explanations")) == 4  # the refused files added nothing, removed nothing


def test_a_delphi_score_is_stored_only_with_the_explanation_it_judged(tmp_path):
    """A delphi score of an explanation other than the one kept was stored as the kept one's score."""
    from crosslens.explain import ExplainConfig, import_explanations

    run = write_planted_database(tmp_path / "run").parent
    name, settings = f"{HOOK}@step200_latent{CAT}", ExplainConfig(progress=False)
    right = [{"activating": True, "prediction": 1}, {"activating": False, "prediction": 0}]
    first = import_explanations(run, delphi_results(tmp_path / "first", {name: "Cats"}), settings)
    assert (first.added, first.scores) == (1, 0)
    other = import_explanations(run, delphi_results(tmp_path / "other", {name: "Dogs"}, {name: right}), settings)
    assert (other.kept, other.scores) == (1, 0)  # it judged "Dogs", not the "Cats" kept
    assert rows(run, "SELECT count(*) FROM scores") == [(0,)]
    same = import_explanations(run, delphi_results(tmp_path / "same", {name: "Cats"}, {name: right}), settings)
    assert (same.kept, same.scores) == (1, 1)
    judged = "SELECT e.text, s.balanced_accuracy FROM scores s JOIN explanations e ON e.id = s.explanation"
    assert rows(run, judged) == [("Cats", 1.0)]


def test_a_neuronpedia_source_of_another_hook_is_refused(tmp_path):
    """A Neuronpedia import read only the revision of a source id, so explanations of another
    layer's or another hook's crosscoder were stored as this one's."""
    from crosslens.explain import ExplainConfig, ExplainError, import_explanations

    run = write_planted_database(tmp_path / "run").parent  # reads blocks.0.hook_resid_post
    settings = ExplainConfig(progress=False)
    for source in ("1-res-crosslens__step200", "0-mlp-crosslens__step200"):
        for type_name in ("np_max-act-logits", "crosslens-explain-1-code"):  # a code explanation's row too
            file = tmp_path / f"{source}.jsonl"
            file.write_text(json.dumps(neuronpedia_row(5, source, "boats", type_name)) + "\n")
            with pytest.raises(ExplainError) as refused:
                import_explanations(run, file, settings)
            message = str(refused.value)
            assert repr(source) in message and HOOK in message and "0-res-crosslens__REVISION" in message, message
    assert not (run / EXPLANATIONS_NAME).exists()
    named = tmp_path / "named.jsonl"  # crosslens export --set-name names the set as it likes
    named.write_text(json.dumps(neuronpedia_row(5, "0-my-set__step200", "boats")) + "\n")
    assert import_explanations(run, named, settings).added == 1
