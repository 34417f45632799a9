"""Model families as users meet them today, offline: OLMo-2 and OLMo-3 with stage-aware
revisions, BLOOM intermediates without a tokenizer, and multilingual tasks.

Tiny random models are served under the real repo names from a fake Hugging Face cache."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import torch
from hf_cache import (
    make_word_tokenizer,
    offline_hf_home_at,
    tiny_bloom,
    tiny_olmo2,
    tiny_olmo3,
    write_fake_hub_repo,
)
from tiny_crosscoders import random_crosscoder
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import crosslens.checkpoints.suite_tokenizer as suite_tokenizer
from crosslens.checkpoints import CheckpointSuite, MixedIngredientsError, list_revisions
from crosslens.checkpoints.hub import remember_stage_ends
from crosslens.checkpoints.trajectory import (
    group_by_stage,
    parse_ingredient,
    parse_stage,
    place_on_trajectory,
)
from crosslens.cli import main
from crosslens.cli.common import CLIError, resolve_suite
from crosslens.core.errors import CrosslensError, UnknownRevisionError
from crosslens.tasks import (
    MinimalPairFormatError,
    get_task,
    load_blimp_jsonl,
    load_multilingual_blimp,
    multilingual_agreement,
    multilingual_tasks,
)
from crosslens.tasks.blimp import languages_in

OLMO2_REPO = "allenai/OLMo-2-0425-1B"
OLMO3_REPO = "allenai/Olmo-3-1025-7B"
BLOOM_INTERMEDIATE = "bigscience/bloom-1b1-intermediate"
BLOOM_BASE = "bigscience/bloom-1b1"
TOKENS = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11], [20, 21, 3, 30, 31, 40, 41, 50, 12]])

# Stage 1 sees 3B tokens per 1000 steps; stage 2 restarts both counts, once per ingredient.
OLMO2_REVISIONS = (
    "stage1-step0-tokens0B",
    "stage1-step1000-tokens3B",
    "stage1-step2000-tokens6B",
    "stage2-ingredient1-step1000-tokens3B",
    "stage2-ingredient1-step2000-tokens6B",
    "stage2-ingredient2-step1000-tokens3B",
)


@pytest.fixture(scope="module")
def _family_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    hf_home = tmp_path_factory.mktemp("families_hf_home")
    tokenizer = make_word_tokenizer()
    fakes = {
        OLMO2_REPO: {r: tiny_olmo2(seed=i) for i, r in enumerate(OLMO2_REVISIONS)},
        OLMO3_REPO: {
            r: tiny_olmo3(seed=10 + i) for i, r in enumerate(("stage1-step1000-tokens4B", "stage1-step2000-tokens8B"))
        },
    }
    for repo, revisions in fakes.items():
        write_fake_hub_repo(hf_home, repo, revisions, tokenizer)
    # As listing the repo online once leaves it: offline, the cache cannot say where stage 1 ended.
    remember_stage_ends(OLMO2_REPO, OLMO2_REVISIONS)
    # As on the hub: the intermediate repo's checkpoints ship no usable tokenizer (one a
    # tokenizer_config.json without tokenizer.json, one nothing) and it has no `main`;
    # the released model's repo has the tokenizer.
    fakes[BLOOM_INTERMEDIATE] = {"global_step1000": tiny_bloom(seed=21), "global_step2000": tiny_bloom(seed=22)}
    write_fake_hub_repo(
        hf_home,
        BLOOM_INTERMEDIATE,
        {"global_step1000": fakes[BLOOM_INTERMEDIATE]["global_step1000"]},
        tokenizer,
        tokenizer_files="config-only",
    )
    write_fake_hub_repo(
        hf_home,
        BLOOM_INTERMEDIATE,
        {"global_step2000": fakes[BLOOM_INTERMEDIATE]["global_step2000"]},
        None,
        tokenizer_files="none",
    )
    write_fake_hub_repo(hf_home, BLOOM_BASE, {"main": tiny_bloom(seed=23)}, tokenizer)
    return {"hf_home": hf_home, "models": fakes, "tokenizer": tokenizer}


@pytest.fixture
def hub(_family_files: dict) -> Iterator[dict]:
    suite_tokenizer._TOKENIZER_FALLBACK_LOGGED.clear()  # each test sees the fallback said once
    with offline_hf_home_at(_family_files["hf_home"]):
        yield _family_files


def assert_matches_hf(model, hf_model, other_hf_model=None) -> None:
    with torch.no_grad():
        ours = model(TOKENS).log_softmax(-1)
        theirs = hf_model(TOKENS).logits.log_softmax(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if other_hf_model is not None:  # the right revision, not just any
        with torch.no_grad():
            assert (ours - other_hf_model(TOKENS).logits.log_softmax(-1)).abs().max() > 1e-2


# ---------------------------------------------------------------- OLMo-2 and OLMo-3
def test_olmo2_loads_with_hf_log_probs_along_the_trajectory(hub, caplog):
    suite = CheckpointSuite.olmo(OLMO2_REPO, ingredient=1)
    fakes = hub["models"][OLMO2_REPO]
    seen = []
    with caplog.at_level(logging.WARNING):
        for info, model in suite.iter_models(progress=False):
            assert model.cfg.original_architecture == "Olmo2ForCausalLM"
            assert (model.cfg.d_model, model.cfg.n_layers, model.cfg.d_vocab) == (32, 2, 64)
            assert model.cfg.normalization_type == "RMS"  # post-norm: nothing folded
            assert_matches_hf(
                model, fakes[info.revision], fakes["stage1-step1000-tokens3B"] if info.index != 1 else None
            )
            seen.append((info.revision, info.step, info.tokens_seen))
    assert not [r for r in caplog.records if "fold_ln" in r.getMessage()]
    B = 10**9
    assert seen == [
        ("stage1-step0-tokens0B", 0, 0),
        ("stage1-step1000-tokens3B", 1000, 3 * B),
        ("stage1-step2000-tokens6B", 2000, 6 * B),
        ("stage2-ingredient1-step1000-tokens3B", 3000, 9 * B),
        ("stage2-ingredient1-step2000-tokens6B", 4000, 12 * B),
    ]
    record = suite.provenance()
    assert record["stage_starts"] == {
        "2": {"stage": 2, "step": 2000, "tokens": 6 * B, "after": ["stage1-step2000-tokens6B"]}
    }
    assert record["processing"] == {"fold_ln": False, "center_writing_weights": False, "center_unembed": True}


def test_olmo2_grouped_query_attention_matches_hf(offline_hf_home):
    # OLMo-2 32B uses fewer key/value heads than query heads.
    fakes = {"stage1-step5-tokens1B": tiny_olmo2(seed=30, num_key_value_heads=2)}
    write_fake_hub_repo(offline_hf_home, "allenai/OLMo-2-0325-32B", fakes, make_word_tokenizer())
    model = CheckpointSuite.olmo("allenai/OLMo-2-0325-32B").load(0)
    assert model.cfg.n_key_value_heads == 2
    assert_matches_hf(model, fakes["stage1-step5-tokens1B"])


def test_olmo3_loads_quietly_with_hf_log_probs(hub, caplog):
    suite = CheckpointSuite.olmo(OLMO3_REPO)
    fakes = hub["models"][OLMO3_REPO]
    assert suite.revisions == ("stage1-step1000-tokens4B", "stage1-step2000-tokens8B")
    with caplog.at_level(logging.WARNING):
        for info, model in suite.iter_models(progress=False):
            assert model.cfg.original_architecture == "Olmo3ForCausalLM" and model.cfg.n_key_value_heads == 2
            other = fakes["stage1-step2000-tokens8B" if info.index == 0 else "stage1-step1000-tokens4B"]
            assert_matches_hf(model, fakes[info.revision], other)
    # TransformerLens warns "fold_ln=True is incompatible ..." on every load unless asked
    # for fold_ln=False up front.
    assert not [r for r in caplog.records if "fold_ln" in r.getMessage()]
    assert suite.provenance()["processing"]["fold_ln"] is False
    assert "stage_starts" not in suite.provenance()  # one stage: nothing to add


# ---------------------------------------------------------------- stage-aware revisions
def test_stage_parsers_and_trajectory_order():
    assert parse_stage("stage2-ingredient3-step100-tokens1B") == 2 and parse_ingredient("stage2-ingredient3-step1") == 3
    assert parse_stage("step1000-tokens4B") is None and parse_ingredient("stage1-step1000-tokens3B") is None
    refs, starts = place_on_trajectory(
        ["stage2-ingredient1-step1000-tokens3B", "stage1-step1000-tokens3B", "stage1-step500-tokens2B"],
        family="olmo",
        known=["stage1-step500-tokens2B", "stage1-step1000-tokens3B"],
    )
    assert [(r.index, r.revision, r.step, r.tokens_seen) for r in refs] == [
        (0, "stage1-step500-tokens2B", 500, 2 * 10**9),
        (1, "stage1-step1000-tokens3B", 1000, 3 * 10**9),
        (2, "stage2-ingredient1-step1000-tokens3B", 2000, 6 * 10**9),
    ]
    assert starts[2].after == ("stage1-step1000-tokens3B",)
    # Stage 1's end comes from the known (listed) revisions, not only the suite's.
    refs, _ = place_on_trajectory(
        ["stage1-step500-tokens2B", "stage2-ingredient1-step1000-tokens3B"],
        family="olmo",
        known=["stage1-step500-tokens2B", "stage1-step4000-tokens12B"],
    )
    assert [r.step for r in refs] == [500, 5000] and refs[1].tokens_seen == 15 * 10**9
    with pytest.raises(ValueError, match="stage 1's last revision"):
        place_on_trajectory(["stage2-ingredient1-step1000-tokens3B"], family="olmo")


def test_the_issue_example_orders_by_stage_then_step(hub):
    # Both are step 1000 of their own stage; this used to fail with "sort them by step".
    suite = CheckpointSuite.olmo(OLMO2_REPO, ["stage2-ingredient1-step1000-tokens3B", "stage1-step1000-tokens3B"])
    assert suite.revisions == ("stage1-step1000-tokens3B", "stage2-ingredient1-step1000-tokens3B")
    assert suite.steps == (1000, 3000)  # stage 1 ended at step 2000 (the repo's last stage-1 revision)
    assert [r.tokens_seen for r in suite.snapshots] == [3 * 10**9, 9 * 10**9]


def test_a_staged_suite_is_built_again_at_its_recorded_steps(hub, tmp_path):
    """Where stage 2 starts depends on which stage-1 revisions the hub or cache lists; a suite built
    again from a crosscoder's or store's record sits at the recorded steps, whatever this machine lists,
    and a suite placed otherwise is told apart from it by the step it gives each revision."""
    from crosslens.activations.partners import snapshot_problem
    from crosslens.checkpoints.records import suite_from_record

    revisions = ["stage1-step1000-tokens3B", "stage2-ingredient1-step1000-tokens3B"]
    record = CheckpointSuite.olmo(OLMO2_REPO, revisions).provenance()
    assert [s["step"] for s in record["snapshots"]] == [1000, 3000]  # this cache lists stage 1 up to step 2000
    fakes = {r: hub["models"][OLMO2_REPO][r] for r in revisions}
    with offline_hf_home_at(tmp_path / "elsewhere") as elsewhere:
        write_fake_hub_repo(elsewhere, OLMO2_REPO, fakes, hub["tokenizer"])
        # placed by the stage-1 revisions this cache holds, only up to step 1000
        refs, starts = place_on_trajectory(revisions, family="olmo", known=revisions, model_id=OLMO2_REPO)
        placed_here = CheckpointSuite("olmo", OLMO2_REPO, refs, stage_starts=starts)
        assert placed_here.steps == (1000, 2000)
        again = suite_from_record(record)
        assert again.steps == (1000, 3000) and again.revisions == tuple(revisions)
        assert again.provenance()["stage_starts"] == record["stage_starts"]
        problem = snapshot_problem(record["snapshots"], placed_here.provenance()["snapshots"], require_identity=False)
        assert problem == "snapshot stage2-ingredient1-step1000-tokens3B is at step 3000 vs 2000"
    broken = {**record, "stage_starts": {"2": {"step": 2000}}}
    with pytest.raises(ValueError, match=r"^the suite's record of where its stages start cannot be read"):
        suite_from_record(broken)


def test_offline_a_later_stage_is_placed_only_where_the_hub_said_where_stage_1_ends(hub, tmp_path, monkeypatch):
    """Offline, the cache lists only the revisions downloaded: stage 1's last cached revision is not
    where stage 1 ended. Before the repo was listed online a later stage is refused, naming the fix;
    listing it online once keeps its stage ends, and offline placement then matches the hub's."""
    import huggingface_hub

    import crosslens.checkpoints.hub as hub_module

    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "never-online"))
    revisions = ["stage1-step1000-tokens3B", "stage2-ingredient1-step1000-tokens3B"]
    with offline_hf_home_at(tmp_path / "partial") as partial:  # stage 1 cached only up to step 1000
        write_fake_hub_repo(partial, OLMO2_REPO, {r: hub["models"][OLMO2_REPO][r] for r in revisions}, None)
        for build in (lambda: CheckpointSuite.olmo(OLMO2_REPO, revisions), lambda: CheckpointSuite.olmo(OLMO2_REPO)):
            with pytest.raises(CrosslensError) as refused:
                build()
            message = str(refused.value)
            assert message.startswith(f"{OLMO2_REPO}: cannot place 'stage2-ingredient1-step1000-tokens3B' on the")
            assert "go online once (unset HF_HUB_OFFLINE" in message and "suite_from_record" in message
            assert "\n" not in message
        # online once: the hub lists every branch (huggingface_hub's answer, as the hub gives it)
        branches = [type("Branch", (), {"name": r})() for r in ("main", *OLMO2_REVISIONS)]
        with monkeypatch.context() as online:
            online.setattr(hub_module, "hub_offline", lambda: False)
            online.setattr(huggingface_hub, "list_repo_refs", lambda repo: type("Refs", (), {"branches": branches}))
            assert list_revisions(OLMO2_REPO) == list(OLMO2_REVISIONS)
        ends = json.loads((tmp_path / "never-online" / "stage-ends" / "allenai--OLMo-2-0425-1B.json").read_text())
        assert ends["stage_ends"] == [OLMO2_REVISIONS[2], OLMO2_REVISIONS[4], OLMO2_REVISIONS[5]]
        suite = CheckpointSuite.olmo(OLMO2_REPO, revisions)  # offline again, same partial cache
        assert suite.steps == (1000, 3000) and [r.tokens_seen for r in suite.snapshots] == [3 * 10**9, 9 * 10**9]
        assert suite.provenance()["stage_starts"]["2"]["after"] == ["stage1-step2000-tokens6B"]
        assert CheckpointSuite.olmo(OLMO2_REPO, ingredient=1).steps == (1000, 3000)

        # online with the hub out of reach: its listing fails, and the stage ends it last gave still place them
        def unreachable(repo):
            raise OSError("the hub is out of reach")

        with monkeypatch.context() as online:
            online.setattr(hub_module, "hub_offline", lambda: False)
            online.setattr(huggingface_hub, "list_repo_refs", unreachable)
            assert CheckpointSuite.olmo(OLMO2_REPO, revisions).steps == (1000, 3000)


