"""crosslens.tasks: minimal pairs, generators, tokenization checks, BLiMP/CLAMS loaders."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from crosslens.tasks import (
    MinimalPair,
    MinimalPairFormatError,
    TaskDataset,
    TaskTokenizationError,
    get_task,
    list_tasks,
    load_blimp_jsonl,
    load_clams,
    load_pairs_jsonl,
)
from crosslens.tasks import agreement as lexicon
from crosslens.tasks import ioi as ioi_lexicon
from crosslens.tasks.agreement import agreement_pairs
from crosslens.tasks.blimp import pair_from_sentences
from crosslens.tasks.ioi import ioi_pairs


def word_tokenizer(extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """One token per word of the shipped generators' lexicon (punctuation split off)."""
    words = ["<bos>", "<pad>", "<unk>", "The", "the", "that", ",", ".", "a", "to", "and", *extra]
    for pair in lexicon.SUBJECT_NOUNS + lexicon.PLACE_NOUNS + lexicon.AGREEING_VERBS:
        words += list(pair)
    words += [*lexicon.ADJECTIVES, *lexicon.PREPOSITIONS, *lexicon.CLAUSE_VERBS]
    vocab = {word: index for index, word in enumerate(dict.fromkeys(words))}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


# ---------------------------------------------------------------------------- MinimalPair
def test_minimal_pair_rejects_blank_or_equal_continuations():
    with pytest.raises(ValueError, match="non-blank"):
        MinimalPair(clean="The dog", correct=" ", wrong=" is")
    with pytest.raises(ValueError, match="two different continuations"):
        MinimalPair(clean="The dog", correct=" is", wrong=" is")


def test_task_dataset_needs_all_or_no_corrupted_prompts():
    pairs = (
        MinimalPair("The pilot", " is", " are", corrupted="The pilots"),
        MinimalPair("The pilots", " are", " is"),
    )
    with pytest.raises(ValueError, match="1 of 2 examples have a corrupted"):
        TaskDataset(name="mixed", pairs=pairs)
    with pytest.raises(ValueError, match="no examples"):
        TaskDataset(name="empty", pairs=())


# ---------------------------------------------------------------------------- generators
@pytest.mark.parametrize("kind", ["simple", "pp", "rc"])
def test_agreement_pairs_flip_subject_number_and_verb(kind):
    task = agreement_pairs(kind, n=40, seed=3)
    assert task.name == f"agreement_{kind}" and len(task) == 40
    assert len({(p.clean, p.correct, p.wrong) for p in task}) == 40  # distinct examples
    singular = {s for s, _ in lexicon.SUBJECT_NOUNS}
    plural = {p for _, p in lexicon.SUBJECT_NOUNS}
    verbs = dict(lexicon.AGREEING_VERBS)
    for pair in task:
        subject = pair.clean.split()[2 if pair.clean.split()[1] in lexicon.ADJECTIVES else 1]
        flipped = pair.corrupted.split()[pair.clean.split().index(subject)]
        is_plural = pair.meta["subject_plural"]
        assert subject in (plural if is_plural else singular)
        assert flipped in (singular if is_plural else plural)
        # Only the subject changes between clean and corrupted.
        assert pair.clean.replace(subject, flipped, 1) == pair.corrupted
        singular_verb = pair.correct.strip() if not is_plural else pair.wrong.strip()
        assert verbs[singular_verb] == (pair.wrong if not is_plural else pair.correct).strip()
        if kind != "simple":
            assert pair.meta["attractor_plural"] is not is_plural  # attractors mismatch by default
    if kind == "rc":
        assert all(" that the " in p.clean for p in task)


def test_generators_are_reproducible_and_bounded():
    assert agreement_pairs("pp", n=10, seed=1).pairs == agreement_pairs("pp", n=10, seed=1).pairs
    assert agreement_pairs("pp", n=10, seed=1).pairs != agreement_pairs("pp", n=10, seed=2).pairs
    with pytest.raises(ValueError, match="distinct examples"):
        agreement_pairs("simple", n=800)  # the simple template space holds 768
    with pytest.raises(ValueError, match="'simple', 'pp' or 'rc'"):
        agreement_pairs("object", n=3)  # type: ignore[arg-type]


def test_ioi_pairs_repeat_the_subject_and_corrupt_the_repeat():
    task = ioi_pairs(n=30, seed=0)
    for pair in task:
        io, subject = pair.correct.strip(), pair.wrong.strip()
        words = pair.clean.replace(",", " ").replace(".", " ").split()
        assert words.count(io) == 1 and words.count(subject) == 2
        corrupted = pair.corrupted.replace(",", " ").replace(".", " ").split()
        assert corrupted.count(subject) == 1 and corrupted.count(io) == 1
        third = [w for w in corrupted if w in ioi_lexicon.NAMES and w not in (io, subject)]
        assert len(third) == 1
    assert {p.meta["order"] for p in task} == {"ABBA", "BABA"}


