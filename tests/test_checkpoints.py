"""crosslens.checkpoints, offline: each family through the loading path a user hits with
the real repo names, served from a fake Hugging Face cache of tiny random models."""

from __future__ import annotations

import json
import weakref

import numpy as np
import pytest
import torch
import transformer_lens.loading_from_pretrained as tl_loading
from conftest import BLOOM_REPO, OLMO_REPO, PYTHIA_DUPLICATED_REPO, PYTHIA_REPO
from hf_cache import make_word_tokenizer, repo_folder, tiny_neox, write_fake_hub_repo, write_local_suite
from transformers import PreTrainedTokenizerFast

from crosslens.checkpoints import CheckpointSuite, SnapshotInfo, SnapshotRef, list_revisions, spaced_steps
from crosslens.checkpoints.schedules import PYTHIA_STEPS
from crosslens.checkpoints.snapshot import has_step_marker, parse_step, parse_tokens
from crosslens.core.devices import DeviceError
from crosslens.core.errors import (
    CrosslensError,
    DuplicateSnapshotError,
    SnapshotMismatchError,
    TokenizerMismatchError,
    UnknownRevisionError,
)
from crosslens.core.hashing import weights_sha256

TOKENS = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11], [20, 21, 3, 30, 31, 40, 41, 50, 12]])


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    # center_unembed shifts each position's logits by a constant; log-softmax ignores it.
    return logits.log_softmax(dim=-1)


def assert_matches_hf(model, hf_model, other_hf_model=None) -> None:
    with torch.no_grad():
        ours = log_probs(model(TOKENS))
        theirs = log_probs(hf_model(TOKENS).logits)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if other_hf_model is not None:  # the right revision, not just any of them
        with torch.no_grad():
            other = log_probs(other_hf_model(TOKENS).logits)
        assert (ours - other).abs().max() > 1e-2


# ---------------------------------------------------------------- each family, real path
def test_pythia_loads_through_transformer_lens_checkpoints(fake_hub, capsys):
    suite = CheckpointSuite.pythia(PYTHIA_REPO, steps=[0, 1000, 143000])
    fakes = fake_hub.models[PYTHIA_REPO]
    seen = []
    for info, model in suite.iter_models(progress=False):
        # TransformerLens's own checkpoint loader set these.
        assert model.cfg.from_checkpoint and model.cfg.checkpoint_value == info.step
        assert model.cfg.original_architecture == "GPTNeoXForCausalLM" and model.cfg.d_model == 32
        assert_matches_hf(model, fakes[info.revision], fakes["step2000"])
        seen.append((info.index, info.revision, info.step, info.tokens_seen))
    assert seen == [
        (0, "step0", 0, 0),
        (1, "step1000", 1000, 1000 * 2_097_152),
        (2, "step143000", 143000, 143000 * 2_097_152),
    ]
    assert "Loaded pretrained model" not in capsys.readouterr().out


def test_pythia_accepts_short_name_and_defaults_to_all_steps(fake_hub):
    suite = CheckpointSuite.pythia("pythia-14m")
    assert suite.model_id == PYTHIA_REPO
    assert suite.steps == PYTHIA_STEPS and len(suite) == 154
    with pytest.raises(ValueError, match="pythia-160m"):
        CheckpointSuite.pythia("EleutherAI/pythia-13m")


def test_olmo_loads_hf_revision_into_hooked_transformer(fake_hub):
    suite = CheckpointSuite.olmo(OLMO_REPO, ["step1000-tokens4B", "step3000-tokens12B"])
    fakes = fake_hub.models[OLMO_REPO]
    infos = []
    for info, model in suite.iter_models(progress=False):
        assert model.cfg.original_architecture == "OlmoForCausalLM"
        # Sizes come from the checkpoint, not from TransformerLens's OLMo-1B table.
        assert (model.cfg.d_model, model.cfg.n_layers, model.cfg.d_vocab) == (32, 2, 64)
        assert_matches_hf(model, fakes[info.revision], fakes["step2000-tokens8B"])
        infos.append(info)
    assert [(i.step, i.tokens_seen) for i in infos] == [(1000, 4 * 10**9), (3000, 12 * 10**9)]
    assert CheckpointSuite.olmo(OLMO_REPO, steps=[2000]).revisions == ("step2000-tokens8B",)
    assert CheckpointSuite.olmo(OLMO_REPO).revisions == tuple(fakes)  # offline: the cached ones


