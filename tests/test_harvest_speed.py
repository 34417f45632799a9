"""The harvest's shortcuts change no byte it writes and skip no check it makes.

The store a harvest writes is compared, shard by shard, with what the naive path
computes (``run_with_cache`` at the hook, then the ``.npy`` bytes and float64 norms of
the kept rows), so any speed-up that moved a value would fail here. The tokenizer check
skips loading only the snapshots whose tokenizer files are the reference's own bytes.
"""

from __future__ import annotations

import hashlib
import io
import shutil

import numpy as np
import pytest
import torch
from hf_cache import make_word_tokenizer
from trust_fixtures import HOOK, harvest, token_table, write_suite

from crosslens.activations.harvest import stored_norm_sum
from crosslens.activations.store import from_storage, shard_relpath, to_storage
from crosslens.activations.tokens import default_excluded_ids, keep_mask
from crosslens.checkpoints import CheckpointSuite
from crosslens.core import devices
from crosslens.core.errors import TokenizerMismatchError


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("suite"))


def npy_bytes(rows_ND: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows_ND.numpy())
    return buffer.getvalue()


def test_store_bytes_equal_the_naive_forward(suite_root, tmp_path):
    tokens_NL = token_table()
    store = harvest(suite_root, tmp_path / "store")
    suite = CheckpointSuite.local(suite_root)
    keep_NL = keep_mask(tokens_NL, exclude_bos=True, exclude_token_ids=default_excluded_ids(suite.tokenizer()))
    manifest, checked = store.manifest, 0
    for s in range(len(suite)):
        model = suite.load(s)
        with torch.inference_mode():
            _, cache = model.run_with_cache(tokens_NL, names_filter=HOOK)
        for k, shard in enumerate(manifest["shards"]):
            a, b = shard["seq_start"], shard["seq_stop"]
            expected_ND = cache[HOOK][a:b][keep_NL[a:b]].contiguous()
            rel = shard_relpath(HOOK, s, k)
            record, written = manifest["files"][rel], (tmp_path / "store" / rel).read_bytes()
            assert written == npy_bytes(expected_ND)
            assert record["sha256"] == hashlib.sha256(written).hexdigest()
            assert record["rows"] == expected_ND.shape[0] > 0
            norm_sum = torch.linalg.vector_norm(expected_ND, dim=1, dtype=torch.float64).sum()
            assert record["norm_sum"] == float(norm_sum)  # exactly: the normalisation factors come from it
            checked += 1
    assert checked == 3 * 5


def test_identical_tokenizer_files_are_not_loaded_again(suite_root, tmp_path, monkeypatch):
    suite = CheckpointSuite.local(suite_root)
    loaded = []
    real = CheckpointSuite._tokenizer_at
    monkeypatch.setattr(
        CheckpointSuite, "_tokenizer_at", lambda self, ref: loaded.append(ref.revision) or real(self, ref)
    )
    assert suite.check_same_tokenizer() == ("step0", "step10", "step20")
    assert loaded == []  # every folder holds the reference's own tokenizer files

    # other bytes, the same vocabulary (a re-saved tokenizer): loaded, compared, accepted
    shutil.copytree(suite_root, tmp_path / "suite")
    resaved = make_word_tokenizer()
    resaved.model_max_length = 77
    resaved.save_pretrained(tmp_path / "suite" / "step10")
    assert CheckpointSuite.local(tmp_path / "suite").check_same_tokenizer() == ("step0", "step10", "step20")
    assert loaded == ["step10"]

    # another vocabulary in other files: still refused, naming the snapshot
    odd = make_word_tokenizer()
    odd.add_tokens(["zebra"])
    odd.save_pretrained(tmp_path / "suite" / "step20")
    with pytest.raises(TokenizerMismatchError, match="step20"):
        CheckpointSuite.local(tmp_path / "suite").check_same_tokenizer()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("rows_per_slice", [1, 7, 4096])
def test_sliced_norm_sum_is_the_whole_shard_cast_bit_for_bit(dtype, rows_per_slice):
    generator = torch.Generator().manual_seed(rows_per_slice)
    acts_ND = torch.randn(1000, 96, generator=generator) * 10 ** torch.randn(1000, 1, generator=generator)
    stored = to_storage(acts_ND, dtype)
    whole = torch.linalg.vector_norm(from_storage(stored, dtype), dim=1, dtype=torch.float64).sum()
    assert stored_norm_sum(stored, dtype, rows_per_slice) == float(whole)
    assert stored_norm_sum(stored[:0], dtype, rows_per_slice) == 0.0


def test_release_model_trims_the_heap_only_once_the_process_has_grown(monkeypatch):
    """The first release trims; later ones only when resident memory is more than the heap's
    growth above what it was after the last trim."""
    trims, resident = [], [1000 << 20]
    monkeypatch.setattr(devices, "_malloc_trim", lambda: trims.append)
    monkeypatch.setattr(devices, "resident_bytes", lambda: resident[0])
    heap = devices.HeapTrim()  # no trim yet
    release = lambda: devices.release_model(torch.nn.Linear(4, 4), heap=heap)  # noqa: E731

    release()
    assert trims == [0] and heap.resident_after == 1000 << 20
    resident[0] = int((1000 << 20) * (1 + heap.growth))  # at the margin: kept
    release()
    assert trims == [0]
    resident[0] += 1 << 20  # past it: given back
    release()
    assert trims == [0, 0] and heap.resident_after == resident[0]
    monkeypatch.setattr(devices, "resident_bytes", lambda: None)  # unreadable: trim every time
    release()
    release()
    assert trims == [0, 0, 0, 0]


def test_resident_bytes_reads_this_process():
    import platform

    resident = devices.resident_bytes()
    if platform.system() != "Linux":
        assert resident is None
        return
    assert resident is not None and 10 << 20 < resident < 1 << 40
    # 128 MiB, touched: the count must grow by most of it (other pages of the process may leave
    # memory meanwhile, under the pressure of the other test worker: 16 MiB have)
    block = torch.ones(128 << 20, dtype=torch.uint8)
    assert devices.resident_bytes() - resident > 80 << 20
    del block
