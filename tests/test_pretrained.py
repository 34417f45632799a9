"""Sharing: push a trained crosscoder to a (stubbed) hub with a model card, load it back
through the registry offline, registry errors, CLI, training metadata and the W&B artifact."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from hf_cache import FAKE_VOCAB_SIZE, make_word_tokenizer, tiny_neox, write_fake_hub_repo, write_local_suite
from huggingface_hub import HfApi
from sae_lens import SAE
from safetensors.torch import load_file
from wandb_files import wandb_records

import crosslens
import crosslens.crosscoders  # noqa: F401  (registers the crosscoder architectures with SAELens)
from crosslens.activations import harvest_activations
from crosslens.checkpoints import CheckpointSuite
from crosslens.cli import main
from crosslens.core.errors import CrosslensError
from crosslens.pretrained import (
    LocalHubApi,
    PretrainedRegistryError,
    UnknownPretrainedError,
    load_pretrained,
    pretrained_directory,
    register_release,
    unregister_release,
)
from crosslens.pretrained.push import push_to_hub
from crosslens.training.config import ArchitectureConfig, LoggingConfig
from crosslens.training.runner import CrosscoderRunnerConfig, CrosscoderTrainingRunner

HOOK = "blocks.0.hook_resid_post"
REPO = "crosslens-test/tiny-crosscoders"
RELEASE = "tiny-crosscoders"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished `crosslens train` folder: 3 snapshots of a tiny GPT-NeoX, JumpReLU crosscoder."""
    root = tmp_path_factory.mktemp("suite")
    write_local_suite(root, {f"step{s}": tiny_neox(seed=s) for s in (0, 10, 100)}, make_word_tokenizer())
    tokens = torch.randint(3, FAKE_VOCAB_SIZE, (32, 16), generator=torch.Generator().manual_seed(0))
    store = tmp_path_factory.mktemp("store")
    harvest_activations(CheckpointSuite.local(root), HOOK, tokens, store, progress=False)
    run_dir = tmp_path_factory.mktemp("run")
    config = CrosscoderRunnerConfig(
        store_path=str(store),
        out_dir=str(run_dir),
        sae=ArchitectureConfig(architecture="jumprelu_crosscoder", d_sae=32),
        n_steps=30,
        train_batch_size_tokens=64,
        lr=3e-3,
        checkpoint_every=0,
        progress=False,
        dataset_path="synthetic:random",
    )
    CrosscoderTrainingRunner(config).run()
    return run_dir


@pytest.fixture
def stubbed_hub(offline_hf_home, monkeypatch):
    """HfApi's upload calls write into the offline HF cache instead of the network."""
    local = LocalHubApi()
    for name in ("create_repo", "upload_folder", "upload_file"):
        monkeypatch.setattr(HfApi, name, lambda self, *args, _name=name, **kw: getattr(local, _name)(*args, **kw))
    return local


@pytest.fixture
def pushed(trained_run, stubbed_hub, tmp_path, monkeypatch):
    result = push_to_hub(trained_run, REPO)
    registry = tmp_path / "registry.yaml"
    registry.write_text(result.registry_yaml)
    monkeypatch.setenv("CROSSLENS_PRETRAINED", str(registry))
    return result


def local_folded(run_dir: Path) -> SAE:
    crosscoder = SAE.load_from_disk(str(run_dir / "final"))
    crosscoder.fold_activation_norm_scaling_factors()
    return crosscoder


def test_push_then_load_pretrained_offline(trained_run, pushed):
    assert RELEASE in pretrained_directory() and pretrained_directory()[RELEASE].source.endswith("registry.yaml")
    loaded = crosslens.load_pretrained(RELEASE, HOOK)
    want = local_folded(trained_run)
    assert type(loaded) is type(want)
    for name, tensor in want.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    meta = loaded.cfg.metadata
    assert meta.activation_norm_factors_folded is True
    assert [s["revision"] for s in meta.suite["snapshots"]] == ["step0", "step10", "step100"]
    assert meta.pretrained_release == RELEASE and meta.pretrained_id == HOOK
    same, suite = crosslens.from_pretrained(RELEASE, HOOK)  # a local suite's models: the caller's to give
    assert suite is None and torch.equal(same.W_dec, loaded.W_dec)
    with pytest.raises(
        CrosslensError, match=r"^force_download=True downloads .* again, which HF_HUB_OFFLINE=1 forbids; go online"
    ):
        crosslens.from_pretrained(RELEASE, HOOK, force_download=True)  # asked to download again, not the cache's

    # the uploaded folder is SAELens's layout, byte-identical weights to what was saved
    folder = LocalHubApi().repo_folder(REPO)
    snapshot = folder / "snapshots" / (folder / "refs" / "main").read_text()
    files = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert {f"{HOOK}/cfg.json", f"{HOOK}/sae_weights.safetensors", "README.md"} <= files


