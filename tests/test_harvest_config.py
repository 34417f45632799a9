"""Harvest as a library: ``HarvestConfig``'s fields are ``crosslens harvest``'s flags, a recipe is a
layer under them, ``harvest_stores`` writes the bytes the command writes, and a harvest reads its
suite's model shape once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hf_cache import FAKE_WORDS
from trust_fixtures import HOOK, OTHER_HOOK, write_suite

from crosslens.activations import HarvestConfig, TokenBudget, TokenSource, harvest_stores
from crosslens.checkpoints import CheckpointSuite, ModelShape
from crosslens.cli import build_parser, main
from crosslens.cli.flags import build
from crosslens.cli.harvest import harvest_config
from crosslens.core.errors import CrosslensError, StorageError
from crosslens.training.recipes import load_recipe


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(" ".join(FAKE_WORDS[i : i + 9]) for i in range(0, len(FAKE_WORDS) - 9)) * 8)
    return path


def _harvest_args(*flags: str):
    return build_parser().parse_args(["harvest", *flags])


def test_the_harvest_flags_are_the_configs_fields():
    assert harvest_config(_harvest_args("--out", "o", "--hook", HOOK)) == HarvestConfig(out_dir="o", hook_names=[HOOK])
    given = _harvest_args(
        *("--out", "o", "--hook", HOOK, "--hook", OTHER_HOOK, "--text", "a.txt", "b", "--encoding", "latin-1"),
        *("--n-tokens", "1e3", "--seq-len", "32", "--heldout-tokens", "0", "--store-dtype", "bf16", "--overwrite"),
    )
    assert harvest_config(given, device="cpu", model_dtype="fp16") == HarvestConfig(
        out_dir="o",
        hook_names=[HOOK, OTHER_HOOK],
        tokens=TokenSource(text=("a.txt", "b"), encoding="latin-1"),
        budget=TokenBudget(1000, 32, 0),
        store_dtype="bfloat16",
        overwrite=True,
        model_dtype="float16",
    )


def test_a_recipe_is_a_layer_under_the_flags():
    recipe = load_recipe("ge2025-pythia-160m")
    config = harvest_config(_harvest_args("--out", "o", "--recipe", recipe.name), recipe)
    assert config.hook_names == [recipe.hook] and config.store_dtype == recipe.store_dtype
    assert (config.budget.n_tokens, config.budget.seq_len) == (recipe.n_tokens, recipe.context)
    assert config.tokens == TokenSource(dataset=recipe.dataset)
    flags = _harvest_args("--out", "o", "--recipe", recipe.name, "--text", "a.txt", "--seq-len", "128")
    config = harvest_config(flags, recipe)
    assert config.tokens == TokenSource(text=("a.txt",))  # a token flag replaces the recipe's dataset
    assert (config.budget.n_tokens, config.budget.seq_len) == (recipe.n_tokens, 128)


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"tokens": {"text": ["a.txt"], "dataset": "wikitext:text"}}, "--text and --dataset name two token"),
        ({"hook_names": []}, "hook_names is empty"),
        ({"hook_names": ["blocks.0.resid"]}, "--hook 'blocks.0.resid' is not a TransformerLens hook name"),
        ({"store_dtype": "int8"}, r"unsupported dtype 'int8'; use one of .* \(--store-dtype\)$"),
        ({"model_dtype": "int8"}, r"unsupported dtype 'int8'; use one of .* \(--dtype\)$"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_a_config_refuses_what_cannot_be_harvested(settings, says):
    with pytest.raises(CrosslensError, match=says):
        build(HarvestConfig, {"out_dir": "o", "hook_names": [HOOK]}, settings)


def test_the_library_refuses_a_file_for_its_store_before_any_model_loads(suite, text, tmp_path):
    """A file at ``out_dir`` reached ``mkdir``'s FileExistsError once the models had run."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    config = HarvestConfig(
        out_dir=str(a_file), hook_names=[HOOK], tokens=TokenSource(text=[text]), budget=TokenBudget(64, 16)
    )
    with pytest.raises(
        CrosslensError,
        match=rf"^out_dir \(`--out`\) {a_file} is a file, not a folder; pass a folder path for the store$",
    ):
        harvest_stores(config, CheckpointSuite.local(suite))
    assert a_file.read_text() == "x"


