"""The pieces behind the command line's own-text path: documents, held-out samples, pair
scoring of multi-token words, pairs files, hook names, report sections."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from crosslens.activations.tokens import split_rows
from crosslens.core.documents import split_documents, text_files
from crosslens.core.hooks import hook_problem
from crosslens.pico import PicoGrammar, sample_documents
from crosslens.pico.corpus import TextCorpus
from crosslens.pico.evals import continuation_logprob_diffs, pair_logit_diffs
from crosslens.pico.tokenizer import train_tokenizer, word_level_tokenizer
from crosslens.tasks import MinimalPair
from crosslens.tasks.blimp import load_task_file, task_file_format


def test_a_file_without_blank_lines_is_cut_into_documents_at_line_ends():
    lines = [f"Sentence number {i} of a long text." for i in range(400)]  # ~35 characters each
    documents = split_documents("\n".join(lines), max_chars=500)
    assert 20 <= len(documents) <= 35
    assert all(len(d) <= 560 for d in documents)
    assert "\n".join(documents).split("\n") == lines  # nothing lost, cut only at line ends
    assert split_documents("First.\n\nSecond one.\r\n\r\nThird.") == ["First.", "Second one.", "Third."]


def test_text_folders_expand_to_their_txt_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "notes.md").write_text("not text")
    assert text_files(tmp_path) == [tmp_path / "b.txt", tmp_path / "sub" / "a.txt"]
    with pytest.raises(ValueError, match="does not exist"):
        text_files([tmp_path / "missing.txt"])


def test_heldout_rows_are_whole_documents_sampled_across_the_corpus():
    documents = [f"d{i} " + " ".join(["the", "dog", "runs"] * 10) for i in range(200)]
    tokenizer = word_level_tokenizer([f"d{i}" for i in range(200)] + ["the", "dog", "runs"])

    def doc_ids(ids_N) -> set[int]:
        return {
            int(t[1:])
            for t in tokenizer.convert_ids_to_tokens(ids_N.flatten().tolist())
            if t[:1] == "d" and t[1:].isdigit()
        }

    corpus = TextCorpus(documents, tokenizer, seq_len=16, batch_size=4, seed=0, n_heldout_rows=20)
    held = doc_ids(corpus.heldout(20))
    assert len(held) >= 8 and min(held) < 150  # whole documents from all over, not the corpus's tail
    assert not held & doc_ids(corpus.train_stream)  # a held-out document never trains
    assert corpus.n_heldout_documents >= len(held)
    again = TextCorpus(documents, tokenizer, seq_len=16, batch_size=4, seed=0, n_heldout_rows=20)
    assert torch.equal(again.heldout(20), corpus.heldout(20))  # seeded
    other = TextCorpus(documents, tokenizer, seq_len=16, batch_size=4, seed=1, n_heldout_rows=20)
    assert doc_ids(other.heldout(20)) != held


def _tiny_model(vocab_size: int) -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return GPTNeoXForCausalLM(config).eval()


def test_single_token_continuations_score_as_the_logit_difference():
    grammar = PicoGrammar()
    tokenizer = word_level_tokenizer(grammar.vocabulary())
    pairs = grammar.agreement_pairs("pp", 12, 3)
    model = _tiny_model(len(tokenizer))
    logit = pair_logit_diffs(model, tokenizer, pairs)
    logprob = continuation_logprob_diffs(model, tokenizer, pairs, batch_size=5)
    torch.testing.assert_close(logprob, logit, atol=1e-4, rtol=1e-4)  # same normaliser cancels


def test_multi_token_continuations_are_summed_over_their_tokens():
    tokenizer = train_tokenizer(sample_documents(200, seed=1), 300)
    pair = MinimalPair(clean="The dogs near the cat", correct=" walk", wrong=" walks")
    model = _tiny_model(len(tokenizer))
    bos = tokenizer.eos_token_id
    prompt = [bos, *tokenizer.encode(pair.clean, add_special_tokens=False)]

    def summed(continuation: str) -> float:
        ids = prompt + tokenizer.encode(continuation, add_special_tokens=False)
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        return float(sum(logprobs[t - 1, ids[t]] for t in range(len(prompt), len(ids))))

    assert (
        len(tokenizer.encode(" walks", add_special_tokens=False)) > 1
        or len(tokenizer.encode(" walk", add_special_tokens=False)) > 1
    )
    expected = summed(" walk") - summed(" walks")
    assert float(continuation_logprob_diffs(model, tokenizer, [pair])[0]) == pytest.approx(expected, abs=1e-4)


def test_pairs_files_load_by_their_format(tmp_path):
    blimp = tmp_path / "agr.jsonl"
    blimp.write_text(json.dumps({"sentence_good": "The keys are here.", "sentence_bad": "The keys is here."}) + "\n")
    ours = tmp_path / "ours.jsonl"
    ours.write_text(json.dumps({"clean": "The keys", "correct": " are", "wrong": " is"}) + "\n")
    clams = tmp_path / "clams.txt"
    clams.write_text("True\tThe keys are here .\nFalse\tThe keys is here .\n")
    multi = tmp_path / "multi.jsonl"
    multi.write_text(
        "\n".join(
            json.dumps({"sentence_good": g, "sentence_bad": b, "language": lang})
            for g, b, lang in [
                ("The keys are here.", "The keys is here.", "en"),
                ("Les clés sont ici.", "Les clés est ici.", "fr"),
            ]
        )
    )
    assert [task_file_format(p) for p in (blimp, ours, clams, multi)] == ["blimp", "crosslens", "clams", "multilingual"]
    (task,) = load_task_file(blimp).values()
    assert (task.name, task.pairs[0].clean, task.pairs[0].correct, task.pairs[0].wrong) == (
        "agr",
        "The keys",
        " are",
        " is",
    )
    assert load_task_file(ours)["ours"].pairs[0].wrong == " is"
    assert sorted(load_task_file(multi)) == ["multi_en", "multi_fr"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"good": "a", "bad": "b"}) + "\n")
    with pytest.raises(ValueError, match="neither sentence_good"):
        load_task_file(bad)


def test_skipping_invalid_lines_reaches_every_pairs_format(tmp_path):
    """on_invalid="skip" (`attribute --skip-invalid`) passes over a line that is not JSON in every
    JSON format, as it does in BLiMP files; without it the line is named; CLAMS labels take any case."""
    from crosslens.tasks.blimp import MinimalPairFormatError

    rows = {
        "multi.jsonl": [{"sentence_good": "The keys are here.", "sentence_bad": "The keys is here.", "language": "en"}],
        "ours.jsonl": [
            {"clean": "The keys", "correct": " are", "wrong": " is"},
            {"clean": "The keys", "correct": " are"},
        ],
    }
    for name, records in rows.items():
        path = tmp_path / name
        path.write_text('{"sentence_good": "broken\n' + "\n".join(json.dumps(r) for r in records) + "\n")
        with pytest.raises(MinimalPairFormatError, match=rf"{name}, line 1: not valid JSON"):
            load_task_file(path)
        (task,) = load_task_file(path, on_invalid="skip").values()
        assert len(task) == 1, name  # the broken line, and a pair missing a field, passed over
    clams = tmp_path / "lower.txt"
    clams.write_text("true\tThe keys are here .\nfalse\tThe keys is here .\n")
    assert task_file_format(clams) == "clams" and len(load_task_file(clams)["lower"]) == 1


def test_hook_names_are_checked_without_a_model():
    assert hook_problem("blocks.1.hook_resid_post", 2) is None
    assert hook_problem("blocks.0.attn.hook_z", None) is None
    assert hook_problem("hook_embed", 2) is None
    assert "blocks 0..1" in hook_problem("blocks.2.hook_resid_post", 2)
    assert "not a TransformerLens hook" in hook_problem("blocks.0.hook_resid", 2)


def test_heldout_rows_are_a_seeded_sample():
    tokens = torch.arange(40).view(20, 2)
    train, held = split_rows(tokens, 5, seed=0)
    assert len(train) == 15 and len(held) == 5
    assert sorted(torch.cat([train, held])[:, 0].tolist()) == tokens[:, 0].tolist()
    assert torch.equal(split_rows(tokens, 5, seed=0)[1], held)
    assert held[:, 0].tolist() != list(range(30, 40, 2))  # not simply the last rows
    assert len(split_rows(tokens, 0, seed=0)[1]) == 0


def test_report_sections_round_trip_through_json():
    import plotly.graph_objects as go

    from crosslens.htmlreport import Report

    section = Report("causal").add_heading("Task metric").add_table([{"a": 1.5}]).add_figure(go.Figure())
    restored = Report.from_dict(json.loads(json.dumps(section.to_dict())))
    assert restored.render() == section.render()
    merged = Report("main").add_figure(go.Figure()).extend(restored)
    assert 'id="figure-2"' in merged.render() and "Task metric" in merged.render()


# ---------------------------------------------------------------------------- figures a person reads
def _analysis():
    from crosslens.analysis import EvolutionAnalysis

    timelines = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 0.5, 1.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 0.0, 0.6, 1.0],
        [0.0, 0.4, 1.0, 0.5, 0.1, 0.0],
        [0.0, 0.0, 0.7, 1.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 0.0, 1.0, 1.0],
    ]
    direction = torch.nn.functional.normalize(
        torch.randn(len(timelines), 1, 8, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    W_dec = torch.tensor(timelines)[:, :, None] * direction
    return EvolutionAnalysis.from_decoder(W_dec, steps=[0, 10, 100, 1000, 10_000, 100_000])


def test_emergence_bars_have_a_visible_width_on_the_log_axis():
    from crosslens.analysis.plots import emergence_histogram

    fig = emergence_histogram(_analysis())
    assert fig.layout.xaxis.type == "log"
    bars = [bar for bar in fig.data if len(bar.x)]
    assert bars
    for bar in bars:  # each bar spans about the same fraction of a decade wherever it sits
        assert bar.width is not None and all(w == pytest.approx(0.3 * x) for x, w in zip(bar.x, bar.width))


def test_heatmap_shows_its_sort_by_emergence():
    from crosslens.analysis.plots import evolution_heatmap

    analysis = _analysis()
    fig = evolution_heatmap(analysis)
    staircase = next(trace for trace in fig.data if trace.type == "scatter")
    emergence = list(staircase.x)
    assert emergence == sorted(emergence) and len(set(emergence)) > 2  # a staircase, rising down the rows
    labels = list(fig.layout.yaxis.ticktext)
    steps = analysis.steps
    assert labels == [
        f"from {steps[e]}" if steps[e] < 1000 else f"from {steps[e] // 1000}k" for e in sorted(set(emergence))
    ]
