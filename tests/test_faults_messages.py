"""Failures a user can act on: each is one or two lines naming the file, line or flag and
the fix, never a traceback. Damaged crosscoder folders, pairs files, registry files, and the
suite commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from trust_fixtures import harvest, train, write_suite

from crosslens.cli import main
from crosslens.core.errors import DamagedCrosscoderError


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI, expecting exit status 2 and one or two lines on stderr without a traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert 1 <= len(err.splitlines()) <= 2 and "Traceback" not in err, err
    assert "--debug for the traceback" not in err, err  # a known input error, not a raw exception
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(suite folder, finished run folder): 3 tiny GPT-NeoX snapshots (context 64 tokens)."""
    root = tmp_path_factory.mktemp("messages")
    suite = write_suite(root / "suite")
    store = root / "store"
    harvest(suite, store)
    train(store, root / "run", checkpoint_every=0)
    return suite, root / "run"


def damaged_copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


# ---------------------------------------------------------------------------- saved crosscoders
def test_a_truncated_weights_file_is_named_by_every_command_that_loads_it(trained, tmp_path, capsys):
    _, run = trained
    copy = damaged_copy(run, tmp_path)
    weights = copy / "final" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for argv in (["analyze", "--crosscoder", str(copy)], ["report", str(copy)]):
        err = cli_error(argv, capsys)  # inside its run folder, the run's seal catches it first
        assert f"{copy / 'final'}: sae_weights.safetensors has" in err and "cannot be trusted" in err, err
    bare = shutil.copytree(copy / "final", tmp_path / "bare")  # outside a run folder, the loader does
    err = cli_error(["analyze", "--crosscoder", str(bare)], capsys)
    damaged = bare / "sae_weights.safetensors"
    assert f"{damaged} is damaged" in err and "truncated" in err and "retrain" in err, err
    err = cli_error(["report", str(bare)], capsys)  # report rebuilds a run's report: a bare crosscoder has none
    assert err == (
        f"crosslens report: error: RUN_DIR {bare}: not a `crosslens train` run folder, so it has no report "
        f"to rebuild; for any crosscoder, `crosslens analyze --crosscoder {bare}` writes one"
    )


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda text: text[: len(text) // 2], "cfg.json is not valid JSON (line 1"),
        (
            lambda text: json.dumps({**json.loads(text), "d_sae": 64}),
            "W_dec is [32, 3, 32] in the weights but d_sae=64",
        ),
        (lambda text: json.dumps({**json.loads(text), "n_snapshots": 2}), "n_snapshots=2"),
        (
            lambda text: json.dumps({**json.loads(text), "architecture": "crosscoderr"}),
            "names architecture 'crosscoderr'",
        ),
    ],
    ids=["not-json", "d_sae", "n_snapshots", "architecture"],
)
def test_an_edited_cfg_json_is_refused_naming_the_file(trained, tmp_path, capsys, edit, expected):
    _, run = trained
    copy = damaged_copy(run, tmp_path)
    cfg = copy / "final" / "cfg.json"
    cfg.write_text(edit(cfg.read_text()))
    err = cli_error(["analyze", "--crosscoder", str(copy)], capsys)  # the run's seal
    assert f"{copy / 'final'}: cfg.json" in err and "cannot be trusted" in err, err
    bare = shutil.copytree(copy / "final", tmp_path / "bare")
    err = cli_error(["analyze", "--crosscoder", str(bare)], capsys)  # the loader
    assert str(bare / "cfg.json") in err and expected in err, err
    from crosslens.causal import load_crosscoder

    with pytest.raises(DamagedCrosscoderError, match="cfg.json"):
        load_crosscoder(copy / "final")


