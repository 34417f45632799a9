"""The command line alone, start to end, on a small text corpus this test writes.

The commands are the README's "Your own text" walkthrough, read from README.md, with
small settings appended (argparse keeps the last value of a repeated flag), then
``report``, ``evaluate`` and ``analyze`` on RUN_DIR/final.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from crosslens.cli import main
from crosslens.pico import PicoGrammar, sample_documents

README = Path(__file__).resolve().parent.parent / "README.md"

# Small settings per command, appended to the README's commands (the README's own values are
# the real ones; these keep the test to well under a minute on two shared cores).
SMALL = {
    "suite build": "--n-layers 1 --d-model 32 --train-steps 32 --checkpoints 16 --seq-len 32 --batch-size 8 --bpe-vocab 400",
    "harvest": "--n-snapshots 4 --n-tokens 2048 --seq-len 32",
    "train": "--d-sae 64 --n-steps 40 --batch-size 128 --checkpoint-every 0",
    "attribute": "--n-examples 8 --allow-chance",  # 32 training steps leave the model at chance on the pairs
    "analyze": "",
    "dashboards": "",
}


def readme_commands(section: str) -> list[list[str]]:
    """The ``crosslens`` commands of the first bash block under the README heading ``section``."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block is not None, f"no bash block under {section!r}"
    joined = block.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split("#")[0].strip()
        if line == "source .venv/bin/activate":  # puts the console script on PATH; the test calls main()
            continue
        if line:
            words = shlex.split(line)
            assert words[0] == "crosslens", line
            commands.append(words[1:])
    return commands


def write_corpus(folder: Path) -> None:
    """A corpus of grammar documents, one per line and no blank lines (so the build must cut
    them into documents itself), and BLiMP-format agreement pairs."""
    documents = sample_documents(300, seed=3)
    (folder / "corpus.txt").write_text("\n".join(" ".join(d.split()) for d in documents) + "\n")
    with open(folder / "pairs.jsonl", "w") as f:
        for pair in PicoGrammar().agreement_pairs("simple", 24, 5):
            good, bad = pair.clean + pair.correct + ".", pair.clean + pair.wrong + "."
            f.write(json.dumps({"sentence_good": good, "sentence_bad": bad, "UID": "agreement"}) + "\n")


def run(words: list[str], capsys) -> str:
    assert main(words) == 0
    return capsys.readouterr().out