def test_bloom_intermediate_repo_loads_without_main(fake_hub):
    suite = CheckpointSuite.bloom(BLOOM_REPO)
    fakes = fake_hub.models[BLOOM_REPO]
    assert suite.revisions == ("global_step1000", "global_step10000")
    for info, model in suite.iter_models(progress=False):
        assert model.cfg.original_architecture == "BloomForCausalLM"
        assert info.tokens_seen is None
        other = fakes["global_step10000" if info.step == 1000 else "global_step1000"]
        assert_matches_hf(model, fakes[info.revision], other)
    # The repo has no `main`: the tokenizer comes from the first snapshot.
    assert suite.tokenizer().get_vocab() == fake_hub.tokenizer.get_vocab()


# ---------------------------------------------------------------- local suites
def test_local_step_folders(tmp_path):
    models = {"step0": tiny_neox(seed=10), "step100": tiny_neox(seed=11), "step20": tiny_neox(seed=12)}
    write_local_suite(tmp_path / "run", models, make_word_tokenizer())
    (tmp_path / "run" / "notes").mkdir()  # not a checkpoint: ignored
    suite = CheckpointSuite.local(tmp_path / "run")
    assert (suite.family, suite.model_id) == ("local", "run")
    assert suite.revisions == ("step0", "step20", "step100") and suite.steps == (0, 20, 100)
    model = suite.load(-1)
    assert model.crosslens_snapshot.revision == "step100" and model.crosslens_snapshot.tokens_seen is None
    with pytest.raises(DeviceError, match=r"^unknown device 'gpu'; use one of cpu, cuda, cuda:N or mps"):
        suite.load(0, device="gpu")  # TransformerLens refused it once the weights had loaded
    assert_matches_hf(model, models["step100"], models["step20"])
    assert list_revisions(tmp_path / "run") == ["step0", "step20", "step100"]
    with pytest.raises(FileNotFoundError, match=rf"^local suite folder {tmp_path / 'rnu'} does not exist"):
        list_revisions(str(tmp_path / "rnu"))  # a mistyped folder was looked up on the hub as a model id