@pytest.mark.parametrize(
    ("family", "model_id", "revisions"),
    [
        ("pythia", "EleutherAI/pythia-14m", ["step0", "step1000"]),
        ("bloom", "bigscience/bloom-560m-intermediate", ["global_step1000", "global_step10000"]),
    ],
)
def test_a_record_of_revisions_alone_is_built_again_at_those_revisions(family, model_id, revisions):
    """A registry release may list a suite's revisions without their steps: the suite built again is
    at those snapshots, not at every one the family published (Pythia's 154)."""
    from crosslens.checkpoints.records import suite_from_record

    suite = suite_from_record({"family": family, "model_id": model_id, "revisions": revisions})
    assert suite.revisions == tuple(revisions)
    with pytest.raises(ValueError, match=r"^the suite's revision 'main' names no training step; record its steps$"):
        suite_from_record({"family": family, "model_id": model_id, "revisions": ["main"]})


def test_mixed_ingredients_are_refused_listing_them(hub):
    with pytest.raises(MixedIngredientsError) as caught:
        CheckpointSuite.olmo(OLMO2_REPO)
    assert caught.value.ingredients == (1, 2)
    message = str(caught.value)
    assert "ingredient 1" in message and "ingredient 2" in message and "ingredient=1" in message
    with pytest.raises(MixedIngredientsError):
        CheckpointSuite.olmo(
            OLMO2_REPO, ["stage2-ingredient1-step1000-tokens3B", "stage2-ingredient2-step1000-tokens3B"]
        )
    # The same refusal for any suite, however built.
    refs, _ = place_on_trajectory(["stage2-ingredient2-step1000-tokens3B"], family="olmo", known=OLMO2_REVISIONS)
    with pytest.raises(MixedIngredientsError):
        CheckpointSuite("olmo", OLMO2_REPO, [CheckpointSuite.olmo(OLMO2_REPO, ingredient=1).snapshots[3], refs[0]])
    # From the CLI: the flag to change, as a CLIError (one line, exit status 2, no traceback).
    with pytest.raises(CLIError) as refused:
        resolve_suite(OLMO2_REPO)
    assert f"--suite {OLMO2_REPO}@ingredient1" in str(refused.value)
    assert resolve_suite(f"{OLMO2_REPO}@ingredient2").revisions == (*OLMO2_REVISIONS[:3], OLMO2_REVISIONS[5])
    with pytest.raises(UnknownRevisionError, match="ingredients here are \\[1, 2\\]"):
        CheckpointSuite.olmo(OLMO2_REPO, ingredient=7)