# ---------------------------------------------------------------------------- pairs files
GOOD = {"sentence_good": "the cat is here", "sentence_bad": "the cat are here"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["blimp", "crosslens"])
def test_a_malformed_pairs_line_is_named_by_its_true_line_number(tmp_path, kind):
    from crosslens.tasks.blimp import MinimalPairFormatError, load_task_file

    good = json.dumps(GOOD if kind == "blimp" else {"clean": "the cat", "correct": " is", "wrong": " are"})
    lines = ["# pairs for the agreement test", "", good, "", "# a comment", good, '{"sentence_good": "the cat', good]
    path = write_lines(tmp_path / "pairs.jsonl", lines)
    with pytest.raises(MinimalPairFormatError, match=r"pairs.jsonl, line 7: not valid JSON .*, column") as info:
        load_task_file(path)
    assert "line 1 column" not in str(info.value)
    lines[6] = "[1, 2]"  # JSON, but not an object
    with pytest.raises(MinimalPairFormatError, match=r"pairs.jsonl, line 7: a JSON list"):
        load_task_file(write_lines(path, lines))
    lines[6] = good  # whole again: comments and blank lines are skipped
    assert len(next(iter(load_task_file(write_lines(path, lines)).values()))) == 4


def test_a_10000_character_sentence_is_dropped_naming_its_line_and_the_context(trained, tmp_path, capsys):
    """A pair longer than the models' context cannot be scored: like a pair the tokenizer cannot score, it is
    dropped with a warning that names its line and the context, and the run goes on with the rest."""
    suite, run = trained
    long_prompt = " ".join(["the big old cat"] * 700)[:9980].rsplit(" ", 1)[0]
    long = {"sentence_good": long_prompt + " is here", "sentence_bad": long_prompt + " are here"}
    assert len(long["sentence_good"]) > 9900
    pairs = write_lines(tmp_path / "pairs.jsonl", ["# long", "", json.dumps(GOOD), json.dumps(long)])
    argv = ["attribute", "--crosscoder", str(run), "--suite", str(suite), "--task", str(pairs)]
    with pytest.warns(UserWarning, match="kept 1 of 2 pairs") as warned:
        main([*argv, "--out", str(tmp_path / "ie.json"), "--n-examples", "2", "--allow-chance"])
    message = " ".join(str(w.message) for w in warned if "kept 1 of 2" in str(w.message))
    assert f"{pairs}, line 4:" in message and "more than the model's context of 64" in message, message
    assert len(message) < 1000, message  # the sentence is not printed whole
    assert (tmp_path / "ie.json").is_file()