def test_task_for_tokenizer_falls_back_to_the_pico_grammar():
    from crosslens.pico.tokenizer import word_level_tokenizer
    from crosslens.tasks import task_for_tokenizer

    # a vocabulary with exactly the words of six pico probes: the English task does not fit it
    pico_pairs = get_task("pico_agreement_pp", n=6, seed=0)
    words = {w for p in pico_pairs for text in (p.clean, p.corrupted, p.correct, p.wrong) for w in text.split()}
    small_tokenizer = word_level_tokenizer(words)
    with pytest.warns(UserWarning, match="using 'pico_agreement_pp'"):
        task = task_for_tokenizer("agreement_pp", small_tokenizer, n=6)
    assert task.name == "pico_agreement_pp" and task.pairs == pico_pairs.pairs
    assert task_for_tokenizer("agreement_pp", word_tokenizer(), n=6).name == "agreement_pp"


def test_pairs_longer_than_the_models_context_are_dropped_with_a_warning():
    """`crosslens attribute` kept a pair longer than the model's context (the flag's help says pairs
    that cannot be scored are dropped with a warning) and the stage refused the whole run over it."""
    from crosslens.causal.sections import _task_dataset
    from crosslens.tasks import task_for_tokenizer

    tokenizer = word_tokenizer()
    long = " ".join(["The pilot near the towers"] * 6)  # 30 words: over a context of 24
    pairs = TaskDataset("pairs", (MinimalPair("The pilot", " is", " are"), MinimalPair(long, " is", " are")))
    with pytest.warns(
        UserWarning, match=r"kept 1 of 2 pairs the models can score; .*more than the model's context of 24"
    ):
        kept = _task_dataset(pairs, tokenizer, 64, 0, 24)
    assert kept.pairs == pairs.pairs[:1]
    kept.tokenize(tokenizer, max_tokens=24)
    assert _task_dataset(pairs, tokenizer, 64, 0, None).pairs == pairs.pairs  # no context known: nothing is dropped
    lengths = {1 + len(tokenizer(p.clean + p.correct)["input_ids"]) for p in get_task("agreement_rc", n=8)}
    assert lengths == {8}  # BOS + prompt + continuation, every pair
    assert len(task_for_tokenizer("agreement_rc", tokenizer, n=8, max_tokens=8)) == 8
    with pytest.raises(
        TaskTokenizationError, match=r"BOS \+ prompt \+ continuation is 8 tokens, more than the model's context of 7"
    ):
        task_for_tokenizer("agreement_rc", tokenizer, n=8, max_tokens=7)


def test_get_task_registry():
    assert {"agreement_simple", "agreement_pp", "agreement_rc", "ioi"} <= set(list_tasks())
    assert get_task("ioi", n=5, seed=2).pairs == ioi_pairs(n=5, seed=2).pairs
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")


def test_pico_tasks_are_single_pico_tokens():
    from crosslens.pico.tokenizer import word_level_tokenizer
    from crosslens.tasks.grammar import PicoGrammar

    pico_tokenizer = word_level_tokenizer(PicoGrammar().vocabulary())
    for name in ("pico_agreement_simple", "pico_agreement_pp", "pico_agreement_rc", "pico_ioi"):
        task = get_task(name, n=8, seed=0)
        assert task.name == name and len(task) == 8 and task.has_corrupted
        task.check_tokenizer(pico_tokenizer)


# ---------------------------------------------------------------------------- tokenization
def test_tokenize_right_pads_and_marks_last_position(tokenizer):
    task = agreement_pairs("simple", n=12, seed=0)
    tokenized = task.tokenize(tokenizer)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    lengths = torch.tensor([1 + len(p.clean.split()) for p in task])
    assert torch.equal(tokenized.last_pos, lengths - 1)
    assert tokenized.clean_tokens.shape == (12, int(lengths.max()))
    assert bool((tokenized.clean_tokens[:, 0] == bos).all())
    for row, pair in enumerate(task):
        ids = tokenizer(pair.clean, add_special_tokens=False)["input_ids"]
        assert tokenized.clean_tokens[row, 1 : 1 + len(ids)].tolist() == ids
        assert bool((tokenized.clean_tokens[row, 1 + len(ids) :] == pad).all())
        assert tokenized.correct_ids[row] == tokenizer.convert_tokens_to_ids(pair.correct.strip())
        assert tokenized.wrong_ids[row] == tokenizer.convert_tokens_to_ids(pair.wrong.strip())
    assert torch.equal(tokenized.mask.sum(1), lengths)
    feature_positions = tokenized.feature_mask()
    assert not bool(feature_positions[:, 0].any()) and torch.equal(feature_positions.sum(1), lengths - 1)
    sub = tokenized[[0, 3]]
    assert len(sub) == 2 and sub.clean_tokens.shape[1] == int(lengths[[0, 3]].max())