def test_spaced_selection_and_steps_work_along_the_whole_trajectory(hub):
    suite = CheckpointSuite.olmo(OLMO2_REPO, ingredient=1)
    assert suite.select(n=3, spacing="linear").revisions == (
        "stage1-step0-tokens0B",
        "stage1-step2000-tokens6B",
        "stage2-ingredient1-step2000-tokens6B",
    )
    picked = suite.select(steps=[4000, 1000])
    assert picked.revisions == ("stage1-step1000-tokens3B", "stage2-ingredient1-step2000-tokens6B")
    assert picked.provenance()["stage_starts"]["2"]["step"] == 2000
    assert suite.select(steps=[0, 1000]).provenance().get("stage_starts") is None  # stage 1 only
    assert CheckpointSuite.olmo(OLMO2_REPO, steps=[3000], ingredient=1).revisions == (
        "stage2-ingredient1-step1000-tokens3B",
    )
    with pytest.raises(UnknownRevisionError, match="nearest") as caught:
        CheckpointSuite.olmo(OLMO2_REPO, steps=[3500], ingredient=1)
    assert "stage2-ingredient1-step1000-tokens3B" in caught.value.nearest


def test_suite_list_groups_by_stage_and_ingredient(hub, capsys):
    assert list_revisions(OLMO2_REPO) == list(OLMO2_REVISIONS)
    assert [h for h, _ in group_by_stage(list(reversed(OLMO2_REVISIONS)))] == [
        "stage 1",
        "stage 2, ingredient 1",
        "stage 2, ingredient 2",
    ]
    assert main(["suite", "list", OLMO2_REPO]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "# stage 1: 3 revisions",
        *OLMO2_REVISIONS[:3],
        "# stage 2, ingredient 1: 2 revisions",
        *OLMO2_REVISIONS[3:5],
        "# stage 2, ingredient 2: 1 revisions",
        OLMO2_REVISIONS[5],
    ]