def test_attribute_of_several_tasks_takes_the_one_task_flags_and_says_where_its_tables_are(trained, tmp_path, capsys):
    """Several languages run through the same flags as one task: --allow-chance, --out (a .json:
    the report goes beside it, the tables one per task), a --task given with --task-file, and the
    section for `crosslens report`."""
    suite, run = trained

    def refused(argv: list[str]) -> str:  # the error line; the stage's progress bars may come first
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(argv)
        (line,) = [
            line for line in capsys.readouterr().err.splitlines() if line.startswith("crosslens attribute: error:")
        ]
        return line

    rows = [{**GOOD, "language": language} for language in ("en", "xx")]
    multi = write_lines(tmp_path / "multi.jsonl", [json.dumps(row) for row in rows for _ in range(2)])
    base = [
        "attribute",
        "--crosscoder",
        str(run),
        "--suite",
        str(suite),
        "--task-file",
        str(multi),
        "--n-examples",
        "2",
    ]
    err = refused([*base, "--out", str(tmp_path / "a.json")])
    assert "no behaviour" in err and "--allow-chance" in err, err  # two pairs a language: at chance everywhere
    assert refused([*base, "--out", str(tmp_path / "a.html")]) == (
        f"crosslens attribute: error: --out {tmp_path / 'a.html'}: the IE table is a .json file; pass e.g. --out {tmp_path / 'a.json'}"
    )
    err = refused([*base, "--task", "agreement_pp", "--out", str(tmp_path / "a.json")])  # taken, not dropped
    assert "two tasks are in language" in err or "agreement_pp" in err, err
    assert main([*base, "--allow-chance", "--out", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    tables = tmp_path / "a_causal"
    assert f"IE tables: one per task, {tables}/<task>/ie_table.json (not {tmp_path / 'a.json'})" in out
    assert sorted(p.parent.name for p in tables.glob("*/ie_table.json")) == ["multi_en", "multi_xx"]
    assert f"section saved to {run / 'sections' / 'attribution-multi_en_multi_xx.json'}" in out
    assert (tmp_path / "a.html").is_file() and out.startswith("metric = ")


# ---------------------------------------------------------------------------- recipe files


@pytest.mark.parametrize("command", ["plan", "train"])
def test_a_recipe_that_is_not_valid_yaml_is_named_by_its_file_line_and_column(tmp_path, capsys, command):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: EleutherAI/pythia-14m\nsteps: [0, 1000\nhook: blocks.0.hook_resid_post\n")
    out = ["--out", str(tmp_path / "run")] if command == "train" else []
    err = cli_error([command, "--recipe", str(recipe), *out], capsys)
    assert err == (
        f"crosslens {command}: error: recipe file {recipe} is not valid YAML at line 3, column 5: expected ',' or "
        "']', but got ':' (while parsing a flow sequence started at line 2, column 8); correct it there"
    )
    recipe.write_text("model: EleutherAI/pythia-14m\n  hook: blocks.0.hook_resid_post\n")
    err = cli_error([command, "--recipe", str(recipe), *out], capsys)
    assert err.endswith(
        f"recipe file {recipe} is not valid YAML at line 2, column 7: mapping values are not allowed here; correct it there"
    )
    recipe.write_bytes(b"\xff\xfe model")
    err = cli_error([command, "--recipe", str(recipe), *out], capsys)
    assert err.endswith(f"recipe file {recipe} is not a UTF-8 text file; pass the path of a recipe .yaml"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


# ---------------------------------------------------------------------------- registry files
RELEASE_YAML = """\
# releases for the tests
tiny:
  repo_id: someone/tiny
  model: EleutherAI/pythia-14m
  suite: {family: pythia, model_id: EleutherAI/pythia-14m, revisions: [step0, step1]}
  saes:
    - {id: blocks.0.hook_resid_post, path: blocks.0.hook_resid_post}
"""


def test_a_binary_registry_file_names_the_file_and_the_variable(tmp_path, monkeypatch, capsys):
    registry = tmp_path / "registry.yaml"
    registry.write_bytes(bytes(range(256)))
    monkeypatch.setenv("CROSSLENS_PRETRAINED", str(registry))
    err = cli_error(["pretrained", "list"], capsys)
    assert str(registry) in err and "not a YAML text file" in err and "CROSSLENS_PRETRAINED" in err, err
    registry.write_text("just a sentence")  # text, but no mapping of releases
    err = cli_error(["pretrained", "list"], capsys)
    assert str(registry) in err and "must map release names" in err and "CROSSLENS_PRETRAINED" in err, err
    registry.write_text(RELEASE_YAML)
    assert main(["pretrained", "list"]) == 0
    assert "someone/tiny" in capsys.readouterr().out


def test_a_release_defined_twice_in_one_file_is_refused_naming_both_lines(tmp_path, monkeypatch):
    from crosslens.pretrained import PretrainedRegistryError, pretrained_directory

    registry = tmp_path / "registry.yaml"
    registry.write_text(RELEASE_YAML + RELEASE_YAML.replace("someone/tiny", "someone/other"))
    monkeypatch.setenv("CROSSLENS_PRETRAINED", str(registry))
    with pytest.raises(
        PretrainedRegistryError, match=r"registry.yaml: release 'tiny' is defined twice, at line 2 and at line 9"
    ):
        pretrained_directory()
    registry.write_text(RELEASE_YAML.replace("  model: EleutherAI/pythia-14m\n", "  model: a/b\n  model: c/d\n"))
    with pytest.raises(PretrainedRegistryError, match=r"key 'model' appears twice, at line 4 and at line 5"):
        pretrained_directory()


def test_registry_values_of_the_wrong_kind_are_named_with_their_release_and_field(tmp_path, monkeypatch, capsys):
    registry = tmp_path / "registry.yaml"
    monkeypatch.setenv("CROSSLENS_PRETRAINED", str(registry))
    cases = [
        (
            "revisions: [step0, step1]}",
            "revisions: [step0, step1], steps: [0, x]}",
            "suite.steps must be whole numbers, got [0, 'x']",
        ),
        (
            "path: blocks.0.hook_resid_post}",
            "path: blocks.0.hook_resid_post, l0: [a, b]}",
            "entry 'blocks.0.hook_resid_post': l0 must be a number or 2 numbers",
        ),
        (
            "path: blocks.0.hook_resid_post}",
            "path: blocks.0.hook_resid_post, l0: true}",
            "l0 must be a number or 2 numbers (one per revision), got True",
        ),
    ]
    for old, new, message in cases:
        registry.write_text(RELEASE_YAML.replace(old, new))
        err = cli_error(["pretrained", "list"], capsys)
        assert f"{registry}: release 'tiny': " in err and message in err, err


# ---------------------------------------------------------------------------- suite commands
def test_suite_list_offline_with_a_mistyped_name_says_it_is_not_a_known_suite(offline_hf_home, capsys):
    err = cli_error(["suite", "list", "EleutherAI/pythia-160mm"], capsys)
    assert "not a known suite" in err and "did you mean EleutherAI/pythia-160m" in err, err
    assert main(["suite", "list", "EleutherAI/pythia-160m-deduped"]) == 0  # a real name still lists offline
    assert capsys.readouterr().out.split()[-1] == "step143000"


def test_suite_list_without_a_network_is_one_line(tmp_path):
    # online, as a user's shell is, with the hub's address where nothing listens: a process of its
    # own, since huggingface_hub reads both settings once, at import
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "crosslens", "suite", "list", "EleutherAI/pythia-160mm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, err)
    assert 1 <= len(err.splitlines()) <= 2 and "Traceback" not in err, err
    assert "--debug for the traceback" not in err, err
    assert (
        "cannot reach the Hugging Face hub" in err and "EleutherAI/pythia-160mm" in err and "check the name" in err
    ), err
    assert "HF_HUB_OFFLINE=1" in err, err


def test_a_failed_suite_build_removes_only_the_root_it_created(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    root = tmp_path / "new_suite"
    err = cli_error(["suite", "build", "--root", str(root), "--corpus", str(empty)], capsys)
    assert "hold no text" in err and not root.exists(), err
    mine = tmp_path / "my_folder"
    mine.mkdir()
    cli_error(["suite", "build", "--root", str(mine), "--corpus", str(empty)], capsys)
    assert mine.is_dir()  # the user's own folder stays
    (mine / "notes.txt").write_text("mine")
    err = cli_error(["suite", "build", "--root", str(mine), "--small"], capsys)
    assert f"--root {mine} holds files but no pico suite" in err, err
    # a refusal leaves the folders as it found them: no lock file of the build beside its root
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "my_folder"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    bad = write_lines(tmp_path / "bad.jsonl", ["# header", '{"sentence_good": "the cat'])
    err = cli_error(["suite", "build", "--root", str(root), "--eval", str(bad)], capsys)
    assert f"--eval {bad}: {bad}, line 2: not valid JSON" in err and not root.exists(), err
    assert "--skip-invalid" not in err and "the build evaluates every pair: fix the line or delete it" in err, err


def test_suite_build_names_the_flags_of_a_corpus_too_small_or_a_vocabulary_too_low(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "small.txt"
    corpus.write_text("The dog runs.\n\nThe cats sleep.\n")
    root = tmp_path / "suite"
    err = cli_error(["suite", "build", "--root", str(root), "--corpus", str(corpus)], capsys)
    assert "too few for 64 held-out rows of seq_len=64" in err and "--seq-len" in err and "--small" in err, err
    assert "seq_len / n_eval_sequences" not in err and not root.exists(), err
    # The tokenizer's floor is the flag's: refused while parsing, before any text is read.
    err = cli_error(["suite", "build", "--root", str(root), "--corpus", str(corpus), "--bpe-vocab", "100"], capsys)
    assert "argument --bpe-vocab: must be >= 300, got 100" in err and not root.exists(), err


def test_the_readme_says_where_the_console_script_is():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    setup = readme[readme.index("## Set-up on a fresh machine") : readme.index("## Your own text")]
    assert "make demo" in setup and "make test" in setup and ".venv/bin/crosslens" in setup
    own_text = readme[readme.index("## Your own text") :]
    block = own_text[own_text.index("```bash\n") + len("```bash\n") :]
    assert block.splitlines()[0] == "source .venv/bin/activate"
