"""Token sets shared by every snapshot of a suite.

A crosscoder example is one token seen by all snapshots, so the token ids are fixed
once, before any model runs: texts are tokenized a single time with the suite's
tokenizer, documents are joined with EOS and packed into rows of ``seq_len`` tokens,
each row starting with BOS (the position most models use as an attention sink, and
which harvesting drops by default).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Int

from crosslens.activations.budget import TokenBudget
from crosslens.activations.config import RECORD_FILES, TokenSource, record_builder
from crosslens.core.documents import read_text, split_documents, text_files
from crosslens.core.errors import CrosslensError
from crosslens.core.launch import is_main_process
from crosslens.core.packing import pack_documents

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_UNKNOWN_SHARE = 0.25
"""Text whose tokens are more than this share unknown is refused. Text in the tokenizer's language
scores near zero (a byte-level BPE has no unknown token at all; a word-level one misses rare
words, a few percent), while text read in the wrong encoding, or a binary file, scores well
above a half. A quarter sits far from both, and above it a crosscoder would spend its features
on the unknown token rather than on the text."""

UNKNOWN_SAMPLE_CHARS = 200_000
"""Characters of each text file tokenized for that check: enough for a stable share, cheap on any file."""


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int | None, int | None]:
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    # GPT-NeoX style tokenizers have no distinct BOS; EOS doubles as the row start.
    return (bos if bos is not None else eos), eos


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    seq_len: int,
    *,
    n_seqs: int | None = None,
    prepend_bos: bool = True,
) -> Int[torch.Tensor, "n_seqs seq_len"]:
    """Tokenize ``texts`` once (no special tokens added) and pack them into rows."""
    bos, eos = _special_ids(tokenizer)
    if prepend_bos and bos is None:
        raise ValueError(
            "the tokenizer defines neither a BOS nor an EOS token to start rows with; pass prepend_bos=False."
        )
    documents = encoded(tokenizer, texts)
    return pack_documents(
        documents, seq_len, n_seqs=n_seqs, bos_token_id=bos if prepend_bos else None, eos_token_id=eos
    )


def encoded(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], batch_size: int = 256) -> Iterator[list[int]]:
    """Each text's token ids, without special tokens (``tokenizer.encode(text, add_special_tokens=False)``),
    encoded ``batch_size`` texts a call (a fast, Rust, tokenizer spreads a batch over the cores,
    where one call per document runs on one); lazy, reading at most one batch ahead."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from _encode_batch(tokenizer, batch)
            batch = []
    if batch:
        yield from _encode_batch(tokenizer, batch)


def _encode_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    out = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    return out["input_ids"]


def text_documents(paths: Sequence[str | Path], *, encoding: str = "utf-8", tokenizer: Any = None) -> Iterator[str]:
    """The documents of text files and folders of ``*.txt`` files, split as the pico build splits
    them: lazily, one file read at a time, so a token table that fills before the last file
    never reads the rest (a corpus folder may be far larger than memory).

    Each file is decoded strictly (:func:`~crosslens.core.documents.read_text`); given the
    ``tokenizer``, a file whose text is mostly unknown tokens is refused (:func:`check_known_tokens`).
    """
    any_text = False
    for path in text_files(list(paths)):
        text = read_text(path, encoding)
        if tokenizer is not None:
            check_known_tokens(
                tokenizer, tokenizer.encode(text[:UNKNOWN_SAMPLE_CHARS], add_special_tokens=False), str(path)
            )
        documents = split_documents(text)
        del text  # the file's documents alone are held while they are tokenized
        any_text = any_text or bool(documents)
        yield from documents
    if not any_text:
        raise ValueError(
            f"--text {' '.join(map(str, paths))}: the files hold no text (blank lines at most); pass files of text"
        )


