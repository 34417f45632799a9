"""The pico suite: grammar, tokenizer, build layout, caching, resume, and that the model learns."""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPTNeoXForCausalLM

import crosslens.pico.build as pico_build
from crosslens.core.hashing import weights_sha256
from crosslens.core.locks import lock_holder
from crosslens.pico import (
    PicoConfig,
    PicoGrammar,
    build_pico_suite,
    evaluate_pairs,
    format_eval_table,
    pico_suite,
    sample_documents,
)
from crosslens.pico.config import foreign_folder, is_built
from crosslens.pico.corpus import GrammarCorpus
from crosslens.pico.evals import check_targets, heldout_pairs
from crosslens.pico.tokenizer import word_level_tokenizer
from crosslens.pico.train import make_model, make_optimizer, train

GRAMMAR = PicoGrammar()


def tiny_config(**overrides) -> PicoConfig:
    """A model too small to learn much, for tests of the build machinery (a few seconds)."""
    settings = dict(
        d_model=32,
        n_heads=2,
        d_mlp=64,
        seq_len=16,
        batch_size=4,
        n_steps=15,
        log_checkpoints_until=1,
        checkpoint_every=1,
        n_eval_pairs=8,
        n_eval_sequences=2,
    )
    return PicoConfig(**{**settings, **overrides})


@pytest.fixture(scope="session")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small configuration, built once for the whole session."""
    return build_pico_suite(PicoConfig.small(), root=tmp_path_factory.mktemp("pico") / "small", progress=False)


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted build of the tiny configuration (a reference for rebuilds and resumes)."""
    return build_pico_suite(tiny_config(), root=tmp_path_factory.mktemp("pico") / "tiny", progress=False)


@pytest.fixture(scope="session")
def small_manifest(small_suite: Path) -> dict:
    return json.loads((small_suite / "suite.json").read_text())


# ---------------------------------------------------------------------------- grammar
def _noun_numbers(words: list[str]) -> list[bool]:
    """Number (True = plural) of each noun in ``words``, in order."""
    lex = GRAMMAR.lexicon
    forms = {form: bool(i) for pair in lex.animate_nouns + lex.thing_nouns for i, form in enumerate(pair)}
    return [forms[word] for word in words if word in forms]


@pytest.mark.parametrize("kind", ["pp", "rc"])
def test_attractor_pairs_put_the_other_number_next_to_the_verb(kind: str) -> None:
    pairs = GRAMMAR.agreement_pairs(kind, 200, seed=0)
    subject_numbers = {pair.meta["subject_plural"] for pair in pairs}
    assert subject_numbers == {True, False}
    for pair in pairs:
        nouns = _noun_numbers(pair.clean.split())
        assert len(nouns) == 2, pair.clean
        subject, attractor = nouns
        assert subject == pair.meta["subject_plural"]
        assert attractor == pair.meta["attractor_plural"] == (not subject)
        # The flipped prompt flips only the subject.
        assert _noun_numbers(pair.corrupted.split()) == [not subject, attractor]


def test_simple_pairs_and_verb_forms() -> None:
    lex = GRAMMAR.lexicon
    verb_pairs = lex.copulas + lex.intransitive_verbs + lex.transitive_verbs + lex.thing_verbs + (lex.possessive_verb,)
    pairs = GRAMMAR.agreement_pairs("simple", 100, seed=1)
    for pair in pairs:
        (plural,) = _noun_numbers(pair.clean.split())
        form = (pair.correct.strip(), pair.wrong.strip())
        assert form[:: -1 if plural else 1] in verb_pairs, pair
    assert GRAMMAR.agreement_pairs("simple", 20, seed=1) == pairs[:20]  # seeded
    assert [p.clean for p in GRAMMAR.agreement_pairs("simple", 20, seed=2)] != [p.clean for p in pairs[:20]]
    with pytest.raises(ValueError, match="agreement kind"):
        GRAMMAR.agreement_pairs("coordinated", 3, seed=0)  # type: ignore[arg-type]


def test_pairs_come_in_counterbalanced_twins() -> None:
    # Each twin swaps which form is correct, so a model blind to the cue scores exactly 50%.
    for kind in ("simple", "pp", "rc"):
        pairs = GRAMMAR.agreement_pairs(kind, 40, seed=5)
        for a, b in zip(pairs[::2], pairs[1::2]):
            assert (a.correct, a.wrong) == (b.wrong, b.correct)
            assert len(a.clean.split()) == len(b.clean.split()) and a.clean != b.clean
            assert a.meta["subject_plural"] != b.meta["subject_plural"]
    ioi = GRAMMAR.ioi_pairs(40, seed=5)
    for a, b in zip(ioi[::2], ioi[1::2]):
        assert (a.correct, a.wrong) == (b.wrong, b.correct)
        assert a.clean.split()[:-5] == b.clean.split()[:-5]  # same introduction, other name repeated


