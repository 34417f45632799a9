"""Training and held-out token rows for the pico suite: from the grammar, or from a user's text.

Rows look like the ones harvesting feeds the snapshots later (``crosslens.activations``):
BOS, then ``seq_len - 1`` tokens of a stream of documents joined by EOS. Batch ``step``
is a pure function of (seed, step), so a resumed build sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

from crosslens.core.documents import split_documents
from crosslens.core.packing import pack_documents
from crosslens.tasks.grammar import PicoGrammar

DATASET_PREFIX = "dataset:"


class GrammarCorpus:
    """An endless stream of grammar documents; training and held-out text use different seeds."""

    def __init__(
        self,
        grammar: PicoGrammar,
        tokenizer: PreTrainedTokenizerBase,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
    ) -> None:
        self.grammar = grammar
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed

    def _rows(self, rng: random.Random, n_rows: int) -> Int[torch.Tensor, "n_rows seq_len"]:
        def documents() -> Iterator[list[int]]:
            while True:  # encode in chunks: one Rust call per chunk instead of per document
                texts = [self.grammar.sample_document(rng) for _ in range(32)]
                yield from self.tokenizer(texts, add_special_tokens=False)["input_ids"]

        eos = self.tokenizer.eos_token_id
        return pack_documents(documents(), self.seq_len, n_seqs=n_rows, bos_token_id=eos, eos_token_id=eos)

    def batch(self, step: int) -> Int[torch.Tensor, "batch seq_len"]:
        """The training batch of ``step``."""
        return self._rows(random.Random(f"pico-train-{self.seed}-{step}"), self.batch_size)

    def heldout(self, n_rows: int) -> Int[torch.Tensor, "n_rows seq_len"]:
        """Held-out rows, drawn from a generator no training batch uses."""
        return self._rows(random.Random(f"pico-heldout-{self.seed}"), n_rows)


class TextCorpus:
    """A user's documents, tokenized once; a seeded random sample of whole documents is held out.

    Training rows start at random offsets of the training documents' stream (a pure
    function of seed and step); held-out rows tile the held-out documents' stream, so no
    held-out token is ever in a training row, and the held-out text is spread over the
    whole corpus rather than taken from its end.
    """

    def __init__(
        self,
        documents: Sequence[str],
        tokenizer: PreTrainedTokenizerBase,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        n_heldout_rows: int,
    ) -> None:
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.bos = tokenizer.eos_token_id
        encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
        body = seq_len - 1
        n_heldout_tokens = n_heldout_rows * body
        total = sum(len(ids) + 1 for ids in encoded)
        if total < n_heldout_tokens + 20 * body:
            raise ValueError(
                f"the corpus has {total} tokens, too few for {n_heldout_rows} held-out rows of "
                f"seq_len={seq_len} plus training; give more text, or lower seq_len (the CLI's --seq-len) "
                "or n_eval_sequences (the CLI's --small holds out fewer rows)"
            )
        order = list(range(len(encoded)))
        random.Random(f"pico-heldout-documents-{seed}").shuffle(order)
        heldout_docs: set[int] = set()
        n_taken = 0
        for index in order:  # whole documents, in seeded random order, until the held-out rows are filled
            if n_taken >= n_heldout_tokens:
                break
            heldout_docs.add(index)
            n_taken += len(encoded[index]) + 1
        train: list[int] = []
        heldout: list[int] = []
        for index, ids in enumerate(encoded):  # corpus order within each part
            (heldout if index in heldout_docs else train).extend([*ids, self.bos])
        if len(train) < 20 * body:
            raise ValueError(
                f"after holding out {len(heldout_docs)} of {len(encoded)} documents, {len(train)} training tokens "
                f"remain, too few for seq_len={seq_len}; give more (or shorter) documents, or lower n_eval_sequences "
                "(the CLI's --small holds out fewer rows)"
            )
        self.n_heldout_documents = len(heldout_docs)
        self.train_stream = torch.tensor(train, dtype=torch.long)
        tail = torch.tensor(heldout[:n_heldout_tokens], dtype=torch.long).view(n_heldout_rows, body)
        self._heldout = torch.cat([torch.full((n_heldout_rows, 1), self.bos), tail], dim=1)

    def batch(self, step: int) -> Int[torch.Tensor, "batch seq_len"]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        body = self.seq_len - 1
        starts = torch.randint(0, len(self.train_stream) - body + 1, (self.batch_size,), generator=generator)
        rows = self.train_stream[starts[:, None] + torch.arange(body)[None, :]]
        return torch.cat([torch.full((self.batch_size, 1), self.bos), rows], dim=1)

    def heldout(self, n_rows: int) -> Int[torch.Tensor, "n_rows seq_len"]:
        if n_rows > len(self._heldout):
            raise ValueError(f"only {len(self._heldout)} held-out rows were set aside, not {n_rows}")
        return self._heldout[:n_rows]


def read_user_corpus(spec: str | Sequence[str]) -> list[str]:
    """Documents of a user corpus.

    ``spec`` is a list of local text files (each split by :func:`split_documents`) or
    ``"dataset:NAME:COLUMN"`` (a ``datasets`` dataset already available offline, or a
    folder written by ``Dataset.save_to_disk``; one document per row).
    """
    if isinstance(spec, str):
        if not spec.startswith(DATASET_PREFIX):
            raise ValueError(
                f"corpus {spec!r} is a string but not 'dataset:NAME:COLUMN'; pass local text files as a list"
            )
        return _read_dataset(spec[len(DATASET_PREFIX) :])
    documents: list[str] = []
    for path in map(Path, spec):
        if not path.is_file():
            raise ValueError(f"corpus file {str(path)!r} does not exist; pass paths of local text files")
        documents += split_documents(path.read_text(encoding="utf-8", errors="replace"))
    if not documents:
        raise ValueError(f"the corpus files {list(map(str, spec))} hold no text")
    return documents


def _read_dataset(name_and_column: str) -> list[str]:
    name, sep, column = name_and_column.rpartition(":")
    if not sep or not name or not column:
        raise ValueError(
            f"corpus 'dataset:{name_and_column}' must be 'dataset:NAME:COLUMN', e.g. 'dataset:my_corpus:text'"
        )
    import datasets

    if Path(name).is_dir() and (Path(name) / "dataset_info.json").exists():
        dataset = datasets.load_from_disk(name)
    else:
        try:
            dataset = datasets.load_dataset(name, split="train")
        except Exception as error:  # noqa: BLE001 - the message below names the fix
            raise ValueError(
                f"could not load dataset {name!r} offline ({error}); save it with Dataset.save_to_disk "
                "and pass that folder, or pass local text files"
            ) from error
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    if column not in dataset.column_names:
        raise ValueError(f"dataset {name!r} has no column {column!r}; its columns are {dataset.column_names}")
    documents = [text for text in dataset[column] if isinstance(text, str) and text.strip()]
    if not documents:
        raise ValueError(f"dataset {name!r}, column {column!r} holds no text")
    return documents