def test_local_folders_of_a_staged_run(hub, tmp_path):
    from hf_cache import repo_folder, write_local_suite

    fakes = hub["models"][OLMO2_REPO]
    kept = [r for r in OLMO2_REVISIONS if parse_ingredient(r) != 2]
    write_local_suite(tmp_path / "run", {r: fakes[r] for r in kept}, hub["tokenizer"])
    # which of stage 1's revisions is its last, the folder cannot tell: the steps along the run are given
    with pytest.raises(CrosslensError, match=r"'stage2-ingredient1-step1000-tokens3B' is of a later .*suite\.json"):
        CheckpointSuite.local(tmp_path / "run")
    steps = {r: step for r, step in zip(kept, (0, 1000, 2000, 3000, 4000))}
    snapshots = [{"revision": r, "step": step} for r, step in steps.items()]
    (tmp_path / "run" / "suite.json").write_text(json.dumps({"model_id": OLMO2_REPO, "snapshots": snapshots}))
    suite = CheckpointSuite.local(tmp_path / "run")
    assert suite.revisions == tuple(kept) and suite.steps == (0, 1000, 2000, 3000, 4000)
    assert_matches_hf(suite.load(3), fakes["stage2-ingredient1-step1000-tokens3B"], fakes["stage1-step1000-tokens3B"])
    with pytest.raises(MixedIngredientsError):  # the cached repo holds both ingredients
        CheckpointSuite.local(repo_folder(hub["hf_home"], OLMO2_REPO))


