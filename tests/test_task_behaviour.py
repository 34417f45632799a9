"""Does the model do the task? The behaviour check before attribution, pairs that do not fit
the prompt + continuation format, and the suite build table on user text."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from test_causal import tokenizer  # noqa: F401  (the fixture: the agreement words)
from tiny_crosscoders import random_crosscoder
from transformer_lens import HookedTransformer, HookedTransformerConfig

from crosslens.causal import AttributionConfig, run_causal_stage
from crosslens.causal.behaviour import NO_BEHAVIOUR, NoBehaviourError, snapshot_behaviour, wilson_interval
from crosslens.cli import main
from crosslens.pico.evals import format_eval_table
from crosslens.tasks import TaskDataset
from crosslens.tasks.agreement import agreement_pairs
from crosslens.tasks.blimp import MinimalPairFormatError, load_blimp_jsonl, pair_shape_problem

HOOK = "blocks.0.hook_resid_post"
D_MODEL, D_SAE = 32, 32


def tiny_model(tokenizer, seed: int, *, blind: bool = False) -> HookedTransformer:
    """A random 1-layer model; ``blind`` zeroes its unembedding, so every token gets the same
    logit and the model never tells two continuations apart (every pair a tie)."""
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=D_MODEL,
        n_ctx=24,
        d_head=8,
        n_heads=4,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    model = HookedTransformer(cfg).eval()
    if blind:
        with torch.no_grad():
            model.unembed.W_U.zero_()
            model.unembed.b_U.zero_()
    return model


def tiny_crosscoder(n_snapshots: int):
    return random_crosscoder(n_snapshots=n_snapshots, d_in=D_MODEL, d_sae=D_SAE, hook=HOOK)


def preferred_by(model: HookedTransformer, tokenizer, task: TaskDataset) -> TaskDataset:
    """``task`` with each pair's "correct" continuation the one ``model`` prefers: it is right on all."""
    tokenized = task.tokenize(tokenizer)
    with torch.no_grad():
        logits = model(tokenized.clean_tokens)[torch.arange(len(task)), tokenized.last_pos]
    rows = torch.arange(len(task))
    prefers_wrong = logits[rows, tokenized.wrong_ids] > logits[rows, tokenized.correct_ids]
    pairs = [replace(p, correct=p.wrong, wrong=p.correct) if flip else p for p, flip in zip(task.pairs, prefers_wrong)]
    return replace(task, pairs=tuple(pairs))


def stage(models, task, tokenizer, out, **kwargs):
    return run_causal_stage(
        models,
        tiny_crosscoder(len(models)),
        task,
        out,
        tokenizer=tokenizer,
        config=AttributionConfig(n_steps=2),
        top_k=4,
        ks=(1, 4),
        n_random=0,
        n_boot=50,
        progress=False,
        **kwargs,
    )


# ---------------------------------------------------------------------------- the numbers
def test_wilson_interval_and_ties_counting_half():
    low, high = wilson_interval(20, 20)
    assert low == pytest.approx(20 / (20 + 1.959963984540054**2)) and high == 1.0
    low, high = wilson_interval(10, 20)
    assert low == pytest.approx(0.2993, abs=1e-4) and high == pytest.approx(0.7007, abs=1e-4)
    # 15 of 20 right: the interval [53%, 89%] excludes chance; 13 of 20 does not
    assert not snapshot_behaviour(torch.tensor([-1.0] * 15 + [1.0] * 5), "s").at_chance
    assert snapshot_behaviour(torch.tensor([-1.0] * 13 + [1.0] * 7), "s").at_chance
    # reliably wrong is behaviour too (e.g. agreeing with the nearest noun)
    assert not snapshot_behaviour(torch.tensor([1.0] * 18 + [-1.0] * 2), "s").at_chance
    ties = snapshot_behaviour(torch.zeros(30), "step0")
    assert ties.accuracy == 0.5 and ties.at_chance and ties.metric_mean == 0.0 and ties.metric_sd == 0.0
    b = snapshot_behaviour(torch.tensor([-2.0, -1.0, 0.0, 1.0]), "s")
    assert b.accuracy == pytest.approx(0.625) and b.metric_mean == pytest.approx(-0.5)
    assert b.describe().startswith("accuracy 62% [") and "of 4 pairs, metric -0.500 sd 1.291" in b.describe()