def test_training_text_has_both_attractor_numbers() -> None:
    rng = random.Random(0)
    congruent = [
        sentence.attractor_plural == sentence.subject_plural
        for sentence in (GRAMMAR.agreement_sentence(rng, "pp") for _ in range(400))
    ]
    assert 0.4 < sum(congruent) / len(congruent) < 0.6  # nearest-noun agreement is right only half the time


def test_ioi_pairs() -> None:
    names = set(GRAMMAR.lexicon.names)
    for pair in GRAMMAR.ioi_pairs(50, seed=0):
        io, subject = pair.correct.strip(), pair.wrong.strip()
        words = pair.clean.replace(",", " ").replace(".", " ").split()
        assert {io, subject} <= names and io != subject
        assert words.count(io) == 1 and words.count(subject) == 2  # the subject is the repeated name
        assert pair.clean.endswith(" to")
        corrupted = pair.corrupted.replace(",", " ").replace(".", " ").split()
        assert corrupted.count(subject) == 1 and len(corrupted) == len(words)


def test_documents_are_seeded_and_varied() -> None:
    docs = sample_documents(50, seed=3)
    assert docs == sample_documents(50, seed=3)
    assert docs != sample_documents(50, seed=4)
    text = " ".join(sample_documents(300, seed=0))
    for marker in (" that ", " and ", " to ", ","):  # relative clauses, coordination/IOI, PPs, IOI
        assert marker in text


# ---------------------------------------------------------------------------- tokenizer
def test_every_lexicon_word_is_one_token() -> None:
    tokenizer = word_level_tokenizer(GRAMMAR.vocabulary())
    unk = tokenizer.unk_token_id
    for word in GRAMMAR.lexicon.words():
        for text in (word, " " + word):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert len(ids) == 1 and ids[0] != unk, (text, ids)
    docs = sample_documents(500, seed=0)
    ids = [i for row in tokenizer(docs, add_special_tokens=False)["input_ids"] for i in row]
    assert unk not in ids
    assert tokenizer.encode("The dogs run.", add_special_tokens=False) == [
        tokenizer.convert_tokens_to_ids(t) for t in ("The", "dogs", "run", ".")
    ]
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_corpus_and_weights() -> None:
    config = tiny_config()
    tokenizer = word_level_tokenizer(GRAMMAR.vocabulary())

    def corpus(seed: int) -> GrammarCorpus:
        return GrammarCorpus(GRAMMAR, tokenizer, seq_len=32, batch_size=4, seed=seed)

    assert torch.equal(corpus(0).batch(5), corpus(0).batch(5))
    assert not torch.equal(corpus(0).batch(5), corpus(0).batch(6))
    assert not torch.equal(corpus(0).batch(5), corpus(1).batch(5))
    batch = corpus(0).batch(0)
    assert batch.shape == (4, 32) and bool((batch[:, 0] == tokenizer.eos_token_id).all())  # rows start with BOS
    heldout = corpus(0).heldout(4)
    assert not any(torch.equal(heldout, corpus(0).batch(step)) for step in range(3))

    def trained(seed: int) -> str:
        model = make_model(tiny_config(seed=seed), vocab_size=len(tokenizer))
        batches = corpus(seed).batch
        train(config, model, make_optimizer(config, model), batches, lambda step: None, progress=False)
        return weights_sha256(model)

    assert trained(0) == trained(0)
    assert trained(0) != trained(1)


def test_config_validation_names_the_fix() -> None:
    with pytest.raises(ValueError, match="raise n_steps or lower checkpoint_every"):
        PicoConfig(n_steps=100, checkpoint_every=50)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        PicoConfig(d_model=100, n_heads=3)
    assert PicoConfig(corpus=["a.txt"]).corpus == ("a.txt",)
    assert PicoConfig().config_hash() != PicoConfig(seed=1).config_hash()
    steps = PicoConfig().checkpoint_steps
    assert steps[:5] == (0, 1, 2, 4, 8) and len(steps) >= 16 and steps[-1] == PicoConfig().n_steps