def test_local_folders_numbered_without_a_step_marker_are_refused_beside_marked_ones(tmp_path):
    from crosslens.checkpoints.local import scan_local_suite

    root = tmp_path / "run"
    for name in ("step0", "step128", "step256", "pythia-160m-final", "backup_v2"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
    with pytest.raises(CrosslensError) as caught:
        scan_local_suite(root)
    message = str(caught.value)
    assert "(backup_v2, pythia-160m-final)" in message and "(step0, step128, step256)" in message
    assert "move those out" in message and "suite.json" in message and len(message.splitlines()) == 1
    # Without any marked folder, the first integer is the step, as documented.
    numbered = tmp_path / "numbered"
    for name in ("export_100", "000200", "run-300"):
        (numbered / name).mkdir(parents=True)
        (numbered / name / "config.json").write_text("{}")
    assert [(r.revision, r.step) for r in scan_local_suite(numbered).snapshots] == [
        ("export_100", 100),
        ("000200", 200),
        ("run-300", 300),
    ]


def test_local_suite_json(tmp_path):
    models = {"step0": tiny_neox(seed=20), "step8": tiny_neox(seed=21)}
    spec = {
        "family": "local",
        "model_id": "crosslens/pico",
        "snapshots": [
            {"revision": "step8", "step": 8, "tokens_seen": 8192},
            {"revision": "step0", "step": 0, "tokens_seen": 0},
        ],
    }
    write_local_suite(tmp_path, models, make_word_tokenizer(), suite_json=spec)
    suite = CheckpointSuite.local(tmp_path)
    assert suite.model_id == "crosslens/pico"
    assert suite.snapshots == (SnapshotRef(0, "step0", 0, 0), SnapshotRef(1, "step8", 8, 8192))
    assert_matches_hf(suite.load(1), models["step8"], models["step0"])


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"snapshots": [', "is not JSON (Expecting value: line 1 column 16 (char 15)); fix it"),
        ('[{"revision": "step0", "step": 0}]', "holds a list, not an object; write"),
        ('{"snapshots": {"step0": 0}}', "'snapshots' must be a list of"),
        ('{"snapshots": ["step0"]}', "snapshot entry 'step0' is not an object"),
        ('{"snapshots": [{"revision": "step0", "step": "1k"}]}', "snapshot 'step0' has 'step' '1k'; write"),
        ('{"snapshots": [{"revision": "step0", "step": 10.7}]}', "snapshot 'step0' has 'step' 10.7; write"),
        ('{"snapshots": [{"revision": "step0", "tokens_seen": "4B"}]}', "snapshot 'step0' has 'tokens_seen' '4B'"),
        ('{"snapshots": [{"revision": "step0", "path": 5}]}', "snapshot 'step0' has 'path' 5; write it as the"),
        ('{"snapshots": [{"revision": "step0", "path": ""}]}', "snapshot 'step0' has 'path' ''; write it as the"),
    ],
)
def test_a_malformed_suite_json_is_refused_naming_the_file_the_field_and_the_fix(tmp_path, text, said):
    (tmp_path / "suite.json").write_text(text)
    with pytest.raises(ValueError) as caught:
        CheckpointSuite.local(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path.resolve() / 'suite.json'}") and said in message, message
    assert len(message.splitlines()) == 1


def test_bloom_steps_must_be_whole_numbers(fake_hub):
    with pytest.raises(ValueError, match=r"^steps \[1000\.7\]: give a list of whole training steps"):
        CheckpointSuite.bloom(BLOOM_REPO, steps=[1000.7])


def test_local_hf_cache_repo_with_revisions(fake_hub):
    suite = CheckpointSuite.local(repo_folder(fake_hub.hf_home, OLMO_REPO))
    assert suite.model_id == OLMO_REPO
    assert suite.steps == (1000, 2000, 3000)
    assert [r.tokens_seen for r in suite.snapshots] == [4 * 10**9, 8 * 10**9, 12 * 10**9]
    assert_matches_hf(suite.load(1), fake_hub.models[OLMO_REPO]["step2000-tokens8B"])


def test_local_suite_without_snapshots_says_how_to_lay_them_out(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="suite.json"):
        CheckpointSuite.local(tmp_path / "empty")


# ---------------------------------------------------------------- one model resident
def test_iter_models_frees_each_model_before_loading_the_next(fake_hub, monkeypatch):
    suite = CheckpointSuite.pythia(PYTHIA_REPO, steps=[0, 1, 1000])
    weight_refs: list[weakref.ref] = []
    alive_at_load: list[list[bool]] = []
    real_load = suite.load

    def recording_load(*args, **kwargs):
        alive_at_load.append([ref() is not None for ref in weight_refs])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(suite, "load", recording_load)
    held = []
    for _info, model in suite.iter_models(progress=False):
        weight_refs.append(weakref.ref(model.embed.W_E))
        held.append(model)  # even a caller that keeps the model does not keep its weights
    assert alive_at_load == [[], [False], [False, False]]
    assert all(ref() is None for ref in weight_refs)
    assert all(m.embed.W_E.device.type == "meta" for m in held)


def test_load_keeps_the_model(fake_hub):
    suite = CheckpointSuite.pythia(PYTHIA_REPO, steps=[1, 1000])
    first, second = suite.load(0), suite.load(1)
    assert first.embed.W_E.device.type == "cpu" and second.embed.W_E.device.type == "cpu"