def test_sae_from_pretrained_loads_a_crosslens_repo(trained_run, pushed):
    crosscoder = SAE.from_pretrained(REPO, HOOK)
    weights = load_file(str(trained_run / "final" / "sae_weights.safetensors"))
    assert crosscoder.cfg.architecture() == "jumprelu_crosscoder"
    torch.testing.assert_close(crosscoder.threshold, weights["threshold"])
    torch.testing.assert_close(crosscoder.W_dec, local_folded(trained_run).W_dec, rtol=0, atol=0)


def test_registry_entry_and_model_card(trained_run, pushed):
    entry = yaml.safe_load(pushed.registry_yaml)[RELEASE]
    assert entry["repo_id"] == REPO and entry["suite"]["steps"] == [0, 10, 100]
    (sae,) = entry["saes"]
    assert sae["id"] == sae["path"] == sae["hook_name"] == HOOK
    assert sae["architecture"] == "jumprelu_crosscoder" and sae["normalization_folded"] is True
    evaluation = pushed.evaluation
    assert evaluation["n_tokens"] == 32 * 15  # every stored token (position 0 excluded)
    assert len(sae["variance_explained"]) == len(sae["l0"]) == 3
    assert all(0 < ev <= 1 for ev in sae["variance_explained"]), sae
    assert all(0 < l0 < 32 for l0 in sae["l0"])

    card = pushed.card
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "saelens" and "crosscoder" in front["tags"]
    assert "base_model" not in front  # a local suite is no hub model
    for s, revision in enumerate(["step0", "step10", "step100"]):
        row = f"| {s} | {revision} | {[0, 10, 100][s]} |  | {evaluation['variance_explained'][s]:.3f} | {evaluation['l0'][s]:.1f} |"
        assert row in card
    assert "| context_size | 16 |" in card and "| dataset_path | synthetic:random |" in card
    for row in (
        "| n_steps | 30 |",
        "| batch_size (tokens) | 64 |",
        "| lr | 0.003 |",
        "| training tokens | 1920 |",
        "| seed | 0 |",
    ):
        assert row in card, row  # the run's settings, read from its run.json
    assert "| k |" not in card  # JumpReLU has no k
    assert "## Feature classes" in card
    counts = card.split("## Feature classes")[1]
    numbers = [int(part.split()[-1].rstrip(".")) for part in counts.split(":", 1)[1].split("\n")[0].split(",")]
    assert sum(numbers) == 32
    folder = LocalHubApi().repo_folder(REPO)
    assert (folder / "snapshots" / (folder / "refs" / "main").read_text() / "README.md").read_text() == card