def test_check_tokenizer_names_the_offending_example(tokenizer):
    good = MinimalPair("The pilot", " is", " are")
    multi = MinimalPair("The pilots", " aren't", " isn't")
    task = TaskDataset(name="contractions", pairs=(good, multi))
    # several tokens are fine, but these three are the unknown token
    with pytest.raises(
        TaskTokenizationError, match=r"example 1 \(clean='The pilots'\).*3 tokens, 3 of them the unknown"
    ):
        task.check_tokenizer(tokenizer)
    unknown = TaskDataset(name="unknown", pairs=(MinimalPair("The pilot", " sings", " sing"),))
    with pytest.raises(TaskTokenizationError, match="unknown token"):
        unknown.check_tokenizer(tokenizer)
    unknown_prompt = TaskDataset(name="unknown_prompt", pairs=(MinimalPair("The astronaut", " is", " are"),))
    with pytest.raises(TaskTokenizationError, match="outside the vocabulary"):
        unknown_prompt.check_tokenizer(tokenizer)
    ragged = TaskDataset(name="ragged", pairs=(MinimalPair("The pilot", " is", " are", corrupted="The old pilots"),))
    with pytest.raises(TaskTokenizationError, match="positions must line up"):
        ragged.tokenize(tokenizer)
    kept = task.filter_tokenizable(tokenizer)
    assert kept.pairs == (good,)


def test_shipped_tasks_tokenize_with_their_lexicon(tokenizer):
    for kind in ("simple", "pp", "rc"):
        tokenized = agreement_pairs(kind, n=16, seed=0).tokenize(tokenizer)
        assert tokenized.corrupted_tokens.shape == tokenized.clean_tokens.shape
        assert bool((tokenized.correct_ids != tokenized.wrong_ids).all())
    ioi_tokenizer = word_tokenizer(
        ioi_lexicon.NAMES
        + ioi_lexicon.PLACES
        + ioi_lexicon.OBJECTS
        + (
            "When",
            "After",
            "While",
            "Then",
            "went",
            "arrived",
            "at",
            "were",
            "walked",
            "into",
            "gave",
            "handed",
            "passed",
            "offered",
            "threw",
            "met",
        )
    )
    ioi_pairs(n=16).check_tokenizer(ioi_tokenizer)


# ---------------------------------------------------------------------------- loaders
def test_pair_from_sentences_uses_the_first_differing_word():
    pair = pair_from_sentences("The keys to the cabinet are on the table.", "The keys to the cabinet is on the table.")
    assert (pair.clean, pair.correct, pair.wrong) == ("The keys to the cabinet", " are", " is")
    assert pair.meta["suffix_identical"] is True
    reorder = pair_from_sentences("Who did John see?", "Who John did see?")
    assert (reorder.clean, reorder.correct, reorder.wrong) == ("Who", " did", " John")
    assert reorder.meta["suffix_identical"] is False
    punct = pair_from_sentences("Ann left, and Bo stayed.", "Ann left and Bo stayed.")
    assert (punct.clean, punct.correct, punct.wrong) == ("Ann left", ",", " and")
    with pytest.raises(MinimalPairFormatError, match="same words"):
        pair_from_sentences("A dog ran.", "A  dog ran.")
    with pytest.raises(MinimalPairFormatError, match="word prefix"):
        pair_from_sentences("A dog ran.", "A dog ran. Then.")