# ---------------------------------------------------------------- provenance
def test_provenance_and_weights_hash(fake_hub):
    suite = CheckpointSuite.pythia(PYTHIA_REPO, steps=[0, 1000])
    assert suite.provenance() == {
        "family": "pythia",
        "model_id": PYTHIA_REPO,
        "snapshots": [
            {"index": 0, "revision": "step0", "step": 0, "tokens_seen": 0},
            {"index": 1, "revision": "step1000", "step": 1000, "tokens_seen": 2_097_152_000},
        ],
    }
    model = suite.load(1)
    info = model.crosslens_snapshot
    assert isinstance(info, SnapshotInfo)
    assert (info.model_id, info.revision, info.index) == (PYTHIA_REPO, "step1000", 1)
    assert info.weights_sha256 == weights_sha256(model) and len(info.weights_sha256) == 64
    assert suite.load(1).crosslens_snapshot.weights_sha256 == info.weights_sha256  # stable
    assert suite.load(0).crosslens_snapshot.weights_sha256 != info.weights_sha256
    record = json.loads(json.dumps(suite.provenance()))
    assert record["snapshots"][1]["weights_sha256"] == info.weights_sha256
    # The hash follows the weights: change one number and it changes.
    with torch.no_grad():
        model.embed.W_E[0, 0] += 1.0
    assert weights_sha256(model) != info.weights_sha256


# ---------------------------------------------------------------- refusals
def test_identical_weights_are_refused(fake_hub):
    suite = CheckpointSuite.pythia(PYTHIA_DUPLICATED_REPO, steps=[2000, 3000, 4000])
    yielded = []
    with pytest.raises(DuplicateSnapshotError) as caught:
        for info, _ in suite.iter_models(progress=False):
            yielded.append(info.revision)
    assert yielded == ["step2000", "step3000"]
    assert caught.value.revisions == ("step3000", "step4000")
    message = str(caught.value)
    assert "'step3000'" in message and "'step4000'" in message and "select" in message


def test_architecture_mismatch_is_refused_before_loading(tmp_path, monkeypatch):
    models = {"step0": tiny_neox(seed=1), "step1": tiny_neox(seed=2), "step2": tiny_neox(seed=3, intermediate_size=96)}
    suite = CheckpointSuite.local(write_local_suite(tmp_path, models, make_word_tokenizer()))
    monkeypatch.setattr(suite, "load", lambda *a, **k: pytest.fail("loaded weights before checking configs"))
    with pytest.raises(SnapshotMismatchError) as caught:
        next(suite.iter_models(progress=False))
    assert caught.value.revision == "step2"
    assert caught.value.differences == {"d_mlp": (64, 96)}
    assert "'step2'" in str(caught.value) and "d_mlp" in str(caught.value)
    assert CheckpointSuite.local(tmp_path).select(indices=[0, 1]).check_architectures()["d_model"] == 32


def test_unknown_pythia_step_lists_nearest(fake_hub):
    with pytest.raises(UnknownRevisionError) as caught:
        CheckpointSuite.pythia(PYTHIA_REPO, steps=[0, 1500])
    assert caught.value.nearest == ("step512", "step1000", "step2000", "step3000")
    assert "step1000, step2000" in str(caught.value) and "list_revisions" in str(caught.value)


def test_unknown_olmo_revision_lists_nearest_cached(fake_hub):
    with pytest.raises(UnknownRevisionError) as caught:
        CheckpointSuite.olmo(OLMO_REPO, ["step2500-tokens10B"])
    assert caught.value.nearest == ("step1000-tokens4B", "step2000-tokens8B", "step3000-tokens12B")
    assert "offline" in str(caught.value)
    with pytest.raises(UnknownRevisionError, match="global_step10000"):
        CheckpointSuite.bloom(BLOOM_REPO, steps=[9000])


