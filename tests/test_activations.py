"""crosslens.activations: exact harvesting, the disk store, resume, and shuffled providers.

Every test runs on a local suite of three tiny random GPT-NeoX checkpoints (d_model 32,
2 layers) with a word-level tokenizer, written to a temporary folder.
"""

from __future__ import annotations

import math
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from crosslens.activations import (
    ActivationProvider,
    ActivationStore,
    CorruptShardError,
    IncompleteStoreError,
    OnTheFlyProvider,
    StoreMismatchError,
    harvest_activations,
    tokenize_texts,
    tokens_from_dataset,
    tokens_from_pico,
)
from crosslens.activations import harvest as harvest_module
from crosslens.activations.forward import harvest_rows, stop_layer_for
from crosslens.activations.store import shard_relpath
from crosslens.activations.tokens import keep_mask
from crosslens.core.errors import DuplicateSnapshotError, TokenizerMismatchError
from crosslens.core.packing import pack_documents

WORDS = "the a cat cats dog dogs runs run sees see big small red blue near over".split()
HOOK = "blocks.0.hook_resid_post"
HOOKS = [HOOK, "blocks.1.hook_mlp_out"]
SEQ_LEN = 16
N_SEQS = 24
SHARD_TOKENS = 80  # 5 sequences per shard -> 5 shards


def _tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1} | {w: i + 2 for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )


def _write_suite(root: Path, seeds: list[int], tokenizers: list | None = None) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        config = GPTNeoXConfig(
            vocab_size=len(WORDS) + 2,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            rotary_pct=0.25,
        )
        folder = root / f"step{10 * i}"
        GPTNeoXForCausalLM(config).save_pretrained(folder)
        (tokenizers[i] if tokenizers else _tokenizer(WORDS)).save_pretrained(folder)
    return root


def _open_suite(root: Path):
    from crosslens.checkpoints import CheckpointSuite

    return CheckpointSuite.local(root)


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory) -> Path:
    return _write_suite(tmp_path_factory.mktemp("suite"), seeds=[0, 1, 2])


@pytest.fixture(scope="module")
def suite(suite_root):
    return _open_suite(suite_root)


@pytest.fixture(scope="module")
def token_ids(suite) -> torch.Tensor:
    return tokenize_texts(suite.tokenizer(), _texts(200), SEQ_LEN, n_seqs=N_SEQS)