# ---------------------------------------------------------------------------- the small suite
def test_layout(small_suite: Path, small_manifest: dict) -> None:
    config = PicoConfig.small()
    assert small_manifest["family"] == "local" and small_manifest["model_id"] == "crosslens/pico"
    snapshots = small_manifest["snapshots"]
    assert len(snapshots) >= 16
    assert [s["step"] for s in snapshots] == list(config.checkpoint_steps)
    assert all(s["tokens_seen"] == s["step"] * config.batch_size * config.seq_len for s in snapshots)
    for snapshot in snapshots:
        folder = small_suite / snapshot["revision"]
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / name).is_file(), folder / name
    hf_config = json.loads((small_suite / "step0" / "config.json").read_text())
    assert hf_config["architectures"] == ["GPTNeoXForCausalLM"]
    assert hf_config["use_parallel_residual"] is True and hf_config["hidden_size"] == config.d_model
    assert small_manifest["build"]["config_hash"] == config.config_hash()
    assert [row["step"] for row in small_manifest["evals"]] == list(config.checkpoint_steps)
    assert not (small_suite / "_build").exists()
    assert is_built(small_suite, config) and not is_built(small_suite, PicoConfig.small(seed=1))


def test_checkpoints_load_and_differ(small_suite: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(small_suite / "step0")
    assert tokenizer.encode(" runs", add_special_tokens=False) == [tokenizer.convert_tokens_to_ids("runs")]
    first = GPTNeoXForCausalLM.from_pretrained(small_suite / "step0")
    last = GPTNeoXForCausalLM.from_pretrained(small_suite / f"step{PicoConfig.small().n_steps}")
    assert weights_sha256(first) != weights_sha256(last)
    # A reloaded checkpoint reproduces the accuracy the build recorded for it.
    pairs = heldout_pairs(PicoConfig.small().n_eval_pairs, seed=PicoConfig.small().seed)["simple"]
    manifest = json.loads((small_suite / "suite.json").read_text())
    assert evaluate_pairs(last.eval(), tokenizer, pairs) == pytest.approx(manifest["evals"][-1]["simple"])


def test_the_small_model_learns_in_phases(small_manifest: dict) -> None:
    rows = small_manifest["evals"]
    first, last = rows[0], rows[-1]
    for task in ("simple", "pp", "rc", "ioi"):
        assert 0.3 <= first[task] <= 0.7, (task, first[task])  # chance at initialisation
    assert last["simple"] >= 0.9
    assert last["loss"] < first["loss"] - 2.0
    # First the verb agrees with the nearest noun: simple agreement is right, attractors mostly wrong ...
    phase = [row for row in rows if row["simple"] >= 0.8 and row["pp"] <= 0.3]
    assert phase, format_eval_table(rows)
    # ... then with the true subject.
    assert last["pp"] >= 0.75 and last["rc"] >= 0.75, format_eval_table(rows)
    simple_at = next(row["step"] for row in rows if row["simple"] >= 0.9)
    attractor_at = next(row["step"] for row in rows if row["pp"] >= 0.75 and row["rc"] >= 0.75)
    assert simple_at < attractor_at and phase[-1]["step"] < attractor_at
    flagged = [line for line in format_eval_table(rows).splitlines() if "nearest noun" in line]
    assert len(flagged) == len([row for row in rows if row["simple"] >= 0.8 and row["nearest_noun"] > 0.5])


def test_second_call_is_cached(small_suite: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {path: path.stat().st_mtime_ns for path in small_suite.rglob("*")}

    def no_training(*args, **kwargs):
        raise AssertionError("a cached suite was trained again")

    monkeypatch.setattr(pico_build, "train", no_training)
    assert build_pico_suite(PicoConfig.small(), root=small_suite, progress=False) == small_suite
    assert {path: path.stat().st_mtime_ns for path in small_suite.rglob("*")} == before


# ---------------------------------------------------------------------------- rebuilds and resume
def test_force_rebuilds_and_other_configs_are_refused(tiny_suite: Path, tmp_path: Path) -> None:
    root = tmp_path / "suite"
    shutil.copytree(tiny_suite, root)
    config = tiny_config()
    first = (root / "suite.json").stat().st_mtime_ns
    threads = torch.get_num_threads()
    build_pico_suite(config, root=root, force=True, progress=False, threads=2)
    assert torch.get_num_threads() == threads  # the build's thread count does not leak out
    assert (root / "suite.json").stat().st_mtime_ns != first
    assert is_built(root, config)
    with pytest.raises(ValueError, match="force=True"):
        build_pico_suite(tiny_config(seed=1), root=root, progress=False)
    foreign = tmp_path / "not-a-suite"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="empty or new folder"):
        build_pico_suite(config, root=foreign, force=True, progress=False)
    assert (foreign / "notes.txt").exists()


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def _write_local_suite_of_ones_own(root: Path) -> dict[str, bytes]:
    """A complete-looking local checkpoint suite a user wrote (no pico build record), plus notes;
    returns its files' bytes."""
    (root / "step0").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (root / "step0" / name).write_text("{}")
    snapshots = [{"revision": "step0", "step": 0}]
    (root / "suite.json").write_text(json.dumps({"model_id": "me/model", "snapshots": snapshots}))
    (root / "NOTES.txt").write_text("keep me")
    return _files(root)


def test_force_never_deletes_a_suite_it_did_not_build(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    before = _write_local_suite_of_ones_own(root)
    for force in (False, True):
        with pytest.raises(ValueError, match="empty or new folder"):
            build_pico_suite(tiny_config(), root=root, force=force, progress=False)
        assert _files(root) == before
    assert not is_built(root)  # a suite.json without a pico build record is not a pico suite
    # Nor one that only borrows the pico model id.
    (root / "suite.json").write_text(json.dumps({"model_id": "crosslens/pico", "snapshots": []}))
    with pytest.raises(ValueError, match="empty or new folder"):
        build_pico_suite(tiny_config(), root=root, force=True, progress=False)
    assert (root / "NOTES.txt").read_text() == "keep me"


def test_a_build_stopped_before_its_first_state_is_its_own_not_a_foreign_folder(tmp_path: Path) -> None:
    """Killed after it made its state folder but before the first state landed, a build leaves step0/ and
    _build/state.pt.partial: that root is the build's own to resume or rebuild, never refused as another's."""
    root = tmp_path / "stopped"
    (root / "step0").mkdir(parents=True)
    (root / "_build").mkdir()
    (root / "_build" / "state.pt.partial").write_bytes(b"half")
    assert not foreign_folder(root)
    (root / "_build" / "state.pt.partial").unlink()
    (root / "_build").rmdir()
    assert foreign_folder(root)  # step0/ alone: no sign of a build


def test_a_refused_or_failed_forced_rebuild_keeps_the_old_suite(
    tiny_suite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "suite"
    shutil.copytree(tiny_suite, root)
    before = _files(root)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="hold no text"):  # refused input: nothing is touched
        build_pico_suite(tiny_config(corpus=[str(empty)]), root=root, force=True, progress=False)
    assert _files(root) == before

    def broken_training(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pico_build, "train", broken_training)
    with pytest.raises(RuntimeError, match="disk full"):  # a rebuild that fails halfway
        build_pico_suite(tiny_config(seed=1), root=root, force=True, progress=False)
    assert _files(root) == before and is_built(root, tiny_config())
    assert sorted(path.name for path in tmp_path.iterdir()) == [".suite.lock", "empty.txt", "suite"]
    assert lock_holder(tmp_path / ".suite.lock") is None  # the file stays, its flock is released: no next build waits


def test_interrupted_build_resumes_to_the_same_weights(
    tiny_suite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, reference = tiny_config(), tiny_suite

    real_save = pico_build._save_checkpoint
    saved: list[str] = []

    def crash_after_ten(model, tokenizer, folder):
        if len(saved) == 10:
            raise KeyboardInterrupt
        real_save(model, tokenizer, folder)
        saved.append(folder.name)

    monkeypatch.setattr(pico_build, "_save_checkpoint", crash_after_ten)
    root = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_pico_suite(config, root=root, progress=False)
    assert not is_built(root, config)  # an interrupted build never looks complete
    monkeypatch.setattr(pico_build, "_save_checkpoint", real_save)
    build_pico_suite(config, root=root, progress=False)
    manifest = json.loads((root / "suite.json").read_text())
    assert manifest["build"]["resumed_from_step"] == config.checkpoint_steps[9]
    reference_rows = json.loads((reference / "suite.json").read_text())["evals"]
    assert [row["step"] for row in manifest["evals"]] == [row["step"] for row in reference_rows]
    last = f"step{config.n_steps}"
    assert weights_sha256(GPTNeoXForCausalLM.from_pretrained(root / last)) == weights_sha256(
        GPTNeoXForCausalLM.from_pretrained(reference / last)
    )


def test_concurrent_builds_of_one_root_wait_for_each_other(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    root = tmp_path / "suite"
    results: list[Path] = []
    with open(tmp_path / ".suite.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as if another process were building this root
        worker = threading.Thread(target=lambda: results.append(build_pico_suite(tiny_config(), root, progress=False)))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not (root / "suite.json").exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(timeout=120)
    assert results == [root] and is_built(root, tiny_config())


# ---------------------------------------------------------------------------- user corpora
def test_user_text_corpus_trains_a_bpe_tokenizer(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(sample_documents(400, seed=11)))
    config = tiny_config(corpus=[str(corpus)], bpe_vocab_size=300)
    root = build_pico_suite(config, root=tmp_path / "user", progress=False)
    manifest = json.loads((root / "suite.json").read_text())
    assert manifest["build"]["vocab_size"] == 300
    # With only 300 tokens most words split: the probes are scored by summed continuation
    # log-probability instead of being skipped.
    assert not manifest["build"]["notes"] and all(row["loss"] > 0 for row in manifest["evals"])
    assert all(row[task] is not None for row in manifest["evals"] for task in ("simple", "pp", "rc", "ioi"))
    tokenizer = AutoTokenizer.from_pretrained(root / "step0")
    assert tokenizer.decode(tokenizer.encode("The dogs run.", add_special_tokens=False)) == "The dogs run."
    # Changing the file's contents changes the build.
    before = config.config_hash()
    corpus.write_text("something else entirely\n\nand more")
    assert tiny_config(corpus=[str(corpus)], bpe_vocab_size=300).config_hash() != before


def test_user_dataset_corpus(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": sample_documents(300, seed=12)}).save_to_disk(str(folder))
    config = tiny_config(corpus=f"dataset:{folder}:body", bpe_vocab_size=2000)
    root = build_pico_suite(config, root=tmp_path / "user", progress=False)
    assert is_built(root, config)
    with pytest.raises(ValueError, match="no column"):
        build_pico_suite(tiny_config(corpus=f"dataset:{folder}:text"), root=tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="dataset:NAME:COLUMN"):
        build_pico_suite(tiny_config(corpus="corpus.txt"), root=tmp_path / "bad2", progress=False)


# ---------------------------------------------------------------------------- targets, HookedTransformer
def test_check_targets_reads_the_phases() -> None:
    def row(step, simple, pp, rc):
        return {
            "step": step,
            "tokens_seen": step,
            "loss": 1.0,
            "simple": simple,
            "pp": pp,
            "rc": rc,
            "ioi": 0.5,
            "nearest_noun": 1 - (pp + rc) / 2,
        }

    rows = [row(0, 0.5, 0.5, 0.5), row(10, 0.97, 0.2, 0.3), row(20, 0.99, 0.8, 0.9), row(30, 0.99, 0.97, 0.96)]
    targets = check_targets(rows)
    assert targets["met"] and targets["simple_learned_at"] == 10 and targets["attractor_learned_at"] == 30
    assert targets["nearest_noun_phase_steps"] == [10]
    assert "agrees with the nearest noun" in format_eval_table(rows).splitlines()[3]
    assert not check_targets(rows[:3])["met"]


def test_evaluate_pairs_on_a_hooked_transformer(small_suite: Path, tmp_path: Path) -> None:
    suite = pico_suite(PicoConfig.small(), root=small_suite)
    assert [s.step for s in suite.snapshots] == list(PicoConfig.small().checkpoint_steps)
    with pytest.raises(FileNotFoundError, match="crosslens suite build"):
        pico_suite(PicoConfig.small(), root=tmp_path / "missing", build_if_missing=False)
    hooked = suite.load(len(suite) - 1)
    pairs = heldout_pairs(PicoConfig.small().n_eval_pairs, seed=PicoConfig.small().seed)["simple"]
    manifest = json.loads((small_suite / "suite.json").read_text())
    assert evaluate_pairs(hooked, suite.tokenizer(), pairs) == pytest.approx(manifest["evals"][-1]["simple"], abs=0.02)


def test_the_targets_printout_says_a_never_reached_accuracy_in_words():
    from crosslens.pico.evals import format_targets

    targets = {
        "chance_at_step0": True,
        "simple_before_attractor": True,
        "simple_learned_at": 96,
        "attractor_learned_at": None,
        "final_agreement_learned": False,
        "nearest_noun_phase_steps": [],
    }
    line = format_targets(targets).splitlines()[1]
    assert line == "[ok  ] simple agreement reaches 95% at step 96, attractor agreement (pp and rc) at no checkpoint"