def test_different_tokenizer_is_refused(tmp_path):
    models = {f"step{s}": tiny_neox(seed=s) for s in (0, 1, 2)}
    write_local_suite(tmp_path, models, make_word_tokenizer())
    assert CheckpointSuite.local(tmp_path).check_same_tokenizer() == ("step0", "step1", "step2")
    odd = make_word_tokenizer()
    odd.add_tokens(["zebra"])
    odd.save_pretrained(tmp_path / "step1")
    with pytest.raises(TokenizerMismatchError) as caught:
        CheckpointSuite.local(tmp_path).check_same_tokenizer()
    assert caught.value.revision == "step1" and "zebra" in str(caught.value)


def test_an_unreadable_tokenizer_is_refused_and_a_missing_one_skipped(tmp_path):
    models = {f"step{s}": tiny_neox(seed=s) for s in (0, 1, 2)}
    write_local_suite(tmp_path, models, make_word_tokenizer())
    (tmp_path / "step2" / "tokenizer.json").write_text("{not json")
    with pytest.raises(CrosslensError) as caught:
        CheckpointSuite.local(tmp_path).check_same_tokenizer()
    message = str(caught.value)
    assert "'step2'" in message and "tokenizer.json" in message and "cannot be read" in message
    assert "save_pretrained" in message and len(message.splitlines()) == 1
    # A snapshot that ships no vocabulary (a tokenizer_config.json alone, as BLOOM's intermediate
    # checkpoints) has nothing to compare: skipped.
    (tmp_path / "step2" / "tokenizer.json").unlink()
    assert CheckpointSuite.local(tmp_path).check_same_tokenizer() == ("step0", "step1")


def test_an_unreadable_tokenizer_in_the_hub_cache_is_refused_naming_how_to_fetch_it(offline_hf_home):
    """A hub snapshot's tokenizer files live in the hub cache: the fix is to fetch them again, not to edit them."""
    models = {f"step{s}": tiny_neox(seed=s) for s in (0, 1000)}
    write_fake_hub_repo(offline_hf_home, "EleutherAI/pythia-14m", models, make_word_tokenizer())
    suite = CheckpointSuite.pythia("EleutherAI/pythia-14m", steps=[0, 1000])
    cached = suite.snapshot_folder(suite.snapshots[1]) / "tokenizer.json"
    cached.unlink()  # the cache's link to the blob the first snapshot shares
    cached.write_text("{not json")
    with pytest.raises(CrosslensError) as caught:
        suite.check_same_tokenizer()
    message = str(caught.value)
    assert "'step1000'" in message and "cannot be read" in message and len(message.splitlines()) == 1
    assert "huggingface-cli download EleutherAI/pythia-14m --revision step1000 --force-download" in message
    assert "save_pretrained" not in message


# ---------------------------------------------------------------- schedules and selection
def test_pythia_steps_table():
    assert len(PYTHIA_STEPS) == 154
    assert PYTHIA_STEPS[:12] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    assert PYTHIA_STEPS[-1] == 143000 and list(PYTHIA_STEPS) == tl_loading.PYTHIA_CHECKPOINTS


def test_spaced_steps():
    log32 = spaced_steps(PYTHIA_STEPS, 32)
    assert len(log32) == len(set(log32)) == 32 and log32 == sorted(log32)
    assert log32[0] == 0 and log32[-1] == 143000
    assert set(log32) <= set(PYTHIA_STEPS)
    assert log32[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]  # dense early
    assert log32[-2] < 120000  # sparse late
    assert spaced_steps(range(101), 5, "linear") == [0, 25, 50, 75, 100]
    assert spaced_steps([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000], 4) == [0, 8, 128, 1000]
    assert spaced_steps([30, 10, 20], 10) == [10, 20, 30]
    assert spaced_steps([0, 5, 9], 1) == [9]
    with pytest.raises(ValueError, match="at least 1"):
        spaced_steps(PYTHIA_STEPS, 0)
    with pytest.raises(ValueError, match="spacing"):
        spaced_steps(PYTHIA_STEPS, 4, spacing="cubic")