# ---------------------------------------------------------------------------- the causal stage
def test_a_model_at_chance_everywhere_is_refused_or_marked(tokenizer, tmp_path):
    task = agreement_pairs("simple", n=12, seed=1)
    models = [tiny_model(tokenizer, seed, blind=True) for seed in (0, 1)]
    with pytest.raises(
        NoBehaviourError, match=r"at chance on its 12 pairs at every snapshot \(accuracy 50%-50%.*--allow-chance"
    ):
        stage(models, task, tokenizer, tmp_path / "refused", allow_chance=False)
    assert not (tmp_path / "refused").exists()  # nothing presented, and no empty folder left behind

    result = stage(models, task, tokenizer, tmp_path / "marked")
    summary = json.loads(result.paths.summary.read_text())
    assert [b["at_chance"] for b in summary["behaviour"]] == [True, True]
    assert [b["accuracy"] for b in summary["behaviour"]] == [0.5, 0.5]
    assert summary["specific_per_snapshot"] == [0, 0]
    classes = {c for row in json.loads(result.paths.relie.read_text())["classes"] for c in row}
    assert classes <= {NO_BEHAVIOUR, "below_floor"}
    html = result.paths.report.read_text()
    assert "NO BEHAVIOUR: the model is at chance at every snapshot" in html
    assert "Keep-only restoration at s1: not shown, the model is at chance there" in html


def test_a_model_above_chance_is_attributed_as_before(tokenizer, tmp_path, capsys):
    from crosslens.causal.sections import _print_snapshots

    models = [tiny_model(tokenizer, seed) for seed in (0, 1)]
    task = preferred_by(models[1], tokenizer, agreement_pairs("simple", n=12, seed=1))
    result = stage([models[1], models[1]], task, tokenizer, tmp_path, allow_chance=False)
    behaviour = result.summary.behaviour
    assert [b["accuracy"] for b in behaviour] == [1.0, 1.0] and not any(b["at_chance"] for b in behaviour)
    assert behaviour[0]["ci_low"] == pytest.approx(12 / (12 + 1.959963984540054**2))
    classes = {c for row in json.loads(result.paths.relie.read_text())["classes"] for c in row}
    assert NO_BEHAVIOUR not in classes
    _print_snapshots(result.summary)
    printed = capsys.readouterr().out
    assert (
        len(
            re.findall(
                r"^ +s[01]  metric -\d\.\d{3} \(prefers correct\)  snapshot-specific features \d+$", printed, re.M
            )
        )
        == 2
    )
    assert "no behaviour" not in printed and re.search(
        r"keep-only restoration at s1 \(zero-ablation\): top-1 ", printed
    )


def test_only_the_snapshots_at_chance_are_marked(tokenizer, tmp_path, capsys):
    """As the pico demo's step 0: an untrained snapshot at chance beside one that does the task."""
    from crosslens.causal.sections import _print_snapshots

    trained = tiny_model(tokenizer, 1)
    task = preferred_by(trained, tokenizer, agreement_pairs("simple", n=12, seed=1))
    result = stage([tiny_model(tokenizer, 0, blind=True), trained], task, tokenizer, tmp_path, allow_chance=False)
    assert [b["at_chance"] for b in result.summary.behaviour] == [True, False]
    relie = json.loads(result.paths.relie.read_text())
    assert relie["classes"], "some feature is selected"
    assert all(row[0] in (NO_BEHAVIOUR, "below_floor") for row in relie["classes"])
    assert all(row[1] != NO_BEHAVIOUR for row in relie["classes"])
    assert result.summary.specific_per_snapshot[0] == 0
    _print_snapshots(result.summary)
    printed = capsys.readouterr().out
    assert "no behaviour at s0: the model is at chance there" in printed
    assert re.search(
        r"^ +s0  metric \+0\.000 \(no behaviour: accuracy 50% \[\d+%, \d+%\] of 12 pairs, metric sd \d", printed, re.M
    )
    (s0_line,) = [line for line in printed.splitlines() if line.strip().startswith("s0 ")]
    assert len(re.findall(r"[+-]\d\.\d{3}", s0_line)) == 1, f"the metric is printed once: {s0_line}"
    assert re.search(r"^ +s1  metric -\d\.\d{3} \(prefers correct\)  snapshot-specific features \d+$", printed, re.M)
    html = result.paths.report.read_text()
    assert "neither: no behaviour (at chance)" in html and "Keep-only restoration at s1" in html