@pytest.fixture(scope="module")
def store(suite, token_ids, tmp_path_factory) -> ActivationStore:
    out = tmp_path_factory.mktemp("store")
    return harvest_activations(suite, HOOKS, token_ids, out, shard_tokens=SHARD_TOKENS, batch_size=4, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- tokens
def test_pack_documents_starts_rows_with_bos_and_joins_documents_with_eos():
    rows = pack_documents([[5, 6, 7], [8, 9], [10, 11, 12, 13]], 4, bos_token_id=1, eos_token_id=0)
    # stream: 5 6 7 0 8 9 0 10 11 12 13 0 -> rows of 3 after BOS, last partial row dropped
    assert rows.tolist() == [[1, 5, 6, 7], [1, 0, 8, 9], [1, 0, 10, 11], [1, 12, 13, 0]]
    with pytest.raises(ValueError, match="n_seqs=9"):
        pack_documents([[5, 6, 7]], 4, n_seqs=9, bos_token_id=1, eos_token_id=0)


def test_keep_mask_drops_position_zero_and_special_ids():
    ids = torch.tensor([[0, 4, 5, 0], [0, 6, 1, 7]])
    assert keep_mask(ids, exclude_bos=True, exclude_token_ids=[0, 1]).tolist() == [
        [False, True, True, False],
        [False, True, False, True],
    ]
    assert keep_mask(ids, exclude_bos=False, exclude_token_ids=()).all()


@pytest.mark.parametrize("exclude_bos", [True, False])
def test_the_positions_a_dictionary_records_are_the_positions_it_kept(exclude_bos):
    """``position_record`` (SAELens's seqpos_slice and exclude_special_tokens) read back by
    ``recorded_keep_mask`` is ``keep_mask``; SAELens's ``True`` is the tokenizer's special tokens."""
    from types import SimpleNamespace

    from crosslens.activations.tokens import position_record, recorded_keep_mask

    ids = torch.tensor([[0, 4, 5, 0], [2, 6, 1, 7]])
    record = position_record(exclude_bos=exclude_bos, exclude_token_ids=[1, 0])
    assert record == {"seqpos_slice": [1, None] if exclude_bos else [None], "exclude_special_tokens": [0, 1]}
    kept = keep_mask(ids, exclude_bos=exclude_bos, exclude_token_ids=[0, 1])
    assert torch.equal(recorded_keep_mask(ids, record["seqpos_slice"], record["exclude_special_tokens"]), kept)
    assert recorded_keep_mask(ids, None, None).all() and recorded_keep_mask(ids, [None], False).all()
    tokenizer = SimpleNamespace(pad_token_id=None, bos_token_id=0, eos_token_id=1)
    assert torch.equal(recorded_keep_mask(ids, record["seqpos_slice"], True, tokenizer), kept)
    # SAELens's special tokens are more than crosslens's default exclusions: its separator too
    with_sep = SimpleNamespace(pad_token_id=None, bos_token_id=0, eos_token_id=1, sep_token_id=6)
    assert torch.equal(
        recorded_keep_mask(ids, [None], True, with_sep), keep_mask(ids, exclude_bos=False, exclude_token_ids=[0, 1, 6])
    )
    assert torch.equal(recorded_keep_mask(ids, [2, None, None], None)[0], torch.tensor([False, False, True, True]))
    with pytest.raises(ValueError, match="pass the tokenizer"):
        recorded_keep_mask(ids, None, True)


def test_tokens_from_local_dataset_match_tokenizing_the_texts(suite):
    import datasets

    texts = _texts(60, seed=3)
    dataset = datasets.Dataset.from_dict({"body": texts})
    from_dataset = tokens_from_dataset(suite.tokenizer(), dataset, SEQ_LEN, 10, column="body")
    assert torch.equal(from_dataset, tokenize_texts(suite.tokenizer(), texts, SEQ_LEN, n_seqs=10))
    assert (from_dataset[:, 0] == 0).all()  # BOS (= <|endoftext|>) opens each row
    with pytest.raises(ValueError, match="column"):
        tokens_from_dataset(suite.tokenizer(), dataset, SEQ_LEN, 10, column="text")


def test_stop_layer_reaches_the_deepest_hook_only():
    assert stop_layer_for(["blocks.0.hook_resid_post"]) == 1
    assert stop_layer_for(["blocks.0.hook_resid_post", "blocks.3.attn.hook_z"]) == 4
    assert stop_layer_for(["hook_embed"]) == 0
    assert stop_layer_for(["blocks.0.hook_resid_post", "ln_final.hook_normalized"]) is None


# --------------------------------------------------------------------------- harvest
def test_harvest_equals_each_snapshots_hooked_transformer_exactly(suite, token_ids, store):
    keep = keep_mask(token_ids, exclude_bos=True, exclude_token_ids=[0])
    assert store.n_tokens == int(keep.sum()) and store.n_snapshots == 3
    assert store.d_in == 32 and store.hooks == HOOKS
    assert torch.equal(store.positions, keep.nonzero())
    assert torch.equal(store.token_ids, token_ids[keep])
    seqs, pos = store.positions[:, 0], store.positions[:, 1]
    for s in range(len(suite)):
        model = suite.load(s)
        assert store.snapshots[s]["weights_sha256"] == model.crosslens_snapshot.weights_sha256
        _, cache = model.run_with_cache(token_ids)
        for hook in HOOKS:
            harvested = store.read(hook, slice(None), normalize=False)[:, s]
            assert harvested.dtype == torch.float32
            assert torch.equal(harvested, cache[hook][seqs, pos])


def test_a_snapshot_whose_weights_hash_is_known_loads_only_the_blocks_up_to_the_hook(
    suite_root, token_ids, tmp_path, monkeypatch
):
    monkeypatch.setenv("CROSSLENS_HOME", str(tmp_path / "home"))  # an empty weights-hash cache
    blocks_loaded = []
    real_load = harvest_module.load_snapshot

    def counting_load(*args, **kwargs):
        record, model = real_load(*args, **kwargs)
        blocks_loaded.append(model.cfg.n_layers)
        return record, model

    monkeypatch.setattr(harvest_module, "load_snapshot", counting_load)
    kwargs = dict(shard_tokens=SHARD_TOKENS, batch_size=4, progress=False)
    cold = harvest_activations(_open_suite(suite_root), HOOK, token_ids, tmp_path / "cold", **kwargs)
    warm = harvest_activations(_open_suite(suite_root), HOOK, token_ids, tmp_path / "warm", **kwargs)
    assert blocks_loaded == [2, 2, 2, 1, 1, 1]  # the first harvest records each full hash
    assert _files(warm.path) == _files(cold.path)  # the same store, byte for byte, hashes included
    suite = _open_suite(suite_root)
    assert [e["weights_sha256"] for e in warm.snapshots] == [
        suite.load(s).crosslens_snapshot.weights_sha256 for s in range(len(suite))
    ]
    blocks_loaded.clear()
    harvest_activations(_open_suite(suite_root), HOOKS, token_ids, tmp_path / "deep", **kwargs)
    assert blocks_loaded == [2, 2, 2]  # blocks.1 needs both blocks


def test_harvest_rows_leaves_no_hook_behind_even_when_it_fails(suite, token_ids):
    model = suite.load(0)
    keep = keep_mask(token_ids, exclude_bos=True, exclude_token_ids=[0])
    rows = harvest_rows(model, token_ids, keep, [HOOK], batch_size=4)[HOOK]
    _, cache = model.run_with_cache(token_ids)
    assert torch.equal(rows, cache[HOOK][keep])
    with pytest.raises(ValueError, match="not one vector per token"):
        harvest_rows(model, token_ids, keep, ["blocks.0.attn.hook_pattern"], batch_size=4)
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


def test_normalisation_factor_gives_mean_norm_sqrt_d_in(store):
    for hook in HOOKS:
        raw = store.read(hook, slice(None), normalize=False)
        expected = math.sqrt(32) / raw.double().norm(dim=-1).mean(0)
        torch.testing.assert_close(store.norm_factors(hook).double(), expected, rtol=1e-6, atol=0)
        mean_norms = store.read(hook, slice(None)).double().norm(dim=-1).mean(0)
        torch.testing.assert_close(mean_norms, torch.full((3,), math.sqrt(32), dtype=torch.double), rtol=1e-5, atol=0)


def test_read_returns_rows_in_the_asked_order(store):
    idx = [17, 3, 250, 3, 0]
    rows = store.read(HOOK, idx, normalize=False)
    everything = store.read(HOOK, slice(None), normalize=False)
    assert torch.equal(rows, everything[idx])
    with pytest.raises(
        IndexError,
        match=rf"^token indices must lie in \[0, {store.n_tokens}\); got {store.n_tokens}\.\.{store.n_tokens}",
    ):
        store.read(HOOK, [store.n_tokens])
    for fractional in (torch.tensor([0.7]), [2.5]):  # read as row 0 and row 2 before
        with pytest.raises(TypeError, match=r"^token indices are row numbers \(integers\); got float(32|64) values$"):
            store.read(HOOK, fractional)
    assert torch.equal(store.read(HOOK, torch.tensor([17, 3]), normalize=False), everything[[17, 3]])
    assert store.read(HOOK, [], normalize=False).shape == (0, *everything.shape[1:])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_stores_round_and_halve_the_bytes(suite, token_ids, store, tmp_path, dtype):
    half = harvest_activations(
        suite, HOOK, token_ids, tmp_path, dtype=dtype, shard_tokens=SHARD_TOKENS, batch_size=4, progress=False
    )
    full = store.read(HOOK, slice(None), normalize=False)
    torch_dtype = getattr(torch, dtype)
    assert torch.equal(half.read(HOOK, slice(None), normalize=False), full.to(torch_dtype).float())
    data_bytes = sum(r["bytes"] for rel, r in store.manifest["files"].items() if rel.startswith(f"acts/{HOOK}/"))
    header_bytes = 128 * 15  # one .npy header per (snapshot, shard)
    assert half.nbytes() - header_bytes == (data_bytes - header_bytes) // 2
    mean_norms = half.read(HOOK, slice(None)).double().norm(dim=-1).mean(0)
    torch.testing.assert_close(mean_norms, torch.full((3,), math.sqrt(32), dtype=torch.double), rtol=1e-5, atol=0)


def test_unknown_or_non_token_hooks_are_refused(suite, token_ids, tmp_path):
    with pytest.raises(ValueError, match="did you mean.*blocks.0.hook_resid_post"):
        harvest_activations(suite, "blocks.0.hook_resid_pots", token_ids, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="not one vector per token"):
        harvest_activations(suite, "blocks.0.attn.hook_pattern", token_ids, tmp_path / "b", progress=False)


def test_pico_tokens_are_reproducible_rows_of_grammar_words():
    from crosslens.pico.tokenizer import word_level_tokenizer
    from crosslens.tasks.grammar import PicoGrammar

    tokenizer = word_level_tokenizer(PicoGrammar().vocabulary())
    rows = tokens_from_pico(tokenizer, 32, 6, seed=0)
    assert rows.shape == (6, 32) and (rows[:, 0] == tokenizer.bos_token_id).all()
    assert torch.equal(rows, tokens_from_pico(tokenizer, 32, 6, seed=0))
    assert not torch.equal(rows, tokens_from_pico(tokenizer, 32, 6, seed=1))
    assert (rows != tokenizer.unk_token_id).all()  # every sampled word is in the vocabulary


# --------------------------------------------------------------------------- resume and integrity
@pytest.mark.parametrize("killed_in", ["forward", "write"])
def test_interrupted_harvest_resumes_to_an_identical_store(suite, token_ids, store, tmp_path, monkeypatch, killed_in):
    # 3 snapshots x 5 shards x 2 hooks = 30 files. "forward": Ctrl-C while computing
    # snapshot 1's shard 1, after 12 files were queued; "write": the 14th file write
    # (snapshot 1, shard 1, second hook) fails after 13 succeeded.
    name, fatal_call, kept = ("harvest_rows", 7, 12) if killed_in == "forward" else ("write_npy_atomic", 14, 13)
    real = getattr(harvest_module, name)
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= fatal_call:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(harvest_module, name, dies)
    with pytest.raises(KeyboardInterrupt):
        harvest_activations(suite, HOOKS, token_ids, tmp_path, shard_tokens=SHARD_TOKENS, batch_size=4, progress=False)
    with pytest.raises(IncompleteStoreError, match="same arguments"):
        ActivationStore.open(tmp_path)
    monkeypatch.setattr(harvest_module, name, real)

    real_write = harvest_module.write_npy_atomic
    written = []
    monkeypatch.setattr(harvest_module, "write_npy_atomic", lambda p, a: written.append(p) or real_write(p, a))
    real_bar, bars = harvest_module.progress_bar, []
    monkeypatch.setattr(harvest_module, "progress_bar", lambda **kw: bars.append(kw) or real_bar(**kw))
    resumed = harvest_activations(
        suite, HOOKS, token_ids, tmp_path, shard_tokens=SHARD_TOKENS, batch_size=4, progress=False
    )
    assert len(written) == 30 - kept  # everything finished before the kill was kept
    assert _files(tmp_path) == _files(store.path)
    resumed.verify(full=True)
    # The bar starts at what was on disk (snapshot 0 and snapshot 1's first shard, both hooks),
    # so its rate counts only the resumed run's work.
    shards = store.manifest["shards"]
    first_shard = shards[0]["token_stop"] - shards[0]["token_start"]
    assert [(b["initial"], b["total"]) for b in bars] == [(store.n_tokens + first_shard, 3 * store.n_tokens)]


def test_damaged_shards_are_detected_and_rebuilt(store, suite, token_ids, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    flipped = copy / shard_relpath(HOOK, 1, 2)
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated = copy / shard_relpath(HOOKS[1], 2, 0)
    truncated.write_bytes(truncated.read_bytes()[:-64])

    with pytest.raises(CorruptShardError, match="bytes, expected"):
        ActivationStore.open(copy)
    truncated.unlink()
    with pytest.raises(CorruptShardError, match="missing"):
        ActivationStore.open(copy)
    ActivationStore.open(copy, verify="none")  # opening without checks is allowed...
    with pytest.raises(CorruptShardError, match="sha256"):
        ActivationStore.open(copy, verify="none").verify(full=True)  # ...but the hash check finds the flip

    real_write = harvest_module.write_npy_atomic
    written = []
    monkeypatch.setattr(harvest_module, "write_npy_atomic", lambda p, a: written.append(p) or real_write(p, a))
    harvest_activations(suite, HOOKS, token_ids, copy, shard_tokens=SHARD_TOKENS, batch_size=4, progress=False)
    assert sorted(Path(p).name for p in written) == sorted([flipped.name, truncated.name])
    assert _files(copy) == _files(store.path)


def test_store_built_for_other_inputs_is_never_reused(store, suite, token_ids, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    kwargs = dict(shard_tokens=SHARD_TOKENS, batch_size=4, progress=False)
    with pytest.raises(
        StoreMismatchError, match=r"differs in: --hook: .* there, .* now\); pass --hook .* to resume it.*overwrite=True"
    ):
        harvest_activations(suite, HOOK, token_ids, copy, **kwargs)
    with pytest.raises(
        StoreMismatchError, match=r"differs in: the tokens \(--n-tokens, --heldout-tokens, --text, --dataset\)\);"
    ):
        harvest_activations(suite, HOOKS, token_ids.flip(0), copy, **kwargs)
    with pytest.raises(StoreMismatchError, match="dtype"):
        harvest_activations(suite, HOOKS, token_ids, copy, dtype="float16", **kwargs)
    with pytest.raises(StoreMismatchError, match="suite"):
        harvest_activations(suite.select(indices=[0, 2]), HOOKS, token_ids, copy, **kwargs)
    moved = tmp_path / "moved" / suite.root.name  # a local suite is named by its folder
    shutil.copytree(suite.root, moved)
    with pytest.raises(StoreMismatchError, match=rf"differs in: the suite's folder: {suite.root} there, {moved} now,"):
        harvest_activations(_open_suite(moved), HOOKS, token_ids, copy, **kwargs)
    assert _files(copy) == _files(store.path)  # refused runs touched nothing
    replaced = harvest_activations(suite, HOOK, token_ids[:6], copy, overwrite=True, **kwargs)
    assert replaced.hooks == [HOOK] and replaced.manifest["spec"]["n_seqs"] == 6
    assert not (copy / "acts" / HOOKS[1]).exists()


def test_suite_whose_snapshots_tokenize_differently_is_refused(tmp_path, token_ids):
    swapped = list(WORDS)
    swapped[0], swapped[1] = swapped[1], swapped[0]  # same size, different ids
    root = _write_suite(tmp_path / "suite", [0, 1], [_tokenizer(WORDS), _tokenizer(swapped)])
    with pytest.raises(TokenizerMismatchError, match="step10"):
        harvest_activations(_open_suite(root), HOOK, token_ids, tmp_path / "store", progress=False)


def test_tokenizer_check_for_suites_without_their_own():
    from crosslens.activations.snapshots import check_same_tokenizer

    swapped = list(WORDS)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    check_same_tokenizer(_tokenizer(WORDS), _tokenizer(WORDS), revision="step10")  # equal vocabularies pass
    with pytest.raises(TokenizerMismatchError, match="'step10' tokenizes differently"):
        check_same_tokenizer(_tokenizer(WORDS), _tokenizer(swapped), revision="step10")


def test_duplicate_snapshots_are_refused(tmp_path, token_ids):
    root = _write_suite(tmp_path / "suite", [0, 0])
    with pytest.raises(DuplicateSnapshotError, match="identical weights"):
        harvest_activations(_open_suite(root), HOOK, token_ids, tmp_path / "store", progress=False)


# --------------------------------------------------------------------------- providers
def _rows(batches: list[torch.Tensor]) -> Counter:
    """The multiset of served rows (tokens with equal prefixes share activations, so rows repeat)."""
    return Counter(row.numpy().tobytes() for batch in batches for row in batch)


def test_provider_serves_every_token_exactly_once_per_epoch(store):
    everything = _rows([store.read(HOOK, slice(None), normalize=False)])
    provider = ActivationProvider(store, HOOK, 64, n_epochs=2, buffer_tokens=128, normalize=False)
    batches = list(provider)
    per_epoch = provider.batches_per_epoch
    assert per_epoch == math.ceil(store.n_tokens / 64) and len(batches) == 2 * per_epoch
    assert all(b.shape == (64, 3, 32) for b in batches[: per_epoch - 1])
    assert batches[per_epoch - 1].shape[0] == store.n_tokens - 64 * (per_epoch - 1)
    assert _rows(batches[:per_epoch]) == everything == _rows(batches[per_epoch:])
    assert not torch.equal(batches[0], batches[per_epoch])  # each epoch has its own order

    order = provider.epoch_order(0)
    assert sorted(order.tolist()) == list(range(store.n_tokens))
    assert torch.equal(batches[1], store.read(HOOK, order[64:128], normalize=False))
    # the shuffle is global: the first batch draws on every shard
    shard_starts = np.array([sh["token_start"] for sh in store.manifest["shards"]])
    assert len(set(np.searchsorted(shard_starts, order[:64], side="right"))) == len(shard_starts)

    dropping = list(ActivationProvider(store, HOOK, 64, n_epochs=1, drop_last=True, normalize=False))
    assert [b.shape[0] for b in dropping] == [64] * (store.n_tokens // 64)
    assert not _rows(dropping) - everything  # a sub-multiset: nothing served twice


def test_provider_is_reproducible_and_resumes_at_any_batch(store):
    def batches(**kw):
        return list(ActivationProvider(store, HOOK, 50, n_epochs=2, buffer_tokens=100, **kw))

    reference = batches(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(reference, batches(seed=0, prefetch=False)))
    assert not torch.equal(reference[0], batches(seed=1)[0])
    for k in (3, len(reference) // 2 + 1):  # within epoch 0, and inside epoch 1
        resumed = batches(seed=0, start_batch=k)
        assert len(resumed) == len(reference) - k
        assert all(torch.equal(a, b) for a, b in zip(resumed, reference[k:]))
    normalised = torch.cat(reference[: len(reference) // 2])
    torch.testing.assert_close(
        normalised.double().norm(dim=-1).mean(0), torch.full((3,), math.sqrt(32), dtype=torch.double), rtol=1e-5, atol=0
    )


class _CountingStore:
    """A store that lists how many rows each read asks for."""

    def __init__(self, store):
        self.store, self.rows = store, []

    def __getattr__(self, name):
        return getattr(self.store, name)

    def read(self, hook, idx, **kw):
        self.rows.append(len(idx))
        return self.store.read(hook, idx, **kw)


@pytest.mark.parametrize("drop_last", [False, True])
def test_provider_stops_at_the_batch_asked_for_and_reads_nothing_past_it(store, drop_last):
    provider = ActivationProvider(store, HOOK, 50, buffer_tokens=100, normalize=False, drop_last=drop_last)
    per_epoch = provider.batches_per_epoch
    reference = [b for b, _ in zip(provider.batches(0), range(2 * per_epoch + 2))]
    for start, stop in ((0, 3), (2, per_epoch + 3), (per_epoch - 1, 2 * per_epoch + 1), (4, 4)):
        served = list(provider.batches(start, stop=stop))
        assert len(served) == stop - start
        assert all(torch.equal(a, b) for a, b in zip(served, reference[start:stop]))
    counting = _CountingStore(store)
    list(ActivationProvider(counting, HOOK, 50, buffer_tokens=100, drop_last=drop_last).batches(0, stop=3))
    assert counting.rows == [100, 50]  # the windows up to batch 3, not the rest of the epoch
    with pytest.raises(ValueError, match=r"start=5, stop=4.*start <= stop"):
        next(provider.batches(5, stop=4))


def test_on_the_fly_provider_matches_the_store_without_writing(suite, token_ids, store):
    everything = _rows([store.read(HOOK, slice(None), normalize=False)])

    def provider(**kw):
        return OnTheFlyProvider(suite, HOOK, token_ids, 40, chunk_seqs=10, n_epochs=1, **kw)

    raw = list(provider(normalize=False))
    assert _rows(raw) == everything
    assert [b.shape[0] for b in raw[:-1]] == [40] * (len(raw) - 1)
    resumed = list(provider(normalize=False, start_batch=5))
    assert all(torch.equal(a, b) for a, b in zip(resumed, raw[5:])) and len(resumed) == len(raw) - 5

    normalised = provider(normalize=True)
    factors = normalised.norm_factors
    assert factors.shape == (3,) and torch.all(factors > 0)
    first = next(iter(normalised))
    torch.testing.assert_close(first, raw[0] * factors[None, :, None])


def test_texts_encoded_in_batches_are_the_texts_encoded_one_by_one(monkeypatch):
    """A fast tokenizer encodes a batch of documents on every core; the ids are those of one call
    per document, for a batch that ends mid-stream, empty texts and words outside the vocabulary."""
    from crosslens.activations import tokens

    tokenizer = _tokenizer(WORDS)
    texts = ["", *_texts(10), "zzz unknown words here", " ".join(_texts(3))]
    one_by_one = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    assert list(tokens.encoded(tokenizer, iter(texts), batch_size=4)) == one_by_one
    assert any(one_by_one) and not one_by_one[0]


@pytest.mark.parametrize("normalize", [True, False])
def test_a_crosscoder_trained_on_a_provider_records_its_hook_and_factors(store, tmp_path, normalize):
    """Trained by the trainer alone (no runner), a crosscoder still says which hook fed it and
    by what factors its activations were scaled: its snapshot SAEs and the spliced loss read
    raw activations through them. Unnormalised, it records none, and ones are applied."""
    from sae_lens import SAE

    import crosslens.crosscoders as cc
    from crosslens.crosscoders.folding import resolve_norm_factors
    from crosslens.training import CrosscoderTrainer, CrosscoderTrainerConfig

    _, _, train_cls, train_cfg_cls = cc.ARCHITECTURES["crosscoder"]
    sae = train_cls(train_cfg_cls(d_in=32, d_sae=16, n_snapshots=3))
    provider = ActivationProvider(store, HOOK, 64, n_epochs=1, normalize=normalize)
    cfg = CrosscoderTrainerConfig(
        total_steps=2, checkpoint_dir=str(tmp_path), activation_scale_check="warn" if normalize else "off"
    )
    CrosscoderTrainer(sae, cfg).fit(provider)
    saved = SAE.load_from_disk(str(tmp_path / "final"))
    assert saved.cfg.metadata.hook_name == HOOK
    recorded = saved.cfg.metadata.activation_norm_factors
    assert recorded == (store.norm_factors(HOOK).tolist() if normalize else None)
    assert resolve_norm_factors(saved).tolist() == pytest.approx(
        store.norm_factors(HOOK).tolist() if normalize else [1.0] * 3
    )


def test_ctrl_c_of_a_harvest_started_over_says_to_leave_out_overwrite_and_that_resumes(tmp_path, monkeypatch, capsys):
    """--overwrite again would clear the store the interrupted harvest kept: the message says to run
    the command without it, and that command finishes the store."""
    from trust_fixtures import write_suite

    from crosslens.cli import main

    suite_root = write_suite(tmp_path / "suite")
    out = tmp_path / "store"
    argv = ["harvest", "--suite", str(suite_root), "--hook", HOOK, "--n-tokens", "200", "--seq-len", "16"]
    argv += ["--heldout-tokens", "0", "--out", str(out)]
    real, calls = harvest_module.harvest_rows, {"n": 0}

    def stops_at_the_third(*args, **kwargs):  # a Ctrl-C during the third shard's forward
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(harvest_module, "harvest_rows", stops_at_the_third)
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--overwrite"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert stopped.value.code == 130
    assert "interrupted (finished work is kept; run the same command again without --overwrite to resume)" in err
    kept = {p: p.stat().st_mtime_ns for p in (out / "acts").rglob("*.npy")}
    assert kept  # the first shards were written before the stop
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # kept, not harvested again
    ActivationStore.open(out).verify(full=True)