def test_select_by_steps_indices_and_n(fake_hub):
    suite = CheckpointSuite.pythia(PYTHIA_REPO)
    by_steps = suite.select(steps=[143000, 1000, 0])
    assert by_steps.steps == (0, 1000, 143000)
    assert [r.index for r in by_steps.snapshots] == [0, 1, 2]
    assert suite.select(indices=[0, -1]).revisions == ("step0", "step143000")
    spread = suite.select(n=8)
    assert spread.steps == tuple(spaced_steps(PYTHIA_STEPS, 8)) and spread.family == "pythia"
    assert suite.select(n=8, spacing="linear").steps == tuple(spaced_steps(PYTHIA_STEPS, 8, "linear"))
    with pytest.raises(UnknownRevisionError, match="this suite's 3 snapshots") as caught:
        by_steps.select(steps=[1500])
    assert caught.value.nearest == ("step0", "step1000", "step143000")
    with pytest.raises(IndexError):
        by_steps.select(indices=[3])
    with pytest.raises(ValueError, match="exactly one"):
        suite.select(steps=[0], n=2)
    # 1000.7 selected step 1000; a bare number was "'int' object is not iterable"
    for steps in ([1000.7], 1000, "1000"):
        with pytest.raises(
            ValueError, match=r"^steps .*: give a list of whole training steps, e.g. steps=\[0, 1000\]$"
        ):
            suite.select(steps=steps)
    for indices in ([1.0], 1):
        with pytest.raises(
            ValueError, match=r"^indices .*: give a list of snapshot positions, e.g. indices=\[0, -1\]$"
        ):
            suite.select(indices=indices)
    assert suite.select(steps=[np.int64(1000)], indices=None).steps == (1000,)
    assert suite.select(indices=[np.int64(0)]).steps == (0,)


def test_list_revisions_offline(fake_hub):
    pythia = list_revisions(PYTHIA_REPO)
    assert len(pythia) == 154 and pythia[0] == "step0" and pythia[-1] == "step143000"
    assert list_revisions(OLMO_REPO) == ["step1000-tokens4B", "step2000-tokens8B", "step3000-tokens12B"]
    assert list_revisions(BLOOM_REPO) == ["global_step1000", "global_step10000"]
    with pytest.raises(CrosslensError, match="HF_HUB_OFFLINE"):
        list_revisions("allenai/OLMo-7B-hf")


def test_revision_parsers():
    assert parse_step("step1000") == parse_step("global_step1000") == 1000
    assert parse_step("stage1-step1000-tokens4B") == 1000 and parse_step("checkpoint-500") == 500
    assert parse_step("main") is None
    assert has_step_marker("global_step10") and has_step_marker("checkpoint-500") and has_step_marker("ckpt_000100")
    assert not has_step_marker("backup_v2") and not has_step_marker("pythia-160m-final")
    assert parse_tokens("step1000-tokens4B") == 4_000_000_000
    assert parse_tokens("step5-tokens21M") == 21_000_000 and parse_tokens("step1000") is None


def test_suite_tokenizer_is_the_repo_tokenizer(fake_hub):
    tokenizer = CheckpointSuite.pythia(PYTHIA_REPO, steps=[1000]).tokenizer()
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer("the cat sees")["input_ids"] == fake_hub.tokenizer("the cat sees")["input_ids"]