def unknown_share(tokenizer: Any, token_ids: Sequence[int] | torch.Tensor) -> float:
    """The share of ``token_ids`` that are the tokenizer's unknown token (0 when it has none)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = torch.as_tensor(token_ids).flatten()
    if unk is None or ids.numel() == 0:
        return 0.0
    return float((ids == unk).sum()) / ids.numel()


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The pieces of ``text`` that ``tokenizer`` reads as its unknown token, in order (none where it
    has no unknown token, or cannot say where a token came from)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not getattr(tokenizer, "is_fast", False):
        return []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [text[a:b] for i, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"]) if i == unk]


def check_known_tokens(tokenizer: Any, token_ids: Sequence[int] | torch.Tensor, source: str) -> None:
    """Refuse ``source`` when more than :data:`MAX_UNKNOWN_SHARE` of its tokens are unknown."""
    share = unknown_share(tokenizer, token_ids)
    if share > MAX_UNKNOWN_SHARE:
        raise CrosslensError(
            f"{source}: {share:.0%} of its tokens are unknown to the suite's tokenizer (at most "
            f"{MAX_UNKNOWN_SHARE:.0%} is accepted); is it in the model's language, and in the --encoding given?"
        )


def split_rows(
    tokens_NL: Int[torch.Tensor, "n seq"], n_heldout: int, seed: int
) -> tuple[Int[torch.Tensor, "n_train seq"], Int[torch.Tensor, "n_heldout seq"]]:
    """A seeded random ``n_heldout`` rows held out; the rest, in their original order, for training."""
    if n_heldout <= 0:
        return tokens_NL, tokens_NL[:0]
    if n_heldout >= len(tokens_NL):
        raise ValueError(f"cannot hold out {n_heldout} of {len(tokens_NL)} rows; lower the held-out share")
    order = torch.randperm(len(tokens_NL), generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(len(tokens_NL), dtype=torch.bool)
    held[order[:n_heldout]] = True
    return tokens_NL[~held], tokens_NL[held]


def n_seqs_for_budget(n_tokens: int, seq_len: int) -> int:
    """Rows of ``seq_len`` needed to hold at least ``n_tokens`` tokens (before exclusions)."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens={n_tokens} must be >= 1.")
    return -(-n_tokens // seq_len)


def tokens_from_dataset(
    tokenizer: PreTrainedTokenizerBase,
    dataset: Any,
    seq_len: int,
    n_seqs: int,
    *,
    column: str = "text",
    split: str = "train",
    config_name: str | None = None,
    streaming: bool = True,
    prepend_bos: bool = True,
) -> Int[torch.Tensor, "n_seqs seq_len"]:
    """Rows of token ids from a ``datasets`` dataset (an object, or a hub/local name).

    A name is opened with ``datasets.load_dataset(name, config_name, split=split,
    streaming=streaming)``, so only as many documents as the rows need are read.
    """
    name = dataset if isinstance(dataset, str) else None
    if name is not None:
        dataset = _load_named_dataset(name, column, config_name=config_name, split=split, streaming=streaming)
    elif hasattr(dataset, "keys") and split in dataset:  # a DatasetDict
        dataset = dataset[split]
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None and column not in column_names:
        raise _no_column_error(name, column, column_names)

    def rows() -> Iterator[Any]:
        try:  # what the dataset raises as it is read; its consumer's errors do not pass through here
            yield from dataset
        except Exception as error:  # noqa: BLE001 - the readers of local files raise their own kinds
            if name is None or not Path(name).is_file():
                raise
            raise _unreadable_file_error(name, error) from None

    def texts() -> Iterator[str]:
        for index, row in enumerate(rows()):
            if column not in row:  # a streamed dataset knows its columns only from its rows
                raise _no_column_error(name, column, list(row))
            text = row[column]
            if not isinstance(text, str):
                raise CrosslensError(
                    f"{_dataset_flag(name, column)}: row {index} holds {type(text).__name__} ({str(text)[:40]!r}), not "
                    f"text, in column {column!r}; name a column of text, or drop the rows without it"
                )
            yield text

    return tokenize_texts(tokenizer, texts(), seq_len, n_seqs=n_seqs, prepend_bos=prepend_bos)


def _dataset_flag(name: str | None, column: str) -> str:
    """The ``--dataset`` value that names ``name``'s ``column``."""
    return f"--dataset {name}" + ("" if column == "text" else f":{column}")


def _unreadable_file_error(name: str, error: BaseException) -> CrosslensError:
    detail = " ".join(str(error).split())[:160] or type(error).__name__
    kind = RECORD_FILES.get(Path(name).suffix.lower(), "records")
    return CrosslensError(
        f"--dataset {name}: the file does not read as {kind} records ({detail}); check the file "
        "(.jsonl: one JSON object per line), or pass a plain text file with --text"
    )


def _no_column_error(name: str | None, column: str, columns: Sequence[str]) -> CrosslensError:
    which = f"{_dataset_flag(name, column)}: the dataset" if name is not None else "the dataset"
    return CrosslensError(
        f"{which} has no column {column!r}; its columns are {list(columns)}. Name the text column with "
        "--dataset NAME:COLUMN (column= in Python)"
    )


def _load_named_dataset(name: str, column: str, *, config_name: str | None, split: str, streaming: bool) -> Any:
    """``datasets.load_dataset(name, ...)``, or a local file of records
    (:data:`~crosslens.activations.config.RECORD_FILES`) read by its builder; a name that cannot be
    loaded (not on the Hub, not in the local cache while offline, no network) is refused naming
    ``--dataset`` and what to do."""
    import datasets

    from crosslens.checkpoints.hub import hub_offline, is_network_error

    builder = record_builder(name)
    if builder is not None:
        try:
            return datasets.load_dataset(builder, data_files=str(name), split="train", streaming=streaming)
        except Exception as error:  # noqa: BLE001 - an empty or damaged file: each builder raises its own
            raise _unreadable_file_error(name, error) from None
    try:
        return datasets.load_dataset(name, config_name, split=split, streaming=streaming)
    except Exception as error:  # noqa: BLE001 - network errors come from whichever HTTP client the hub uses
        if not is_network_error(error):
            raise
        if hub_offline() and not Path(name).exists():
            why = "could not be loaded offline: it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        else:
            why = f"could not be loaded from the Hub or a local folder ({' '.join(str(error).split())[:160]})"
        raise CrosslensError(
            f"{_dataset_flag(name, column)}: the dataset {name!r} {why}; check the name (a Hugging Face dataset id "
            "or a local dataset folder), or pass a local text file with --text FILE (dataset= in Python)"
        ) from error


def tokens_from_pico(
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    n_seqs: int,
    *,
    seed: int = 0,
    grammar: Any = None,
    prepend_bos: bool = True,
) -> Int[torch.Tensor, "n_seqs seq_len"]:
    """Rows of token ids from the pico corpus: documents sampled from its grammar.

    ``grammar`` defaults to ``crosslens.tasks.grammar.PicoGrammar()`` (imported lazily). The
    documents come from a generator of their own, seeded by ``seed``, so the same call
    always gives the same rows and they differ from the pico training batches.
    """
    if grammar is None:
        from crosslens.tasks.grammar import PicoGrammar  # lazy: only this source needs the grammar

        grammar = PicoGrammar()
    rng = random.Random(f"crosslens-harvest-{seed}")

    def documents() -> Iterator[list[int]]:
        while True:  # one tokenizer call per 64 documents
            texts = [grammar.sample_document(rng) for _ in range(64)]
            yield from tokenizer(texts, add_special_tokens=False)["input_ids"]

    bos, eos = _special_ids(tokenizer)
    return pack_documents(
        documents(), seq_len, n_seqs=n_seqs, bos_token_id=bos if prepend_bos else None, eos_token_id=eos
    )


def default_excluded_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The pad, BOS and EOS ids of ``tokenizer`` (the tokens kept out of training by default)."""
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    return tuple(sorted(int(i) for i in ids if i is not None))


def keep_mask(
    token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"],
    *,
    exclude_bos: bool = True,
    exclude_token_ids: Sequence[int] = (),
) -> Bool[torch.Tensor, "n_seqs seq_len"]:
    """Which (sequence, position) pairs become training tokens."""
    keep_NL = torch.ones_like(token_ids_NL, dtype=torch.bool)
    if exclude_bos:
        keep_NL[:, 0] = False
    if len(exclude_token_ids):
        excluded = torch.tensor(list(exclude_token_ids), dtype=token_ids_NL.dtype, device=token_ids_NL.device)
        keep_NL &= ~torch.isin(token_ids_NL, excluded)
    return keep_NL


def bos_prepended(token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"], excluded: Sequence[int]) -> bool:
    """Whether the rows were built with BOS prepended (SAELens's ``prepend_bos``): every row
    starts with the same token, one of the ``excluded`` ids."""
    first_N = token_ids_NL[:, 0]
    return bool(len(first_N)) and bool((first_N == first_N[0]).all()) and int(first_N[0]) in excluded


def position_record(*, exclude_bos: bool, exclude_token_ids: Sequence[int]) -> dict[str, Any]:
    """Which positions :func:`keep_mask` keeps, in SAELens's metadata words: ``seqpos_slice``
    (``[1, None]`` drops position 0) and ``exclude_special_tokens`` (the excluded ids)."""
    return {
        "seqpos_slice": [1, None] if exclude_bos else [None],
        "exclude_special_tokens": sorted(int(i) for i in exclude_token_ids),
    }


def recorded_keep_mask(
    token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"],
    seqpos_slice: Sequence[int | None] | None,
    exclude_special_tokens: Sequence[int] | bool | None,
    tokenizer: Any = None,
) -> Bool[torch.Tensor, "n_seqs seq_len"]:
    """The positions a dictionary was trained on, from its :func:`position_record`: every
    position where it records neither. ``exclude_special_tokens=True`` is SAELens's "the
    tokenizer's special tokens" (``sae_lens.util.get_special_token_ids``), which needs
    ``tokenizer``."""
    if exclude_special_tokens is True:
        if tokenizer is None:
            raise ValueError("exclude_special_tokens=True names the tokenizer's special tokens: pass the tokenizer")
        from sae_lens.util import get_special_token_ids

        exclude_special_tokens = get_special_token_ids(tokenizer)
    in_slice_L = torch.zeros(token_ids_NL.shape[1], dtype=torch.bool, device=token_ids_NL.device)
    in_slice_L[slice(*(seqpos_slice or [None]))] = True
    return keep_mask(token_ids_NL, exclude_bos=False, exclude_token_ids=exclude_special_tokens or ()) & in_slice_L


def tokens_sha256(token_ids_NL: Int[torch.Tensor, "n_seqs seq_len"]) -> str:
    """A content hash of a token table (shape and int64 values)."""
    # no copy where the table is already contiguous int64 (a full-size one is 6.4 GB)
    array = np.ascontiguousarray(token_ids_NL.detach().cpu().numpy().astype(np.int64, copy=False))
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(array)  # its buffer, not a bytes copy
    return digest.hexdigest()


def build_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    n_tokens: int,
    seq_len: int,
    *,
    dataset: Any = None,
    column: str = "text",
    split: str = "train",
    seed: int = 0,
) -> Int[torch.Tensor, "n_seqs seq_len"]:
    """The token table for a budget of ``n_tokens`` (rounded up to whole rows).

    ``dataset`` is None for the pico corpus, a ``datasets`` dataset, or a string
    ``"NAME"`` / ``"NAME:COLUMN"`` opened with streaming ``datasets.load_dataset``.
    """
    n_seqs = n_seqs_for_budget(n_tokens, seq_len)
    if dataset is None:
        return tokens_from_pico(tokenizer, seq_len, n_seqs, seed=seed)
    if isinstance(dataset, str) and ":" in dataset:
        dataset, column = dataset.rsplit(":", 1)
    return tokens_from_dataset(tokenizer, dataset, seq_len, n_seqs, column=column, split=split)


def kept_tokens(
    tokenizer: Any, token_ids_NL: torch.Tensor, exclude_bos: bool, exclude_token_ids: Sequence[int] | None
) -> tuple[list[int], torch.Tensor]:
    """The sorted excluded ids (None: the tokenizer's pad, BOS and EOS) and the keep mask."""
    if exclude_token_ids is None:
        exclude_token_ids = default_excluded_ids(tokenizer)
    excluded = sorted({int(i) for i in exclude_token_ids})
    keep_NL = keep_mask(token_ids_NL, exclude_bos=exclude_bos, exclude_token_ids=excluded)
    if not keep_NL.any():
        raise ValueError("every token is excluded; pass more text, exclude_bos=False or fewer exclude_token_ids.")
    return excluded, keep_NL


TABLE_SEED = 0
"""Seeds the pico grammar's documents and which rows of a harvest's token table are held out, so
that a harvest run again reads, and holds out, the same rows."""


def token_tables(
    tokens: TokenSource, budget: TokenBudget, tokenizer
) -> tuple[Int[torch.Tensor, "n_train seq"], Int[torch.Tensor, "n_heldout seq"]]:
    """The token rows of ``budget`` from ``tokens``, split into training rows and the seeded
    held-out rows of its held-out tokens."""
    seq_len, held_tokens = budget.seq_len, budget.heldout
    if held_tokens and not budget.heldout_rows and is_main_process():
        given = (
            f"--heldout-tokens {held_tokens}"
            if budget.heldout_tokens is not None
            else (f"the default held-out share ({held_tokens} tokens, a tenth of --n-tokens)")
        )
        print(
            f"no held-out tokens: {given} is less than one row of --seq-len {seq_len}; pass "
            f"--heldout-tokens {seq_len} or more for a held-out store"
        )
    return split_rows(token_table(tokens, budget, tokenizer), budget.heldout_rows, seed=TABLE_SEED)


def token_table(tokens: TokenSource, budget: TokenBudget, tokenizer) -> Int[torch.Tensor, "n_rows seq"]:
    """The token table of ``budget``'s training and held-out rows from ``tokens``; text that is
    not what it claims is refused."""
    kind, value = tokens.resolve()
    seq_len, n_rows = budget.seq_len, budget.n_rows + budget.heldout_rows
    try:
        if kind == "text":
            documents = text_documents(value, tokenizer=tokenizer, encoding=tokens.encoding)
            return tokenize_texts(tokenizer, documents, seq_len, n_seqs=n_rows)
        if kind == "dataset":
            name, _, column = str(value).partition(":")
            table = tokens_from_dataset(tokenizer, name, seq_len, n_rows, column=column or "text")
            check_known_tokens(tokenizer, table[:, 1:], f"--dataset {value}")
            return table
        return tokens_from_pico(tokenizer, seq_len, n_rows, seed=TABLE_SEED)
    except ValueError as error:
        if "rows of seq_len" not in str(error):
            raise
        raise CrosslensError(
            f"--n-tokens {budget.n_tokens} (+ --heldout-tokens {budget.heldout}) is more than the text holds at "
            f"--seq-len {seq_len}; lower --n-tokens, or give more text ({' '.join(str(error).split())})"
        ) from None