# ---------------------------------------------------------------------------- the CLI
def test_cli_attribute_refuses_a_model_at_chance_in_one_line(tmp_path, capsys):
    from hf_cache import make_word_tokenizer, tiny_neox, write_local_suite

    from crosslens.checkpoints import CheckpointSuite

    blind = {}
    for step in (0, 1):
        model = tiny_neox(seed=40 + step)
        with torch.no_grad():
            model.get_output_embeddings().weight.zero_()
        blind[f"step{step}"] = model
    write_local_suite(tmp_path / "suite", blind, make_word_tokenizer())
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        ("the cat sees", "the cat see"),
        ("the dogs see", "the dogs sees"),
        ("the man walks", "the man walk"),
        ("a bird eats", "a bird eat"),
        ("the women walk", "the women walks"),
        ("a child runs", "a child run"),
    ]
    pairs.write_text("".join(json.dumps({"sentence_good": g, "sentence_bad": b}) + "\n" for g, b in rows))
    crosscoder = tiny_crosscoder(2)
    crosscoder.cfg.metadata.suite = {
        "family": "local",
        "root": str(tmp_path / "suite"),
        "snapshots": [ref.to_dict() for ref in CheckpointSuite.local(tmp_path / "suite").snapshots],
    }
    crosscoder.save_model(str(tmp_path / "cc"))
    argv = [
        "attribute",
        "--suite",
        str(tmp_path / "suite"),
        "--crosscoder",
        str(tmp_path / "cc"),
        "--task",
        str(pairs),
        "--out",
        str(tmp_path / "attr.json"),
    ]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # stderr also has progress bars
    assert stopped.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(
        "crosslens attribute: error: task 'pairs': the model is at chance on its 6 pairs at every snapshot"
    )
    assert "--allow-chance" in err[0]
    assert main([*argv, "--allow-chance"]) == 0
    printed = capsys.readouterr().out
    assert "NO BEHAVIOUR: the model is at chance at every snapshot" in printed
    assert "keep-only restoration at step1 (zero-ablation): not shown, no behaviour there" in printed
    assert "snapshot-specific features" not in printed


# ---------------------------------------------------------------------------- pairs that do not fit the format
def test_pairs_that_do_not_differ_in_one_place_after_a_prompt_are_refused_with_their_line(tmp_path):
    assert pair_shape_problem("The keys to the cabinet are here.", "The keys to the cabinet is here.") is None
    assert pair_shape_problem("Ann left, and Bo stayed.", "Ann left and Bo stayed.") is None  # one insertion
    assert "first word" in pair_shape_problem("Dogs bark.", "Dog bark.")
    assert "more than one place ('dog runs' vs 'dogs run' after 'The')" in pair_shape_problem(
        "The dog runs.", "The dogs run."
    )
    good = {
        "sentence_good": "The pilots near the tower are tired.",
        "sentence_bad": "The pilots near the tower is tired.",
    }
    rows = [good, good, {"sentence_good": "The dog runs fast.", "sentence_bad": "The dogs run fast."}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        MinimalPairFormatError, match=rf"^{re.escape(str(path))}, line 3: the sentences differ in more than one place"
    ):
        load_blimp_jsonl(path)
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        assert len(load_blimp_jsonl(path, on_invalid="skip")) == 2


def test_a_pair_differing_at_the_subject_after_one_word_is_warned_about_with_its_line(tmp_path):
    rows = [
        {"sentence_good": "The dogs near the tree run.", "sentence_bad": "The dogs near the tree runs."},
        {"sentence_good": "The dogs run.", "sentence_bad": "The dog run."},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(
        UserWarning,
        match=rf"1 of 2 pairs have a one-word prompt \(first: {re.escape(str(path))}, line 2, prompt 'The'\)",
    ):
        task = load_blimp_jsonl(path)
    assert [(p.clean, p.correct, p.wrong) for p in task] == [
        ("The dogs near the tree", " run", " runs"),
        ("The", " dogs", " dog"),
    ]


# ---------------------------------------------------------------------------- suite build on user text
def test_eval_table_shows_the_grammar_columns_only_for_the_grammar():
    rows = [
        {
            "step": 0,
            "tokens_seen": 2048,
            "loss": 3.5,
            "simple": 0.5,
            "pp": 0.5,
            "rc": 0.5,
            "nearest_noun": 0.5,
            "ioi": 0.5,
            "extra": {"pairs": 0.45},
        }
    ]
    grammar = format_eval_table(rows, ["pairs"]).splitlines()
    assert grammar[0].split() == ["step", "tokens", "loss", "simple", "pp", "rc", "near", "ioi", "pairs"]
    text = format_eval_table(rows, ["pairs"], grammar=False).splitlines()
    assert text[0].split() == ["step", "tokens", "loss", "pairs"] and text[2].split() == ["0", "2.0k", "3.500", "45"]
    rows[0].pop("extra")
    assert format_eval_table(rows, grammar=False).splitlines()[0].split() == ["step", "tokens", "loss"]


def test_suite_build_on_user_text_prints_no_grammar_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "".join(f"In the beginning was the word number {i}, and the word was with us.\n\n" for i in range(600))
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"sentence_good": "the word was with us", "sentence_bad": "the word were with us"}) + "\n"
    )
    argv = [
        "suite",
        "build",
        "--root",
        str(tmp_path / "suite"),
        "--corpus",
        str(corpus),
        "--eval",
        str(pairs),
        "--n-layers",
        "1",
        "--d-model",
        "16",
        "--n-heads",
        "2",
        "--train-steps",
        "16",
        "--checkpoints",
        "16",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--bpe-vocab",
        "300",
    ]
    for _ in range(2):  # built, then cached
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert re.search(r"^ +step +tokens +loss +pairs$", out, re.M), out
        assert not re.search(r"\bsimple\b|\bioi\b", out)
    assert "(cached build; --force rebuilds)" in out