def test_list_revisions_online_asks_the_hub(fake_hub, monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub

    import crosslens.checkpoints.hub as hub

    branches = ["main", "step20", "step3", "step100-tokens1B", "pr-notes"]
    asked = []

    def fake_list_repo_refs(repo_id):
        asked.append(repo_id)
        return SimpleNamespace(branches=[SimpleNamespace(name=b) for b in branches])

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", fake_list_repo_refs)
    assert list_revisions("org/model") == ["step3", "step20", "step100-tokens1B"]
    assert asked == ["org/model"]


def _fake_request():
    import importlib

    import huggingface_hub.errors as hub_errors

    # huggingface_hub's HTTP client module (httpx or its successor), whichever it uses.
    client = importlib.import_module(hub_errors.Response.__module__.split(".")[0])
    return client.Request("GET", "https://huggingface.co/api/models/x/revision/y")


def test_missing_hub_revision_at_load_becomes_unknown_revision(fake_hub, monkeypatch):
    import huggingface_hub.errors as hub_errors

    import crosslens.checkpoints.suite as suite_module

    suite = CheckpointSuite.olmo(OLMO_REPO, ["step2000-tokens8B"])

    def from_pretrained(*args, revision=None, **kwargs):
        # What transformers raises when the hub has no such branch.
        response = hub_errors.Response(404, request=_fake_request())
        missing = hub_errors.RevisionNotFoundError("no branch", response=response)
        raise OSError(f"{revision} is not a valid git identifier") from missing

    monkeypatch.setattr(suite_module.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(UnknownRevisionError) as caught:
        suite.load(0)
    assert caught.value.requested == "step2000-tokens8B"
    assert "step1000-tokens4B" in caught.value.nearest


def test_cached_revisions_reads_the_cache_through_huggingface_hub(offline_hf_home):
    from crosslens.checkpoints.hub import cached_revisions
    from crosslens.core.errors import CrosslensError

    repo = offline_hf_home / "hub" / "models--org--tiny"
    for revision, commit in [("step10", "b" * 40), ("step0", "a" * 40), ("main", "b" * 40)]:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert cached_revisions("org/tiny") == ["step0", "step10"]  # by step; `main` has none
    assert cached_revisions("org/absent") == []
    # a ref whose snapshot is gone: huggingface_hub skips the repo, crosslens says why
    (repo / "refs" / "step20").write_text("c" * 40)
    with pytest.raises(CrosslensError, match="org/tiny is damaged.*missing commit"):
        cached_revisions("org/tiny")


# ---------------------------------------------------------------- truncated loads, weights-hash cache
def _truncation_suite(tmp_path, monkeypatch, family: str):
    """A two-block suite of ``family`` and an empty weights-hash cache for this test."""
    from hf_cache import tiny_bloom, tiny_olmo

    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))
    if family == "pythia":  # the fake hub is activated by the caller
        return CheckpointSuite.pythia(PYTHIA_REPO, steps=[0, 1000])
    make = {"neox": tiny_neox, "olmo": tiny_olmo, "bloom": tiny_bloom}[family]
    write_local_suite(tmp_path / "run", {"step0": make(seed=30), "step10": make(seed=31)}, make_word_tokenizer())
    return CheckpointSuite.local(tmp_path / "run")