def _write_blimp(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_blimp_jsonl_loader(tmp_path, tokenizer):
    rows = [
        {
            "sentence_good": "The pilots near the tower are tired.",
            "sentence_bad": "The pilots near the tower is tired.",
            "UID": "agreement_pp",
            "pairID": "0",
        },
        {
            "sentence_good": "The nurse was busy.",
            "sentence_bad": "The nurse were busy.",
            "UID": "agreement_pp",
            "pairID": "1",
        },
        {
            "sentence_good": "The nurse was busy.",
            "sentence_bad": "The nurse was busy.",
            "UID": "agreement_pp",
            "pairID": "2",
        },
    ]
    path = _write_blimp(tmp_path / "regular_agreement.jsonl", rows)
    with pytest.raises(MinimalPairFormatError, match=r"regular_agreement.jsonl, line 3: .*same words"):
        load_blimp_jsonl(path)
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        task = load_blimp_jsonl(path, on_invalid="skip")
    assert task.name == "regular_agreement" and len(task) == 2 and not task.has_corrupted
    first = task[0]
    assert (first.clean, first.correct, first.wrong) == ("The pilots near the tower", " are", " is")
    assert first.meta["UID"] == "agreement_pp" and first.meta["pairID"] == "0" and first.meta["line"] == 1
    tokenized = task.tokenize(tokenizer)
    assert tokenized.corrupted_tokens is None and len(tokenized) == 2
    assert len(load_blimp_jsonl(path, on_invalid="skip", limit=1)) == 1

    renamed = _write_blimp(
        tmp_path / "other.jsonl", [{"sen": "The nurse was busy.", "wrong_sen": "The nurse were busy."}]
    )
    with pytest.raises(MinimalPairFormatError, match="pass good_key=/bad_key="):
        load_blimp_jsonl(renamed)
    assert load_blimp_jsonl(renamed, good_key="sen", bad_key="wrong_sen")[0].wrong == " were"


def test_blimp_loader_checks_tokens_when_given_a_tokenizer(tmp_path, tokenizer):
    rows = [
        {"sentence_good": "The pilot is tired.", "sentence_bad": "The pilot are tired."},
        {"sentence_good": "The pilot isn't tired.", "sentence_bad": "The pilot aren't tired."},
    ]
    path = _write_blimp(tmp_path / "tokens.jsonl", rows)
    with pytest.raises(TaskTokenizationError, match="line 2"):
        load_blimp_jsonl(path, tokenizer=tokenizer)
    with pytest.warns(UserWarning):
        assert len(load_blimp_jsonl(path, tokenizer=tokenizer, on_invalid="skip")) == 1


def test_clams_loader(tmp_path):
    path = tmp_path / "simple_agrmt.txt"
    path.write_text(
        "# comment\n"
        "True\tthe author laughs\n"
        "False\tthe author laugh\n"
        "\n"
        "True\tthe authors laugh\n"
        "False\tthe authors laughs\n"
        "False\tthe authors laughing\n"
    )
    task = load_clams(path)
    assert task.name == "simple_agrmt" and len(task) == 3
    assert [(p.clean, p.correct, p.wrong) for p in task] == [
        ("the author", " laughs", " laugh"),
        ("the authors", " laugh", " laughs"),
        ("the authors", " laugh", " laughing"),
    ]
    assert task[2].meta["good_line"] == 5 and task[2].meta["line"] == 7
    orphan = tmp_path / "orphan.txt"
    orphan.write_text("False\tthe author laugh\nTrue\tthe author laughs\n")
    with pytest.raises(MinimalPairFormatError, match="line 1: an ungrammatical"):
        load_clams(orphan)
    bad_label = tmp_path / "bad.txt"
    bad_label.write_text("yes the author laughs\n")
    with pytest.raises(MinimalPairFormatError, match="expected 'True<TAB>sentence'"):
        load_clams(bad_label)


def test_crosslens_jsonl_round_trip(tmp_path):
    task = agreement_pairs("rc", n=5, seed=4)
    path = task.to_jsonl(tmp_path / "rc.jsonl")
    loaded = load_pairs_jsonl(path)
    assert loaded.name == "rc" and loaded.pairs == task.pairs
    assert [p.meta for p in loaded] == [p.meta for p in task]


# ---------------------------------------------------------------------------- multi-token continuations
@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE trained on the pico grammar: words outside it split into pieces."""
    from crosslens.pico import sample_documents
    from crosslens.pico.tokenizer import train_tokenizer

    return train_tokenizer(sample_documents(200, seed=1), 300)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_tokenize_keeps_each_continuations_tokens():
    pairs = (
        MinimalPair("The pilot", " is", " are"),
        MinimalPair("The pilots near the tower", " are tired", " is"),
        MinimalPair("The pilot", " was very tired", " were tired"),  # "very": an extra word of the vocabulary
    )
    tokenizer = word_tokenizer(extra=("very",))
    task = TaskDataset(name="mixed", pairs=pairs)
    task.check_tokenizer(tokenizer)  # several tokens are no problem
    tokenized = task.tokenize(tokenizer)
    assert tokenized.multi_token and tokenized.continuation_lengths.tolist() == [[1, 1], [2, 1], [3, 2]]
    ids = tokenizer.convert_tokens_to_ids
    assert tokenized.continuation_tokens[2, 0].tolist() == ids(["was", "very", "tired"])
    assert tokenized.continuation_tokens[1, 1].tolist() == [ids("is")] + [tokenizer.pad_token_id] * 2
    assert tokenized.correct_ids.tolist() == ids(["is", "are", "was"])  # the first token of each
    assert tokenized.wrong_ids.tolist() == ids(["are", "is", "were"])
    # row selection keeps the task's scoring (one-token rows of a multi-token task stay on its path)
    first = tokenized[[0]]
    assert first.multi_token and first.continuation_tokens.shape == (1, 2, 1)
    one_token = TaskDataset(name="one", pairs=pairs[:1]).tokenize(tokenizer)
    assert not one_token.multi_token and one_token.continuation_tokens.shape == (1, 2, 1)


def test_unscorable_examples_are_refused_naming_the_fix(tokenizer):
    from tokenizers import normalizers

    merged = TaskDataset(
        name="merged", pairs=(MinimalPair("The pilot", " is", " are"), MinimalPair("Th", "e pilot is", "e pilots"))
    )
    with pytest.raises(
        TaskTokenizationError,
        match=r"example 1 \(clean='Th'\): correct continuation 'e pilot is' merges with "
        r"the end of the prompt.*start the continuation with its leading space",
    ):
        merged.check_tokenizer(word_tokenizer(extra=("Th",)))
    assert merged.filter_tokenizable(word_tokenizer(extra=("Th",))).pairs == merged.pairs[:1]
    assert list(merged.problems(word_tokenizer(extra=("Th",)))) == [1]

    def normalized(normalizer) -> PreTrainedTokenizerFast:
        inner = word_tokenizer()._tokenizer
        inner.normalizer = normalizer
        return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")

    dropped = TaskDataset(name="dropped", pairs=(MinimalPair("The pilot", " ~", " is"),))
    with pytest.raises(
        TaskTokenizationError, match=r"correct continuation ' ~' tokenizes to no tokens after the prompt.*pick a"
    ):
        dropped.tokenize(normalized(normalizers.Replace("~", "")))
    same = TaskDataset(name="same", pairs=(MinimalPair("the pilot", " Is", " is"),))
    with pytest.raises(TaskTokenizationError, match=r"tokenize to the same tokens.*cannot tell them apart"):
        same.check_tokenizer(normalized(normalizers.Lowercase()))
    with pytest.raises(TaskTokenizationError, match="no example of task 'same' can be scored.*cannot tell them apart"):
        same.filter_tokenizable(normalized(normalizers.Lowercase()))


def test_loaders_keep_multi_token_pairs(tmp_path, bpe):
    sentences = [
        ("The pilots sleep.", "The pilots sleeps."),
        ("The astronaut near the volcanoes is tired.", "The astronaut near the volcanoes are tired."),
        ("The dogs walk.", "The dogs walks."),
    ]
    path = _write_blimp(tmp_path / "bpe.jsonl", [{"sentence_good": g, "sentence_bad": b} for g, b in sentences])
    task = load_blimp_jsonl(path, tokenizer=bpe)  # no pair dropped, none refused
    assert len(task) == 3
    assert n_tokens(bpe, " sleep") > 1 and n_tokens(bpe, " sleeps") > 1  # multi-token words the grammar lacks
    assert task.filter_tokenizable(bpe).pairs == task.pairs
    tokenized = task.tokenize(bpe)
    assert tokenized.multi_token
    for row, pair in enumerate(task):
        for side, text in enumerate((pair.correct, pair.wrong)):
            assert tokenized.continuation_lengths[row, side] == n_tokens(bpe, text)
    clams = tmp_path / "bpe.txt"
    clams.write_text("".join(f"True\t{g}\nFalse\t{b}\n" for g, b in sentences))
    clams_task = load_clams(clams, tokenizer=bpe)
    assert [(p.clean, p.correct, p.wrong) for p in clams_task] == [(p.clean, p.correct, p.wrong) for p in task]


def test_shipped_task_on_a_bpe_tokenizer_keeps_its_multi_token_examples(bpe):
    from crosslens.tasks import task_for_tokenizer

    # the English agreement task's words are not in the grammar: BPE pieces, several per word.
    # Only pairs whose corrupted prompt has another token count are dropped (patching needs them aligned).
    with pytest.warns(UserWarning, match=r"kept 9 of 12 .*positions must line up"):
        task = task_for_tokenizer("agreement_pp", bpe, n=12)
    assert task.name == "agreement_pp"
    tokenized = task.tokenize(bpe)
    assert tokenized.multi_token and int((tokenized.continuation_lengths > 1).any(1).sum()) >= 5