def test_readme_walkthrough_runs_start_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    write_corpus(tmp_path)
    commands = readme_commands("Your own text")
    assert [" ".join(c[:2]) if c[0] == "suite" else c[0] for c in commands] == [*SMALL, "browse"]
    out = {}
    for words in commands[:-1]:  # browse serves until Ctrl-C: tests/test_features_cli.py runs it
        name = " ".join(words[:2]) if words[0] == "suite" else words[0]
        out[name] = run(words + SMALL[name].split(), capsys)

    # suite build: one row per checkpoint with the user's pairs scored (multi-token words included)
    manifest = json.loads((tmp_path / "my_suite" / "suite.json").read_text())
    assert len(manifest["snapshots"]) >= 16
    assert all(isinstance(row["extra"]["pairs"], float) for row in manifest["evals"])
    assert all(row["simple"] is not None for row in manifest["evals"])  # BPE pieces scored, not skipped
    assert re.search(r"^ +step +tokens +loss +pairs$", out["suite build"], re.M)  # no grammar columns on user text
    assert (
        "pairs columns: share of pairs whose correct continuation has the higher summed log-probability"
        in out["suite build"]
    )

    # harvest: a store and a held-out store of other rows
    assert "held-out store" in out["harvest"]
    assert (tmp_path / "store-heldout" / "manifest.json").exists()

    # train: the quality table on held-out tokens, one row per snapshot, L0 and dead features
    text = out["train"]
    assert "explained variance per snapshot on held-out tokens" in text
    assert len(re.findall(r"^step\d+ +-?\d+\.\d%$", text, re.M)) == 4  # rows named by the suite's revisions
    assert re.search(r"^mean L0 +\d+\.\d$", text, re.M)
    assert re.search(r"dead features \(never fire on these tokens\): \d+ of 64", text)
    quality = json.loads((tmp_path / "run" / "quality.json").read_text())
    assert quality["measured_on"].endswith("store-heldout")

    # attribute: the metric's sign with the numbers, and a section saved for the report
    text = out["attribute"]
    assert "metric = logit[wrong] - logit[correct]" in text
    assert len(re.findall(r"metric [+-]\d\.\d{3} \((prefers (correct|wrong)|no behaviour: accuracy \d+%)", text)) == 4
    assert (tmp_path / "run" / "sections" / "attribution-pairs.json").exists()
    # every pair the BPE can score is used (6 of 24 had one-token words), multi-token ones counted
    scored = re.search(
        r"^pairs: 8 of the 24 read from the file scored \(--n-examples caps them\), (\d) of them with multi-token",
        text,
        re.M,
    )
    assert scored and int(scored.group(1)) > 0
    assert "crosslens: warning" not in text
    # a pair the tokenizer cannot score (the prompt's trailing space merges into the continuation): one line naming --task
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"clean": "The dogs near ", "correct": "the cat", "wrong": "a cat"}) + "\n"
    )
    with pytest.raises(SystemExit) as stopped:
        main(["attribute", "--crosscoder", "run", "--task", "bad.jsonl"])
    error = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(error) == 1
    assert error[0].startswith("crosslens attribute: error: --task bad.jsonl: none of the 1 pairs can be scored")
    assert "merges with the end of the prompt" in error[0] and "leading space" in error[0]

    # analyze on RUN_DIR: the report, titled after the suite, with decoded contexts and attribution inside
    html = (tmp_path / "run" / "report.html").read_text()
    assert re.search(r"<title>crosslens: my_suite \(crosslens/pico\), blocks\.0\.hook_resid_post</title>", html)
    contexts = html[html.index('id="top-activating-contexts"') :]
    assert "<mark>" in contexts and re.search(r"\b(The|the|to)\b", contexts)
    assert "Task metric per snapshot" in html and "correct preferred" in html

    # dashboards: the feature database in the run folder, and the README's next command printed
    assert (tmp_path / "run" / "dashboards.sqlite").is_file()
    assert f"browse it: crosslens {' '.join(commands[-1])}" in out["dashboards"]

    # report RUN_DIR rebuilds the same page from disk
    first = html
    assert "report: run/report.html" in run(["report", "run"], capsys)
    assert (tmp_path / "run" / "report.html").read_text() == first

    # analyze accepts RUN_DIR/final too; evaluate measures a trained crosscoder on any store
    assert "report: elsewhere.html" in run(["analyze", "--crosscoder", "run/final", "--out", "elsewhere.html"], capsys)
    text = run(["evaluate", "run", "--store", "store"], capsys)
    assert "explained variance per snapshot on --store store" in text
    assert len(re.findall(r"^step\d+ ", text, re.M)) == 4

    # Bayazit et al.'s per-token threshold reaches the IE table, and is recorded there (last: each
    # attribute run saves the run's attribution section again)
    tables = {}
    for name, extra in (("default", []), ("thresholded", ["--ie-threshold", "1e9"])):
        run(
            [
                "attribute",
                "--crosscoder",
                "run",
                "--task",
                "pairs.jsonl",
                "--out",
                f"{name}.json",
                *SMALL["attribute"].split(),
                *extra,
            ],
            capsys,
        )
        tables[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert tables["default"]["config"]["threshold"] is None and tables["thresholded"]["config"]["threshold"] == 1e9
    assert tables["default"]["rows"] and not tables["thresholded"]["rows"]  # the rows of non-zero IE


def test_real_suites_walkthrough_commands_that_run_offline(fake_hub, capsys):
    """`suite list` and `plan` of the "Using real suites" block answer offline (the rest download)."""
    commands = readme_commands("Using real suites")
    assert [c[0] for c in commands] == ["suite", "plan", "harvest", "train", "analyze"]
    harvest = commands[2]
    assert harvest[harvest.index("--n-snapshots") + 1] == "32"
    listing = run(commands[0], capsys).split()
    assert listing[0] == "step0" and len(listing) == 154
    assert "snapshots" in run(commands[1], capsys).lower()
