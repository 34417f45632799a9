"""Streaming from resident snapshot models gives the disk store's activations, with no disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_activations import HOOK, store, suite, suite_root, token_ids  # noqa: F401  (fixtures)

from crosslens.activations import streaming
from crosslens.activations.streaming import ModelsDoNotFitError, ResidentSnapshotProvider

BLOCK = [0, 2]  # a snapshot rank holding the first and last snapshot


def provider(suite, token_ids, **kw):
    kw.setdefault("normalize", False)
    return ResidentSnapshotProvider(suite, HOOK, token_ids, 40, chunk_seqs=5, n_epochs=1, **kw)


def _store_rows(store) -> dict[tuple[int, int], torch.Tensor]:
    acts_NSD = store.read(HOOK, slice(None), normalize=False)
    return {tuple(p): acts_NSD[i] for i, p in enumerate(store.positions.tolist())}


def _served(p: ResidentSnapshotProvider) -> list[tuple[tuple[int, int], torch.Tensor]]:
    out = []
    for index in range(len(p._chunks(0))):
        positions = p.chunk_positions(0, index).tolist()
        acts = p._chunk(0, index)
        out += [(tuple(pos), acts[i]) for i, pos in enumerate(positions)]
    return out


def test_each_data_rank_streams_store_rows_of_its_snapshots(suite, token_ids, store):
    by_position = _store_rows(store)
    seen = []
    for rank in range(2):
        p = provider(suite, token_ids, snapshots=BLOCK, data_rank=rank, data_size=2)
        served = _served(p)
        assert len(served) >= p.n_tokens  # its chunks hold its sequences whole; as many tokens as any rank's are served
        for position, row_SD in served:
            assert torch.equal(row_SD, by_position[position][BLOCK]), position
        seen += [position for position, _ in served]
        batches = list(p)
        assert sum(b.shape[0] for b in batches) == p.n_tokens
        assert all(b.shape[1:] == (2, by_position[seen[0]].shape[-1]) for b in batches)
        p.close()
    # the two data ranks split the tokens: every stored token exactly once
    assert sorted(seen) == sorted(by_position)


@pytest.mark.parametrize("batch_size,n_epochs", [(13, 3), (85, 1)])
def test_data_ranks_serve_as_many_whole_batches_every_epoch(suite, token_ids, batch_size, n_epochs):
    """Rows keep different numbers of tokens, so a rank's share of the sequences holds another
    count each epoch: every data rank serves the same whole batches every epoch all the same (on
    a mesh each step takes one from every rank), and one process still serves every token."""
    served = []
    for rank in range(2):
        p = ResidentSnapshotProvider(
            suite,
            HOOK,
            token_ids,
            batch_size,
            chunk_seqs=5,
            drop_last=True,
            n_epochs=n_epochs,
            snapshots=[0],
            data_rank=rank,
            data_size=2,
            normalize=False,
            prefetch=False,
        )
        served.append([b.shape[0] for b in p.batches(0)])
        assert p.batches_per_epoch * n_epochs == len(served[-1])
        p.close()
    assert served[0] == served[1] and set(served[0]) == {batch_size}
    whole = ResidentSnapshotProvider(suite, HOOK, token_ids, 40, chunk_seqs=5, n_epochs=1, snapshots=[0])
    kept_N = whole.keep_NL.sum(1)
    assert len(set(kept_N.tolist())) > 1  # the fixture's rows do keep different counts
    assert whole.n_tokens == sum(b.shape[0] for b in whole.batches(0)) == int(kept_N.sum())
    whole.close()


def test_models_load_once_and_resume_serves_the_same_batches(suite, token_ids, monkeypatch):
    loads = []
    original = streaming.load_snapshot
    monkeypatch.setattr(streaming, "load_snapshot", lambda *a, **k: loads.append(a[1].revision) or original(*a, **k))
    p = provider(suite, token_ids, snapshots=BLOCK)
    batches = list(p)
    assert len(loads) == 2 and len(batches) > 3
    resumed = list(provider(suite, token_ids, snapshots=BLOCK, start_batch=3))
    assert len(resumed) == len(batches) - 3
    assert all(torch.equal(a, b) for a, b in zip(resumed, batches[3:]))


def test_resident_models_keep_only_the_blocks_up_to_the_hook(suite, token_ids, store):
    assert HOOK.startswith("blocks.0.")
    p = provider(suite, token_ids, snapshots=BLOCK)
    models = p.models()
    assert [m.cfg.n_layers for m in models] == [1, 1]
    assert all(not any(name.startswith("blocks.1.") for name in m.hook_dict) for m in models)
    # the provenance still names the whole checkpoints' weights
    assert [r["weights_sha256"] for r in p.provenance] == [store.snapshots[s]["weights_sha256"] for s in BLOCK]
    by_position = _store_rows(store)
    assert all(torch.equal(row_SD, by_position[pos][BLOCK]) for pos, row_SD in _served(p))
    p.close()


def test_norm_factors_agree_across_data_ranks(suite, token_ids):
    factors = [
        provider(suite, token_ids, snapshots=BLOCK, data_rank=r, data_size=2, normalize=True).norm_factors
        for r in range(2)
    ]
    assert factors[0].shape == (2,) and torch.equal(factors[0], factors[1])


def test_normalised_batches_are_the_raw_rows_times_the_factors(suite, token_ids):
    p = provider(suite, token_ids, snapshots=BLOCK, normalize=True)
    raw = provider(suite, token_ids, snapshots=BLOCK)
    for scaled, plain in zip(p, raw, strict=True):
        assert torch.equal(scaled, plain * p.norm_factors[None, :, None])
    p.close()
    raw.close()


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_run_that_stops_at_batch_k_prefetches_no_chunk_past_it(suite, token_ids, drop_last):
    """Endless epochs, as a training run streams them: batch k is its last, so the chunk after it
    is not harvested in the background (on a GPU, one chunk's forward through every snapshot)."""
    p = ResidentSnapshotProvider(suite, HOOK, token_ids, 40, chunk_seqs=5, snapshots=BLOCK, drop_last=drop_last)
    per_epoch = p.batches_per_epoch
    endless = p.batches(0)
    reference = [next(endless) for _ in range(per_epoch)]
    assert p._pending[0] == (1, 0)  # without a stop the next epoch's first chunk is on its way
    endless.close()
    reference += list(p.batches(per_epoch, stop=per_epoch + 2))
    ends = np.cumsum([int(p.keep_NL[torch.from_numpy(c)].sum()) for c in p._chunks(0)])
    in_first_chunk = int(ends[0]) // 40  # the batches wholly inside chunk 0
    assert in_first_chunk >= 1
    for start, stop, last_chunk in ((0, in_first_chunk, (0, 0)), (1, per_epoch, None), (2, per_epoch + 2, None)):
        served = list(p.batches(start, stop=stop))
        assert len(served) == stop - start
        assert all(torch.equal(a, b) for a, b in zip(served, reference[start:stop]))
        pending = None if p._pending is None else p._pending[0]
        assert pending is None, (start, stop, pending)
        if last_chunk is not None:
            assert p._cached_chunk[0] == last_chunk
    p.close()


def test_models_that_do_not_fit_are_refused_with_the_fix(suite, token_ids, monkeypatch):
    monkeypatch.setattr(streaming, "available_memory", lambda device: 1000)
    p = provider(suite, token_ids, snapshots=[0, 1, 2])
    with pytest.raises(ModelsDoNotFitError, match=r"need .* GiB .*--snapshot-parallel"):
        next(iter(p))


def test_chunk_buffers_count_against_the_free_memory(suite, token_ids, monkeypatch):
    """Models that fit alone are refused when their chunk buffers would not, and the message
    counts both; without prefetch and with smaller chunks the same memory holds them."""
    probe = provider(suite, token_ids, snapshots=[0, 1, 2])
    model = probe.models()[0]
    one_model, d_model = streaming.model_bytes(model), model.cfg.d_model
    probe.close()
    seq_len = token_ids.shape[1]
    chunk = lambda n_chunks, seqs: n_chunks * seqs * seq_len * 3 * d_model * 4  # noqa: E731  float32
    # after the first load: 90% of (free + one model) must hold 3 models and the chunks
    free_for = lambda need: int(need / 0.9) + 1 - one_model  # noqa: E731
    monkeypatch.setattr(streaming, "available_memory", lambda device: free_for(3 * one_model + chunk(1, 5)))
    p = provider(suite, token_ids, snapshots=[0, 1, 2])
    with pytest.raises(ModelsDoNotFitError, match=r"and their 2 chunk buffer\(s\) of .* tokens .*chunk_seqs"):
        next(iter(p))
    p.close()
    fits = provider(suite, token_ids, snapshots=[0, 1, 2], prefetch=False)
    assert next(iter(fits)).shape[1] == 3
    fits.close()


def test_bad_rank_arguments_are_refused(suite, token_ids):
    with pytest.raises(ValueError, match="data_rank=2"):
        provider(suite, token_ids, data_rank=2, data_size=2)
    with pytest.raises(ValueError, match="indices of the suite's 3 snapshots"):
        provider(suite, token_ids, snapshots=[3])
    with pytest.raises(ValueError, match=r"snapshots must name each snapshot once, got \[2, 2\]"):
        provider(suite, token_ids, snapshots=[2, 2])


def test_given_inputs_are_checked_not_broadcast_or_crashed_on(suite, token_ids):
    """Norm factors are one per snapshot served, dtypes may be named, and token ids the models
    cannot read are refused naming the snapshot and the fix."""
    from crosslens.core.errors import SnapshotMismatchError

    with pytest.raises(ValueError, match=r"norm_factors holds 1 numbers for 2 snapshots; pass one per snapshot served"):
        provider(
            suite, token_ids, snapshots=BLOCK, normalize=True, norm_factors=[2.0]
        )  # refused before any model loads
    with pytest.raises(ValueError, match=r"norm_factors must be one finite positive number per snapshot"):
        provider(suite, token_ids, snapshots=BLOCK, normalize=True, norm_factors=[2.0, -1.0])
    given = provider(suite, token_ids, snapshots=BLOCK, normalize=True, norm_factors=[2.0, 3.0])
    assert given.norm_factors.tolist() == [2.0, 3.0]
    named = provider(suite, token_ids, snapshots=[0], model_dtype="bf16")
    assert named.model_dtype == named.buffer_dtype == torch.bfloat16
    named.close()
    beyond = token_ids.clone()
    beyond[0, 1] = 100_000
    with pytest.raises(
        SnapshotMismatchError,
        match=r"token id 100000 is outside snapshot 'step0''s vocabulary of \d+; "
        "build the tokens with this suite's tokenizer",
    ):
        next(iter(provider(suite, beyond, snapshots=[0])))
    from crosslens.activations.provider import OnTheFlyProvider

    with pytest.raises(SnapshotMismatchError, match=r"token id 100000 is outside snapshot 'step0''s vocabulary"):
        next(iter(OnTheFlyProvider(suite, HOOK, beyond, 40, chunk_seqs=5, n_epochs=1, normalize=False)))


def test_a_token_tables_hash_is_its_shape_and_int64_bytes_whatever_its_dtype_and_layout():
    """The hash runs.json records: the same for an int32 table, a transposed view and an empty one as
    for its contiguous int64 bytes, read without a copy of a table already in that form."""
    import hashlib

    import numpy as np

    from crosslens.activations.tokens import tokens_sha256

    def by_bytes(table: torch.Tensor) -> str:
        array = np.ascontiguousarray(table.numpy().astype(np.int64))
        return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()

    table = torch.randint(0, 50_000, (7, 5), generator=torch.Generator().manual_seed(0))
    for variant in (table, table.int(), table.T.contiguous().T, table[:0]):
        assert tokens_sha256(variant) == by_bytes(variant)
    assert tokens_sha256(table) != tokens_sha256(table.reshape(5, 7))