# ---------------------------------------------------------------- BLOOM without tokenizer
def test_bloom_intermediate_without_tokenizer_uses_the_base_model_once(hub, caplog):
    fakes = hub["models"][BLOOM_INTERMEDIATE]
    with caplog.at_level(logging.WARNING, logger="crosslens.checkpoints.suite"):
        suite = CheckpointSuite.bloom(BLOOM_INTERMEDIATE)
        tokenizer = suite.tokenizer()
        assert tokenizer.get_vocab() == hub["tokenizer"].get_vocab()
        for info, model in suite.iter_models(progress=False):
            other = fakes["global_step2000" if info.step == 1000 else "global_step1000"]
            assert_matches_hf(model, fakes[info.revision], other)
        CheckpointSuite.bloom(BLOOM_INTERMEDIATE).select(indices=[0]).tokenizer()  # a second suite: no repeat
    said = [r.getMessage() for r in caplog.records if BLOOM_BASE in r.getMessage()]
    assert len(said) == 1 and BLOOM_INTERMEDIATE in said[0]
    assert suite.provenance()["tokenizer"] == {"model_id": BLOOM_BASE, "revision": "main"}
    assert suite.check_same_tokenizer() == ()  # no snapshot ships a tokenizer to compare


# ---------------------------------------------------------------- multilingual tasks
def _word_tokenizer_for(tasks) -> PreTrainedTokenizerFast:
    """A word-level tokenizer knowing every word of `tasks` (so continuations are one token)."""
    words = sorted({w for t in tasks for p in t.pairs for w in (p.clean + p.correct + p.wrong).split()})
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<unk>", "<pad>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def test_shipped_multilingual_agreement_gives_one_task_per_language():
    tasks = multilingual_agreement()
    assert list(tasks) == ["en", "fr", "es"]
    assert {lang: len(t) for lang, t in tasks.items()} == {"en": 30, "fr": 30, "es": 30}
    fr = tasks["fr"]
    assert fr.name == "agreement_multilingual_fr"
    attractor = [p for p in fr.pairs if p.meta["condition"] == "attractor_plural"][0]
    assert (attractor.clean, attractor.correct, attractor.wrong) == ("Le chien à côté des arbres", " est", " sont")
    assert {p.meta["language"] for p in tasks["es"].pairs} == {"es"}
    assert {(p.correct, p.wrong) for p in tasks["es"].pairs} == {(" está", " están"), (" están", " está")}
    assert get_task("agreement_multilingual_en", n=4).pairs == tasks["en"].pairs[:4]
    assert multilingual_tasks("agreement_multilingual, agreement_pp") == [
        "agreement_multilingual_en",
        "agreement_multilingual_fr",
        "agreement_multilingual_es",
        "agreement_pp",
    ]