def run_fresh(code: str, env: dict[str, str]) -> str:
    """What ``code`` prints, run in a new interpreter on this checkout (nothing imported before it)."""
    env = {**env, "PYTHONPATH": str(Path(crosslens.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_cards_load_snippets_run_as_written_in_a_fresh_interpreter(trained_run, pushed):
    """A reader copies the card's code into a new session: with SAELens alone (the code from its
    `from sae_lens import SAE` on, after its block's imports) nothing but the hub cache is at hand;
    the crosslens way has the release registered, as the card says."""
    want = local_folded(trained_run)
    shown = "\nprint(type(crosscoder).__name__, tuple(crosscoder.W_dec.shape), type(globals().get('sae')).__name__)"
    blocks = re.findall(r"```python\n(.*?)```", pushed.card, flags=re.S)
    (block,) = [b for b in blocks if "SAE.from_pretrained(" in b]
    lines = block.splitlines()
    start = lines.index("from sae_lens import SAE")
    alone = "\n".join([line for line in lines[:start] if line.startswith("import ")] + lines[start:])
    without_registry = {k: v for k, v in os.environ.items() if k != "CROSSLENS_PRETRAINED"}
    loaded = f"{type(want).__name__} {tuple(want.W_dec.shape)}"
    assert run_fresh(alone + shown, without_registry) == f"{loaded} NoneType"
    (registered,) = [b for b in blocks if "crosslens.load_pretrained(" in b]
    assert run_fresh(registered + shown, dict(os.environ)) == f"{loaded} JumpReLUSAE"  # and its snapshot SAE


def test_unknown_names_list_the_nearest(pushed):
    with pytest.raises(UnknownPretrainedError, match="did you mean 'tiny-crosscoders'") as info:
        load_pretrained("tiny-crosscoder", HOOK)
    assert info.value.nearest[0] == RELEASE
    with pytest.raises(UnknownPretrainedError, match=r"did you mean 'blocks.0.hook_resid_post'"):
        load_pretrained(RELEASE, "blocks.1.hook_resid_post")


def test_release_collisions_are_refused(pushed, tmp_path, monkeypatch):
    spec = yaml.safe_load(pushed.registry_yaml)[RELEASE]
    with pytest.raises(PretrainedRegistryError, match="already defined by .*registry.yaml"):
        register_release(RELEASE, spec)
    second = tmp_path / "second.yaml"
    second.write_text(pushed.registry_yaml)
    monkeypatch.setenv("CROSSLENS_PRETRAINED", f"{tmp_path / 'registry.yaml'}:{second}")
    with pytest.raises(PretrainedRegistryError, match="defined twice: in .*registry.yaml and in .*second.yaml"):
        pretrained_directory()
    monkeypatch.setenv("CROSSLENS_PRETRAINED", "")
    try:
        assert register_release("mine", spec).repo_id == REPO
        assert register_release("mine", spec) is pretrained_directory()["mine"]  # same content: no-op
        with pytest.raises(PretrainedRegistryError, match="already defined by register_release"):
            register_release("mine", {**spec, "repo_id": "other/repo"})
    finally:
        unregister_release("mine")


def test_register_release_takes_what_push_and_the_directory_hand_out(pushed):
    """push's registry_yaml (text) and a directory's release object were read as mappings:
    'dictionary update sequence element #0 has length 1' and "object is not iterable"."""
    published = pretrained_directory()[RELEASE]
    given = {
        "as-yaml": pushed.registry_yaml,
        "as-document": pushed.registry_entry,
        "as-object": published,
        "as-fields": pushed.registry_entry[pushed.release],
    }
    done = []
    try:
        for name, spec in given.items():
            registered = register_release(name, spec)
            done.append(name)
            assert registered.release == name and registered.source == "register_release()"
            assert (registered.repo_id, registered.model, registered.suite, registered.entries) == (
                REPO,
                published.model,
                published.suite,
                published.entries,
            )
    finally:
        for name in done:
            unregister_release(name)
    two = {"a-release": pushed.registry_entry[RELEASE], "b-release": pushed.registry_entry[RELEASE]}
    for spec, refusal in (
        (3, r"^register_release\(\): release 'x': got a int; pass its fields as a mapping, a release object"),
        ("registry.yaml", r"reads as a YAML str, not a release; pass a release's YAML"),
        ("a: [", r"^register_release\(\): release 'x' is not valid YAML"),
        (two, r"holds the releases 'a-release', 'b-release', none named 'x'; pass the one to register"),
    ):
        with pytest.raises(PretrainedRegistryError, match=refusal):
            register_release("x", spec)
    assert "x" not in pretrained_directory()


def test_registry_disagreement_is_refused(pushed, tmp_path, monkeypatch):
    spec = yaml.safe_load(pushed.registry_yaml)
    spec[RELEASE]["suite"]["revisions"] = ["step0", "step11", "step100"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("CROSSLENS_PRETRAINED", str(bad))
    with pytest.raises(PretrainedRegistryError, match="its snapshots are .*step10.* the registry lists .*step11"):
        load_pretrained(RELEASE, HOOK)
    spec[RELEASE]["saes"][0]["l0"] = [1.0, 2.0]
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(PretrainedRegistryError, match="l0 must be a number or 3 numbers"):
        pretrained_directory()


def test_an_entry_of_other_steps_or_another_model_is_refused(pushed, tmp_path, monkeypatch):
    """Only the revisions were compared: an entry listing steps [0, 4, 100], or another model,
    for this crosscoder loaded without complaint."""
    entry = yaml.safe_load(pushed.registry_yaml)[RELEASE]
    model = entry["model"]  # the local suite's folder, named as pytest numbers it
    assert entry["suite"]["steps"] == [0, 10, 100] and model.startswith("suite")
    bad = tmp_path / "bad.yaml"
    monkeypatch.setenv("CROSSLENS_PRETRAINED", str(bad))
    for field, value, refusal in (
        (
            "steps",
            [0, 4, 100],
            r"its snapshots' steps are \[0, 10, 100\], the registry's suite.steps are \[0, 4, 100\]",
        ),
        (
            "model",
            "EleutherAI/pythia-70m",
            rf"its model is '{model}', the registry's model is 'EleutherAI/pythia-70m'",
        ),
    ):
        changed = copy.deepcopy(entry)
        if field == "steps":
            changed["suite"]["steps"] = value
        else:
            changed["model"] = value
        bad.write_text(yaml.safe_dump({RELEASE: changed}))
        with pytest.raises(PretrainedRegistryError, match=refusal) as refused:
            load_pretrained(RELEASE, HOOK)
        message = str(refused.value)
        assert len(message.splitlines()) == 1 and message.endswith(
            f"correct the entry in {bad} to what the crosscoder records, or point it at the crosscoder it describes."
        )
    # a model named with an organisation and without it (as SAELens's releases name TransformerLens models) is one
    bad.write_text(yaml.safe_dump({RELEASE: {**entry, "model": f"someone/{model}"}}))
    assert load_pretrained(RELEASE, HOOK).cfg.metadata.pretrained_release == RELEASE


def test_cli_pretrained_list_show_and_release_id_folders(pushed, capsys):
    assert main(["pretrained", "list"]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith(RELEASE)]
    assert REPO in line and "3 snapshots" in line and " sae_lens " in line
    assert main(["pretrained", "show", RELEASE]) == 0
    out = capsys.readouterr().out
    assert "step10 (step 10)" in out and "variance_explained" in out
    assert "ce_loss_score" not in out, "the fixture's run measured no spliced loss"

    spec = yaml.safe_load(pushed.registry_yaml)
    spec[RELEASE]["saes"][0].update(
        ce_loss_score=[0.5, 0.91, 0.97], kl_div_with_sae=[0.2, 0.03, 0.01], spliced_ablation="zero"
    )
    Path(os.environ["CROSSLENS_PRETRAINED"]).write_text(yaml.safe_dump(spec))
    assert main(["pretrained", "show", RELEASE]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ +ce_loss_score +0\.5 0\.91 0\.97 \(zero-ablation floor\)$", out, re.M)
    assert re.search(r"^ +kl_div_with_sae +0\.2 0\.03 0\.01$", out, re.M)
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrained", "show", "tiny-crosscoder"])
    assert exit_info.value.code == 2 and "did you mean 'tiny-crosscoders'" in capsys.readouterr().err

    from crosslens.cli.common import resolve_crosscoder_arg as _resolve_crosscoder_arg

    folder = Path(_resolve_crosscoder_arg(f"{RELEASE}/{HOOK}"))
    assert (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--crosscoder", "tiny-crosscoderz/blocks.0.hook_resid_post"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--crosscoder" in err and "nearest releases: tiny-crosscoders" in err and len(err.splitlines()) == 1


def test_cli_push_prints_the_registry_entry(trained_run, stubbed_hub, capsys):
    assert main(["push", str(trained_run), "--repo", "someone/cc", "--id", "layer0"]) == 0
    out = capsys.readouterr().out
    entry = yaml.safe_load(out.split("\n\n", 1)[1])
    assert entry["cc"]["repo_id"] == "someone/cc" and entry["cc"]["saes"][0]["path"] == "layer0"
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(trained_run), "--repo", "no-org"])
    assert exit_info.value.code == 2 and "--repo" in capsys.readouterr().err


def test_a_diffing_crosscoders_registry_entry_is_read_back_by_the_registry(offline_hf_home):
    """push's entry for a crosscoder of two models lists them, and the processing they were read
    with, as the registry reads a ``family: models`` suite: the registry builds the same suite again."""
    from tiny_crosscoders import random_crosscoder

    from crosslens.checkpoints.models import RAW_RESIDUAL
    from crosslens.checkpoints.records import suite_from_record
    from crosslens.pretrained.push import Publication, registry_entry, registry_yaml
    from crosslens.pretrained.registry import parse_registry
    from crosslens.pretrained.releases import suite_record

    for repo_id, seed in (("me/base", 0), ("me/chat", 1)):
        write_fake_hub_repo(offline_hf_home, repo_id, {"main": tiny_neox(seed)}, make_word_tokenizer())
    suite = CheckpointSuite.models(["me/base", "me/chat@main"], processing=RAW_RESIDUAL)
    crosscoder = random_crosscoder(n_snapshots=2, d_in=32, d_sae=8, hook=HOOK)
    crosscoder.cfg.metadata.suite = suite.provenance()
    entry = registry_entry(Publication(crosscoder, "me/diff", HOOK, "diff"))
    release = parse_registry(registry_yaml(entry), source="push")["diff"]
    assert release.suite["family"] == "models" and release.revisions == ["base", "chat@main"]
    again = suite_from_record(suite_record(release))
    assert again.model_id == suite.model_id == "me/base,me/chat@main"
    assert again.revisions == suite.revisions and again.processing() == suite.processing()
    assert again.processing()["center_writing_weights"] is False


def test_push_refuses_what_would_publish_wrong_before_uploading(trained_run, stubbed_hub, offline_hf_home, tmp_path):
    """A store named but not there was skipped (a card without its evaluation), a crosscoder id with
    '..' wrote outside the repo's folder, a release with '/' was refused only by the registry later,
    and n_eval_tokens=0 wrote NaN rows: each is refused before anything is uploaded."""
    cases = [
        ({"store_path": tmp_path / "typo"}, rf"^--store {tmp_path / 'typo'} does not exist; pass the store"),
        ({"crosscoder_id": "../../escape"}, r"^crosscoder id '\.\./\.\./escape' is a folder inside the repo"),
        ({"crosscoder_id": "/abs"}, r"^crosscoder id '/abs' is a folder inside the repo"),
        ({"release": "a/b"}, r"^release name 'a/b' has a '/', which names a hub repo"),
        ({"n_eval_tokens": 0}, r"^n_eval_tokens=0: evaluate on 1 token or more$"),
    ]
    for kwargs, says in cases:
        with pytest.raises(ValueError, match=says):
            push_to_hub(trained_run, "someone/refused", **kwargs)
    assert not [path for path in offline_hf_home.rglob("*") if "refused" in path.name]  # nothing uploaded
    push_to_hub(trained_run, "someone/refused", crosscoder_id="layer0")  # the same run, named right, goes up
    assert [path for path in offline_hf_home.rglob("*") if "refused" in path.name]


def test_a_pushed_crosscoder_names_local_files_by_their_names_only(offline_hf_home, tmp_path):
    """A --text run's dataset_path (its files' absolute paths) and a local suite's root went up in
    cfg.json and the card as this machine's paths; a hub dataset's id goes up as it is."""
    from tiny_crosscoders import random_crosscoder

    snapshots = [{"index": 0, "revision": "a", "step": 0}, {"index": 1, "revision": "b", "step": 1}]
    suite = {"family": "local", "model_id": "m", "root": str(tmp_path / "my_suite"), "snapshots": snapshots}
    cases = [
        (
            f"{tmp_path / 'notes.txt'}, {tmp_path / 'more.txt'}",
            "notes.txt, more.txt",
            "local files: notes.txt, more.txt",
        ),
        ([str(tmp_path / "notes.txt")], "notes.txt", "local files: notes.txt"),  # as runs recorded it before
        ("org/corpus:text", "org/corpus:text", "org/corpus:text"),
    ]
    api = LocalHubApi()
    for i, (recorded, published, shown) in enumerate(cases):
        crosscoder = random_crosscoder(n_snapshots=2, d_in=8, d_sae=16, hook=HOOK)
        crosscoder.cfg.metadata.dataset_path, crosscoder.cfg.metadata.suite = recorded, suite
        crosscoder.save_model(tmp_path / f"cc{i}")
        result = push_to_hub(tmp_path / f"cc{i}", f"someone/local{i}", api=api)
        snapshot = api.repo_folder(f"someone/local{i}") / "snapshots"
        uploaded = {p.name: p.read_text() for p in snapshot.rglob("*") if p.suffix in (".json", ".md")}
        assert set(uploaded) == {"cfg.json", "README.md"} and uploaded["README.md"] == result.card
        assert not [name for name, text in uploaded.items() if str(tmp_path) in text]
        metadata = json.loads(uploaded["cfg.json"])["metadata"]
        assert metadata["dataset_path"] == published and metadata["suite"]["root"] == "my_suite"
        assert f"| dataset_path | {shown} |" in result.card


def test_push_offline_says_it_needs_the_hub_before_measuring(trained_run, offline_hf_home, capsys, monkeypatch):
    import crosslens.pretrained.push as push_module

    monkeypatch.setattr(
        push_module, "_store_evaluation", lambda *a, **k: pytest.fail("measured before the hub was asked")
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(trained_run), "--repo", "someone/cc"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err == (
        "crosslens push: error: pushing to someone/cc needs the hub, which HF_HUB_OFFLINE=1 forbids; unset it and log "
        "in to the hub, or write the folder with push_to_hub(..., api=LocalHubApi()) for air-gapped sharing"
    )


def test_runner_fills_saelens_training_metadata(trained_run):
    meta = json.loads((trained_run / "final" / "cfg.json").read_text())["metadata"]
    assert meta["context_size"] == 16 and meta["model_class_name"] == "HookedTransformer"
    assert meta["prepend_bos"] is False  # random token rows: no BOS in front
    assert meta["exclude_special_tokens"] == [0, 2]  # the word tokenizer's BOS = EOS (0) and pad (2)
    assert meta["seqpos_slice"] == [1, None] and meta["dataset_path"] == "synthetic:random"
    assert meta["model_name"] == meta["suite"]["model_id"]
    assert 0 < meta["l0"] < 32 and isinstance(meta["num_dead_features"], int)
    assert meta["n_training_steps"] == 30 and meta["n_training_samples"] == 30 * 64


def test_saelens_names_are_the_only_names():
    from crosslens.training import CrosscoderTrainerConfig, LoggingConfig

    cfg = CrosscoderTrainerConfig(
        total_steps=10, logger=LoggingConfig(run_name="r", wandb_log_frequency=5, eval_every_n_wandb_logs=2)
    )
    assert (cfg.logger.run_name, cfg.logger.wandb_log_frequency, cfg.logger.histogram_every) == ("r", 5, 10)
    with pytest.raises(TypeError, match="unexpected keyword argument 'wandb_run_name'"):
        CrosscoderTrainerConfig(total_steps=10, wandb_run_name="b")
    runner_cfg = CrosscoderRunnerConfig(
        store_path="s",
        out_dir="o",
        logger=LoggingConfig(run_name="x", wandb_log_frequency=7),
        hook_name="h",
        n_steps=10,
        train_batch_size_tokens=100,
    )
    assert (runner_cfg.logger.run_name, runner_cfg.logger.wandb_log_frequency, runner_cfg.hook_name) == ("x", 7, "h")
    assert (runner_cfg.n_steps, runner_cfg.train_batch_size_tokens, runner_cfg.training_tokens) == (10, 100, 1000)
    assert CrosscoderRunnerConfig.from_dict(asdict(runner_cfg)) == runner_cfg  # run.json round-trips
    with pytest.raises(TypeError, match="unexpected keyword argument 'hook'"):
        CrosscoderRunnerConfig(store_path="s", out_dir="o", hook="a")


def test_wandb_run_id_in_metadata_and_model_artifact_offline(trained_run, tmp_path):
    import wandb

    run_dir = tmp_path / "run"
    store = json.loads((trained_run / "run.json").read_text())["store_path"]
    config = CrosscoderRunnerConfig(
        store_path=store,
        out_dir=str(run_dir),
        sae=ArchitectureConfig(architecture="crosscoder", d_sae=16),
        n_steps=4,
        train_batch_size_tokens=32,
        checkpoint_every=0,
        progress=False,
        logger=LoggingConfig(
            log_to_wandb=True, wandb_project="crosslens-test", run_name="artifact-check", wandb_log_frequency=2
        ),
    )
    CrosscoderTrainingRunner(config).run()
    wandb.teardown()  # flushes the offline run file
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    meta = json.loads((run_dir / "final" / "cfg.json").read_text())["metadata"]
    assert run_file.name == f"run-{meta['wandb_run_id']}.wandb"
    assert meta["wandb_project"] == "crosslens-test"
    records = list(wandb_records(run_file))
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert len(artifacts) == 1 and artifacts[0].type == "model"
    files = {entry.path for entry in artifacts[0].manifest.contents}
    assert files == {"cfg.json", "sae_weights.safetensors"}
    history = [r for r in records if r.WhichOneof("record_type") == "history"]
    assert len(history) == 2  # steps 2 and 4, from wandb_log_frequency=2


def test_a_release_with_a_misspelt_family_is_refused_where_it_is_registered():
    """``family: pythya`` was registered, and failed only when the release's suite was loaded."""
    spec = {
        "repo_id": "me/cc",
        "model": "EleutherAI/pythia-14m",
        "suite": {"family": "pythya", "model_id": "EleutherAI/pythia-14m", "revisions": ["step0", "step1"]},
        "saes": [{"id": HOOK, "path": HOOK}],
    }
    with pytest.raises(
        PretrainedRegistryError,
        match=r"suite.family must be one of pythia, olmo, bloom, local, models, got 'pythya'\.$",
    ):
        register_release("misspelt", spec)
    assert "misspelt" not in pretrained_directory()


def test_processing_outside_a_suite_of_models_is_refused_where_it_is_registered():
    """Only a suite of models is built with a release's processing; any other would be read with
    its architecture's while the registry said otherwise."""
    suite = {"family": "pythia", "model_id": "EleutherAI/pythia-14m", "revisions": ["step0", "step1"]}
    spec = {
        "repo_id": "me/cc",
        "model": "EleutherAI/pythia-14m",
        "suite": {**suite, "processing": {"center_writing_weights": False}},
        "saes": [{"id": HOOK, "path": HOOK}],
    }
    with pytest.raises(PretrainedRegistryError) as info:
        register_release("processed", spec)
    message = str(info.value)
    assert message.startswith("register_release(): release 'processed': suite.processing is read for family models")
    assert "remove suite.processing" in message and len(message.splitlines()) == 1
    assert "processed" not in pretrained_directory()


def test_config_overrides_of_a_release_in_another_format_are_refused_where_it_is_registered():
    """A converted release's cfg.json is written by its conversion, which never read config_overrides:
    they were dropped without a word."""
    suite = {"family": "pythia", "model_id": "EleutherAI/pythia-14m", "revisions": ["step0", "step1"]}
    spec = {"repo_id": "me/cc", "model": "EleutherAI/pythia-14m", "suite": suite, "saes": [{"id": HOOK, "path": ""}]}
    with pytest.raises(PretrainedRegistryError) as info:
        register_release("kissane-overridden", {**spec, "format": "kissane", "config_overrides": {"d_sae": 4}})
    message = str(info.value)
    assert message.startswith(
        "register_release(): release 'kissane-overridden': config_overrides apply to a release in SAELens's "
        "layout; format 'kissane' is converted without them: drop config_overrides"
    )
    assert len(message.splitlines()) == 1 and "kissane-overridden" not in pretrained_directory()
    for release in ({**spec, "config_overrides": {"d_sae": 4}}, {**spec, "format": "sae_lens", "config_overrides": {}}):
        register_release("saelens-overridden", release)
        unregister_release("saelens-overridden")


def test_a_release_absent_from_the_offline_cache_is_named_with_the_fix(offline_hf_home, monkeypatch):
    from crosslens.pretrained.releases import pretrained_folder

    monkeypatch.setenv("CROSSLENS_PRETRAINED", "")
    spec = {
        "repo_id": "me/absent",
        "model": "EleutherAI/pythia-14m",
        "suite": {"family": "pythia", "model_id": "EleutherAI/pythia-14m", "revisions": ["step0", "step1"]},
        "saes": [{"id": HOOK, "path": HOOK}],
    }
    register_release("absent", spec)
    try:
        with pytest.raises(
            PretrainedRegistryError,
            match=rf"^me/absent/{HOOK} is not in the Hugging Face cache \(.*\) "
            "and HF_HUB_OFFLINE=1 forbids downloading it; go online once",
        ):
            load_pretrained("absent", HOOK)
        # the folder is checked as from_pretrained checks it: the models it reads first
        with pytest.raises(CrosslensError, match=r"^release absent reads EleutherAI/pythia-14m@step0 .*hf download"):
            pretrained_folder("absent", HOOK)
    finally:
        unregister_release("absent")


def test_the_card_says_whether_the_emergence_is_real(trained_run, stubbed_hub, tmp_path, capsys):
    """Without a saved check the card says how to make one; with one, its contested emergences,
    lineage events and their agreement with another run's crosscoder, that run named by its folder
    alone (no local path goes out)."""
    import dataclasses
    import shutil

    from crosslens.analysis.agreement import agreement_text
    from crosslens.analysis.emergence_record import (
        LineageAgreement,
        read_emergence,
        save_emergence,
        save_run_emergence,
    )
    from crosslens.analysis.lineage_events import counts_text
    from crosslens.core.hashing import crosscoder_sha256

    bare = push_to_hub(trained_run, REPO).card
    assert "## Is this emergence real?\n\nNot checked: `crosslens analyze --crosscoder RUN --store STORE`" in bare

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    main(["analyze", "--crosscoder", str(run), "--out", str(tmp_path / "r.html")])
    result = read_emergence(run)
    values = [0.9 if k % 2 else 0.1 for k in range(len(result.lineage.events))]
    other = tmp_path / "private" / "referee-relu"  # a run whose crosscoder is the one measured
    shutil.copytree(trained_run, other)
    referee = LineageAgreement(str(other), crosscoder_sha256(other), 0.5, values)
    save_run_emergence(
        run, dataclasses.replace(result, agreement=referee), json.loads((run / "run.json").read_text())["store_path"]
    )
    capsys.readouterr()
    card = push_to_hub(run, REPO).card
    section = card.split("## Is this emergence real?\n\n")[1].split("\n")[0]
    c = result.check.counts()
    assert section.startswith(
        f"Latent scaling (Minder et al. 2025) on {result.scaling.n_tokens:,} tokens dates each feature's emergence "
        f"beside its decoder norm: {c['contested']} of {c['measured']} measured emergences are contested "
        f"({c['earlier']} present earlier by latent scaling, {c['later']} later)."
    )
    assert (
        f"Lineage through training (from per-checkpoint decoder directions): {counts_text(result.lineage.counts(), ' and ')}."
        in section
    )
    assert (
        f"(`referee-relu`) makes {agreement_text(result.lineage.events, values)} too (agreement 0.5 or more)" in section
    )
    assert "private" not in card

    (other / "final" / "sae_weights.safetensors").write_bytes(b"trained again")  # the referee is another now
    left_out = push_to_hub(run, REPO).card
    printed = capsys.readouterr().out
    assert f"note: the card leaves out the lineage's agreement: {other}'s crosscoder was trained again" in printed
    assert "referee-relu" not in left_out and counts_text(result.lineage.counts(), " and ") in left_out

    save_emergence(run, result, {"crosscoder": "0" * 64, "store": None})  # a check of other weights
    capsys.readouterr()
    retrained = push_to_hub(run, REPO)
    assert "note: the card leaves out the check `crosslens analyze` saved:" in capsys.readouterr().out
    assert "Not checked:" in retrained.card