def test_the_library_refuses_a_run_folder_for_its_store_naming_its_keyword(suite, text, tmp_path):
    """``harvest_stores``'s refusals of its ``out_dir`` named only the command's ``--out``."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    config = HarvestConfig(
        out_dir=str(run), hook_names=[HOOK], tokens=TokenSource(text=[text]), budget=TokenBudget(64, 16)
    )
    with pytest.raises(CrosslensError) as refused:
        harvest_stores(config, CheckpointSuite.local(suite))
    assert str(refused.value) == (
        f"out_dir (`--out`) {run} is a training run's folder (it holds run.json); harvest into another folder"
    )
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


def test_a_library_harvest_that_does_not_fit_names_the_keywords_that_fix_it(suite, text, tmp_path, monkeypatch):
    """``harvest_stores``'s caller is told the config's fields beside the command's flags when the
    token table outgrows the memory, the store its disk, or the disk fills while it is written; the
    keyword named fixes it."""
    import errno

    import crosslens.activations.budget as budget_module
    import crosslens.activations.harvest as harvest_module
    from crosslens.core.units import format_bytes

    out, local = tmp_path / "store", CheckpointSuite.local(suite)
    config = HarvestConfig(
        out_dir=str(out), hook_names=[HOOK], tokens=TokenSource(text=[text]), budget=TokenBudget(256, 16, 0)
    )

    def refusal() -> str:
        with pytest.raises(CrosslensError) as refused:
            harvest_stores(config, local)
        return str(refused.value)

    monkeypatch.setattr(budget_module, "available_memory", lambda device: 1000)
    assert refusal() == (
        f"n_tokens (`--n-tokens`): a table of 256 tokens needs about {format_bytes(256 * 20)} of memory while it is "
        f"built, and {format_bytes(1000)} is available; lower n_tokens (`--n-tokens`) (+ heldout_tokens "
        "(`--heldout-tokens`)) to at most about 50"
    )
    monkeypatch.setattr(budget_module, "available_memory", lambda device: None)
    # 256 tokens x 3 snapshots x d_model 32 x float32, plus 32 B per token of the token file
    store, bfloat16 = 256 * (3 * 32 * 4 + 32), 256 * (3 * 32 * 2 + 32)
    monkeypatch.setattr(budget_module, "free_disk", lambda folder: bfloat16 + 1000)
    assert refusal() == (
        f"out_dir (`--out`) {out}: the store needs about {format_bytes(store)} (256 tokens x 3 snapshots x 32 "
        f"values x 4 B) and its disk has {format_bytes(bfloat16 + 1000)} free; free space, lower n_tokens "
        '(`--n-tokens`) or the number of snapshots (`--n-snapshots`), pass store_dtype="bfloat16" (`--store-dtype '
        "bfloat16`), or harvest into another out_dir (`--out`)"
    )
    assert not out.exists()
    real = harvest_module.write_npy_atomic

    def fills_up(path, array):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(harvest_module, "write_npy_atomic", fills_up)
    with pytest.raises(StorageError) as full:
        harvest_stores(replace(config, store_dtype="bfloat16"), local)
    assert str(full.value).endswith("; free space there, or harvest into another out_dir (`--out`)"), full.value
    monkeypatch.setattr(harvest_module, "write_npy_atomic", real)
    harvested, _ = harvest_stores(replace(config, store_dtype="bfloat16"), local)  # the keyword it named
    assert harvested.dtype == "bfloat16" and harvested.n_tokens > 0


def test_the_library_writes_the_bytes_the_command_writes(suite, text, tmp_path):
    command, library = tmp_path / "command" / "store", tmp_path / "library" / "store"
    flags = ["--n-tokens", "256", "--seq-len", "16", "--heldout-tokens", "64", "--text", str(text), "--device", "cpu"]
    config = HarvestConfig(
        out_dir=str(library), hook_names=[HOOK], tokens=TokenSource(text=[text]), budget=TokenBudget(256, 16, 64)
    )
    assert main(["harvest", "--suite", str(suite), "--hook", HOOK, "--out", str(command), *flags]) == 0
    store, heldout = harvest_stores(config, CheckpointSuite.local(suite))
    assert heldout is not None and heldout.path.name == "store-heldout"
    # its 4 rows of 16 tokens, less the special tokens the harvest keeps out (a row's BOS at least), as the command's
    assert 0 < heldout.n_tokens <= 60
    assert heldout.n_tokens == type(heldout).open(command.parent / "store-heldout", verify="none").n_tokens
    for folder in ("store", "store-heldout"):
        shards = sorted(p.name for p in (command.parent / folder).glob("*.safetensors"))
        assert shards, folder
        for name in shards:
            assert (command.parent / folder / name).read_bytes() == (library.parent / folder / name).read_bytes()
    assert store.manifest["spec"] == type(store).open(command, verify="none").manifest["spec"]


def test_a_harvest_reads_the_models_shape_once(suite, text, tmp_path, monkeypatch):
    reads = []
    read = ModelShape.read.__func__

    def counted(cls, *args, **kwargs):
        reads.append(args[0])
        return read(cls, *args, **kwargs)

    monkeypatch.setattr(ModelShape, "read", classmethod(counted))
    local = CheckpointSuite.local(suite)
    config = HarvestConfig(
        out_dir=str(tmp_path / "store"),
        hook_names=[HOOK, "blocks.0.mlp.hook_post"],
        tokens=TokenSource(text=[text]),
        budget=TokenBudget(128, 16, 32),
    )
    harvest_stores(config, local)
    assert len(reads) == 1 and Path(reads[0]).name == "config.json"
    shape = local.shape()
    assert (shape.d_model, shape.n_layers, shape.d_mlp, shape.vocab, shape.n_ctx) == (32, 2, 64, 64, 64)
    assert shape.hook_width(HOOK) == 32 and shape.hook_width("blocks.0.mlp.hook_post") == 64
    assert shape.weight_bytes("bfloat16") == 2 * shape.n_params
    assert local.select(n=2).shape() is shape and len(reads) == 1  # a selection keeps what was read


def test_dashboards_stream_reads_the_tokens_harvest_reads(suite, text, tmp_path):
    """``dashboards --stream`` with harvest's token flags reads the training rows harvest wrote: its
    database equals the one computed from that store."""
    import sqlite3

    from trust_fixtures import copy_tree, train

    from crosslens.dashboards import schema

    flags = ["--suite", str(suite), "--text", str(text), "--n-tokens", "256", "--seq-len", "16", "--device", "cpu"]
    store = tmp_path / "store"
    assert main(["harvest", "--hook", HOOK, "--out", str(store), *flags]) == 0
    train(store, tmp_path / "run", architecture="crosscoder")
    streamed = copy_tree(tmp_path / "run", tmp_path / "streamed")
    assert main(["dashboards", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert main(["dashboards", str(streamed), "--stream", *flags]) == 0
    databases = [sqlite3.connect(run / schema.DATABASE_NAME) for run in (tmp_path / "run", streamed)]
    for table in ("features", "feature_snapshots", "contexts", "vocabulary", "snapshots"):
        first, second = (db.execute(f"SELECT * FROM {table}").fetchall() for db in databases)
        assert first == second and first, table


def test_a_crosscoder_trained_on_a_store_records_where_its_tokens_came_from(suite, text, tmp_path):
    """The harvest records its token source beside the spec; training reads it into the
    crosscoder's dataset_path, as a streamed run's. A store that records none gives None."""
    import json

    from trust_fixtures import harvest, train

    from crosslens.activations.tokens import tokens_sha256
    from crosslens.training.runner import training_data_metadata

    config = HarvestConfig(
        out_dir=str(tmp_path / "store"), hook_names=[HOOK], tokens=TokenSource(text=[text]), budget=TokenBudget(256, 16)
    )
    store, _ = harvest_stores(config, CheckpointSuite.local(suite))
    train(store.path, tmp_path / "run", n_steps=4, checkpoint_every=0)
    metadata = json.loads((tmp_path / "run" / "final" / "cfg.json").read_text())["metadata"]
    assert metadata["dataset_path"] == str(text.resolve())  # one string, as SAELens defines it
    assert store.token_source == {"kind": "text", "source": [str(text.resolve())]}
    unrecorded = harvest(suite, tmp_path / "python")  # harvest_activations is given a token table, not its source
    table = {"kind": "token_table", "token_ids_sha256": tokens_sha256(unrecorded.sequences)}
    assert unrecorded.token_source == table and training_data_metadata(unrecorded)["dataset_path"] is None


def test_harvest_activations_records_the_tokens_it_was_given_or_the_source_its_caller_names(suite, text, tmp_path):
    """The lower-level harvest recorded no token source: a store of it was silent about its tokens."""
    from trust_fixtures import harvest, token_table

    from crosslens.activations import ActivationStore
    from crosslens.activations.tokens import tokens_sha256
    from crosslens.training.runner import training_data_metadata

    tokens = token_table(seed=3)
    store = harvest(suite, tmp_path / "table", tokens=tokens)
    recorded = ActivationStore.open(store.path).token_source  # as the manifest on disk says
    assert recorded == {"kind": "token_table", "token_ids_sha256": tokens_sha256(tokens)}
    assert recorded["token_ids_sha256"] == store.manifest["spec"]["token_ids_sha256"]
    named = harvest(suite, tmp_path / "named", tokens=tokens, token_source=TokenSource(text=[text]).record())
    assert named.token_source == {"kind": "text", "source": [str(text.resolve())]}
    assert training_data_metadata(named)["dataset_path"] == str(text.resolve())


def test_dataset_path_is_one_string_whatever_the_token_source(tmp_path):
    """SAELens's dataset_path is one string; several --text files gave a list."""
    from crosslens.activations.config import recorded_dataset_path

    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path in files:
        path.write_text("some words\n")
    record = TokenSource(text=[str(p) for p in files]).record()
    assert recorded_dataset_path(record) == f"{files[0].resolve()}, {files[1].resolve()}"
    assert recorded_dataset_path(TokenSource(text=[str(files[0])]).record()) == str(files[0].resolve())
    assert recorded_dataset_path({"kind": "dataset", "source": "org/name:text"}) == "org/name:text"
    assert recorded_dataset_path(None) is None


def test_a_harvest_resumed_on_another_kind_of_device_says_its_shards_mix_two(suite, tmp_path, capsys):
    """A store records the kinds of device its shards were computed on; a harvest resumed on
    another kind says, in one line, that the store's bytes are no longer one device's."""
    import json

    from trust_fixtures import harvest

    from crosslens.activations.store import write_manifest

    out = tmp_path / "store"
    harvest(suite, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest.get("devices") == ["cpu"]
    manifest["devices"] = ["cuda"]  # as a harvest on a GPU records it
    write_manifest(out, manifest)
    next(p for p in sorted((out / "acts").rglob("*.npy"))).unlink()  # killed before its last shard
    capsys.readouterr()
    harvest(suite, out)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"resuming {out}: its shards so far were computed on cuda, the rest are on cpu: the same activations to "
        "float rounding, not the bytes one device would write (--overwrite harvests them all on cpu)"
    ]
    assert json.loads((out / "manifest.json").read_text())["devices"] == ["cuda", "cpu"]
    harvest(suite, out)  # whole: nothing computed, nothing said
    assert capsys.readouterr().out == ""