def test_blimp_loader_language_field(tmp_path):
    path = tmp_path / "anaphor_agreement.jsonl"
    lines = [
        {"sentence_good": "the cat sees", "sentence_bad": "the cat see", "lang": "en"},
        {"sentence_good": "le chat voit", "sentence_bad": "le chat voient", "lang": "fr"},
        {"sentence_good": "the dogs see", "sentence_bad": "the dogs sees", "lang": "en"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert languages_in(path, language_key="lang") == ["en", "fr"]
    english = load_blimp_jsonl(path, language="en", language_key="lang")
    assert english.name == "anaphor_agreement_en" and [p.correct for p in english.pairs] == [" sees", " see"]
    assert english.pairs[0].meta["lang"] == "en" and english.pairs[1].meta["line"] == 3
    by_language = load_multilingual_blimp(path, language_key="lang")
    assert {k: v.name for k, v in by_language.items()} == {"en": "anaphor_agreement_en", "fr": "anaphor_agreement_fr"}
    assert len(load_blimp_jsonl(path)) == 3  # without language=, every line as before
    with pytest.raises(MinimalPairFormatError, match="languages here are \\['en', 'fr'\\]"):
        load_blimp_jsonl(path, language="de", language_key="lang")
    with pytest.raises(MinimalPairFormatError, match="language_key"):
        load_multilingual_blimp(path)  # the lines name their language in "lang", not "language"
    # one language as a string was read letter by letter ("no lines in language(s) ['f', 'r']")
    assert list(load_multilingual_blimp(path, languages="fr", language_key="lang")) == ["fr"]
    with pytest.raises(MinimalPairFormatError, match=r"^languages=\[\]: name one or more of \['en', 'fr'\]"):
        load_multilingual_blimp(path, languages=[], language_key="lang")


def test_attribute_runs_languages_together_with_relie_side_by_side(tmp_path):
    from dataclasses import replace

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from crosslens.causal import AttributionConfig
    from crosslens.causal.languages import run_language_tasks

    tasks = [replace(t, pairs=t.pairs[:6]) for t in multilingual_agreement().values()]
    tokenizer = _word_tokenizer_for(tasks)
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=16,
        n_ctx=32,
        d_head=4,
        n_heads=4,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    snapshot_models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        snapshot_models.append(HookedTransformer(cfg).eval())
    crosscoder = random_crosscoder(n_snapshots=2, d_in=16, d_sae=24, hook="blocks.0.hook_resid_post")
    combined = run_language_tasks(
        snapshot_models,
        crosscoder,
        tasks,
        tmp_path,
        tokenizer=tokenizer,
        config=AttributionConfig(n_steps=2),
        top_k=3,
        ks=(1, 2),
        n_random=1,
        progress=False,
    )
    assert list(combined["results"]) == ["en", "fr", "es"]
    saved = json.loads((tmp_path / "relie_by_language.json").read_text())
    assert saved["languages"] == ["en", "fr", "es"] and saved["features"] == combined["features"].tolist()
    for language, result in combined["results"].items():
        table = result.table
        expected = table.relie()[combined["features"]]
        torch.testing.assert_close(combined["relie"][language], expected)
        torch.testing.assert_close(torch.tensor(saved["relie"][language]), expected)
        assert (tmp_path / table.task / "ie_table.json").is_file()
    # Each language's RelIE is its own: the languages' IEs differ, so their shares do too.
    assert not torch.allclose(combined["relie"]["en"], combined["relie"]["fr"])
    html = (tmp_path / "languages_report.html").read_text()
    assert "RelIE per language" in html and all(f'"{lang}"' in html for lang in ("en", "fr", "es"))


def test_the_languages_report_counts_features_as_each_language_s_stage_classes_them():
    """The comparison classed the shared features by RelIE alone: noise (an effect below the stage's
    floor) was counted specific, and a snapshot at chance had specific features, against each
    language's own stage report."""
    from types import SimpleNamespace

    from crosslens.causal.behaviour import SnapshotBehaviour
    from crosslens.causal.ie_table import IETable
    from crosslens.causal.languages import language_classes, language_rows, relie_by_language, shared_features

    ie = torch.zeros(8, 3)
    ie[0] = torch.tensor([1e-7, 0.0, 0.0])  # noise, all of it at s0
    ie[1] = torch.tensor([0.0, 2e-7, 0.0])
    ie[2] = torch.tensor([0.5, 0.5, 0.5])  # shared
    ie[3] = torch.tensor([0.02, 0.02, 0.9])  # specific to s2
    behaving = SnapshotBehaviour("s", 40, 0.95, 0.83, 0.99, -2.0, 0.5).to_dict()
    chance = SnapshotBehaviour("s", 40, 0.5, 0.35, 0.65, 0.0, 0.5).to_dict()
    results = {
        language: SimpleNamespace(
            table=IETable("t", [0, 1, 2], ie.clone(), torch.zeros(3), torch.full((3,), -2.0), torch.zeros(3)),
            summary=SimpleNamespace(effect_floor=0.04, behaviour=[behaving, behaving, last]),
        )
        for language, last in (("en", behaving), ("fr", chance))
    }
    tables = {language: result.table for language, result in results.items()}
    features = shared_features(tables, 4)
    assert features.tolist() == [0, 1, 2, 3]
    classes = language_classes(results, features, relie_by_language(tables, features))
    assert classes["en"].tolist() == [
        ["below_floor"] * 3,
        ["below_floor"] * 3,
        ["shared", "shared", "shared"],
        ["other", "other", "specific"],
    ]
    assert classes["fr"][:, 2].tolist() == ["below_floor", "below_floor", "no_behaviour", "no_behaviour"]
    rows = language_rows(tables, classes)
    assert [(r["en: specific"], r["fr: specific"]) for r in rows] == [(0, 0), (0, 0), (1, 0)]


def test_two_tasks_in_one_language_are_refused_before_any_stage_runs(tmp_path):
    """The second task of a language was refused only after the first one's whole stage ran and wrote
    its files, naming neither task."""
    from dataclasses import replace

    from crosslens.causal.languages import run_language_tasks
    from crosslens.core.errors import CrosslensError

    tasks = multilingual_agreement()
    as_english = replace(
        tasks["fr"],
        name="agreement_fr_as_en",
        pairs=tuple(replace(p, meta={**p.meta, "language": "en"}) for p in tasks["fr"].pairs),
    )
    crosscoder = random_crosscoder(n_snapshots=2, d_in=16, d_sae=24, hook="blocks.0.hook_resid_post")
    out = tmp_path / "languages"
    with pytest.raises(
        CrosslensError,
        match=rf"^tasks '{tasks['en'].name}' and 'agreement_fr_as_en' are both in language 'en'; pass one task per "
        r"language \(--task\)$",
    ):
        run_language_tasks([], crosscoder, [tasks["en"], tasks["es"], as_english], out, progress=False)
    assert not out.exists()


def test_cli_attribute_runs_a_multilingual_task_file(tmp_path, capsys):
    from hf_cache import tiny_neox, write_local_suite

    write_local_suite(tmp_path / "suite", {f"step{s}": tiny_neox(seed=40 + s) for s in (0, 1)}, make_word_tokenizer())
    task_file = tmp_path / "agreement.jsonl"
    rows = [  # two made-up "languages" in the fake hub's word list, 3 pairs each
        ("xx", "the cat sees", "the cat see"),
        ("xx", "the dogs see", "the dogs sees"),
        ("xx", "the man walks", "the man walk"),
        ("yy", "a bird eats", "a bird eat"),
        ("yy", "the women walk", "the women walks"),
        ("yy", "a child runs", "a child run"),
    ]
    task_file.write_text(
        "".join(json.dumps({"sentence_good": g, "sentence_bad": b, "language": lang}) + "\n" for lang, g, b in rows)
    )
    crosscoder = random_crosscoder(n_snapshots=2, d_in=32, d_sae=16, hook="blocks.0.hook_resid_post")
    # as training records it: the snapshots it was trained on, which attribute checks the suite against
    crosscoder.cfg.metadata.suite = {
        "family": "local",
        "root": str(tmp_path / "suite"),
        "snapshots": [ref.to_dict() for ref in CheckpointSuite.local(tmp_path / "suite").snapshots],
    }
    crosscoder.save_model(str(tmp_path / "cc"))
    out = tmp_path / "attr.json"
    argv = [
        "attribute",
        "--suite",
        str(tmp_path / "suite"),
        "--crosscoder",
        str(tmp_path / "cc"),
        "--task-file",
        str(task_file),
        "--n-examples",
        "3",
        "--out",
        str(out),
        "--allow-chance",
    ]
    assert main(argv) == 0  # untrained snapshots are at chance: --allow-chance, as for one task
    printed = capsys.readouterr().out
    assert "causal stage for 2 languages" in printed and "xx" in printed and "yy" in printed
    saved = json.loads((tmp_path / "attr_causal" / "relie_by_language.json").read_text())
    assert saved["languages"] == ["xx", "yy"] and saved["tasks"] == {"xx": "agreement_xx", "yy": "agreement_yy"}
    assert saved["snapshot_labels"] == ["step0", "step1"]
    assert "RelIE per language" in out.with_suffix(".html").read_text()