def _block0_output(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(TOKENS, stop_at_layer=1)


@pytest.mark.parametrize("family", ["neox", "olmo", "bloom", "pythia"])
def test_a_truncated_load_keeps_the_full_checkpoints_weights_hash(family, tmp_path, monkeypatch, request):
    if family == "pythia":
        request.getfixturevalue("fake_hub")
    suite = _truncation_suite(tmp_path, monkeypatch, family)
    for s in range(len(suite)):
        full = suite.load(s)
        first = suite.load(s, first_n_layers=1)  # hash unknown: loads whole, records it
        second = suite.load(s, first_n_layers=1)  # hash known: one block
        assert (full.cfg.n_layers, first.cfg.n_layers, second.cfg.n_layers) == (2, 2, 1)
        sha = full.crosslens_snapshot.weights_sha256
        assert first.crosslens_snapshot.weights_sha256 == second.crosslens_snapshot.weights_sha256 == sha
        assert weights_sha256(second) == weights_sha256(full, first_n_layers=1)
        assert torch.equal(_block0_output(second), _block0_output(full))
        assert suite.provenance()["snapshots"][s]["weights_sha256"] == sha
        assert suite.load(s, first_n_layers=2).cfg.n_layers == 2  # nothing left to cut


def test_bloom_hashes_the_same_on_every_load(tmp_path, monkeypatch):
    # TransformerLens would fill BLOOM's unused positional embedding from uninitialised memory.
    suite = _truncation_suite(tmp_path, monkeypatch, "bloom")
    assert len({suite.load(0).crosslens_snapshot.weights_sha256 for _ in range(3)}) == 1
    assert bool((suite.load(0).pos_embed.W_pos == 0).all())


def test_the_weights_hash_cache_misses_once_a_weight_file_changes(tmp_path, monkeypatch):
    suite = _truncation_suite(tmp_path, monkeypatch, "neox")
    suite.load(1, first_n_layers=1)
    old = suite.load(1, first_n_layers=1)
    assert old.cfg.n_layers == 1
    tiny_neox(seed=99).save_pretrained(tmp_path / "run" / "step10")  # the folder now holds other weights
    fresh = CheckpointSuite.local(tmp_path / "run")
    reloaded = fresh.load(1, first_n_layers=1)
    assert reloaded.cfg.n_layers == 2  # the recorded hash is for other files: loaded whole
    sha = reloaded.crosslens_snapshot.weights_sha256
    assert sha == fresh.load(1).crosslens_snapshot.weights_sha256 != old.crosslens_snapshot.weights_sha256
    assert fresh.load(1, first_n_layers=1).crosslens_snapshot.weights_sha256 == sha


def test_a_weights_hash_cache_entry_that_does_not_check_out_is_never_used(tmp_path, monkeypatch, caplog):
    from crosslens.checkpoints import weights_cache

    suite = _truncation_suite(tmp_path, monkeypatch, "neox")
    sha = suite.load(0).crosslens_snapshot.weights_sha256
    suite.load(0, first_n_layers=1)
    (entry,) = weights_cache.cache_dir().glob("*.json")

    # edited by hand (the checksum no longer matches): ignored, loaded whole, recorded again
    record = json.loads(entry.read_text())
    entry.write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    model = suite.load(0, first_n_layers=1)
    assert model.cfg.n_layers == 2 and model.crosslens_snapshot.weights_sha256 == sha
    entry.write_text("{not json")
    assert suite.load(0, first_n_layers=1).cfg.n_layers == 2
    assert suite.load(0, first_n_layers=1).cfg.n_layers == 1  # the rewritten entry serves again

    # well-formed but describing other first blocks (say, written by other conversion code):
    # the truncated model's own hash refutes it, so the snapshot loads whole and is recorded again
    fields = json.loads(entry.read_text())["fields"]
    weights_cache.record(fields, weights_cache.KnownWeights(2, "f" * 64, {1: "e" * 64}))
    with caplog.at_level("WARNING", logger="crosslens.checkpoints.suite"):
        model = suite.load(0, first_n_layers=1)
    assert model.cfg.n_layers == 2 and model.crosslens_snapshot.weights_sha256 == sha
    assert "does not match its first 1 blocks" in caplog.text
    assert suite.load(0, first_n_layers=1).crosslens_snapshot.weights_sha256 == sha

    # recorded under other versions of the converting code: not found at all
    other = {**fields, "versions": {**fields["versions"], "transformer_lens": "0.0.0"}}
    assert weights_cache.lookup(other) is None


def test_a_suite_without_a_file_identity_loads_whole(tmp_path, monkeypatch):
    import crosslens.checkpoints.suite as suite_module

    suite = _truncation_suite(tmp_path, monkeypatch, "neox")
    monkeypatch.setattr(suite_module, "snapshot_identity", lambda suite, ref: None)  # e.g. online, not cached
    for _ in range(2):
        assert suite.load(0, first_n_layers=1).cfg.n_layers == 2
    with pytest.raises(ValueError, match="first_n_layers"):
        suite.load(0, first_n_layers=0)


def test_a_weights_hash_cache_that_cannot_be_written_only_costs_full_loads(tmp_path, monkeypatch):
    suite = _truncation_suite(tmp_path, monkeypatch, "neox")
    (tmp_path / "home").write_text("a file where the cache folder would go")
    sha = suite.load(0).crosslens_snapshot.weights_sha256
    for _ in range(2):
        model = suite.load(0, first_n_layers=1)
        assert model.cfg.n_layers == 2 and model.crosslens_snapshot.weights_sha256 == sha
