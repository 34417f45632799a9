"""Checks and preparation of a command's inputs before any model loads or anything is written:
the model's depth and context, the documents of text files (decoded strictly, mostly known
tokens), whether a harvest's token table and store fit in memory and on disk, and the held-out
split of a token table. Imported by the commands' functions: it imports torch."""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.devices import available_memory
from crosslens.core.errors import CrosslensError
from crosslens.core.launch import local_world_size
from crosslens.core.paths import folder_bytes, free_disk
from crosslens.core.units import format_bytes
from crosslens.pico.corpus import split_documents, text_files
from crosslens.training.model_sizes import LAYER_KEYS, config_context, config_int

if TYPE_CHECKING:
    from crosslens.checkpoints.suite import CheckpointSuite

# Refuse text whose tokens are more than this share unknown. Text in the tokenizer's language
# scores near zero (a byte-level BPE has no unknown token at all; a word-level one misses rare
# words, a few percent), while text read in the wrong encoding, or a binary file, scores well
# above a half. A quarter sits far from both, and above it a crosscoder would spend its
# features on the unknown token rather than on the text.
MAX_UNKNOWN_SHARE = 0.25
# Characters of each file tokenized for that check: enough for a stable share, cheap on any file.
UNKNOWN_SAMPLE_CHARS = 200_000
# Bytes of memory per token of the token table while it is built and split: the int64 table
# packing fills, the copy its split into training and held-out rows makes, and the kept-token masks.
TOKEN_TABLE_BYTES_PER_TOKEN = 20


def suite_config(suite: CheckpointSuite) -> dict | None:
    """The config.json of ``suite``'s first snapshot on this machine (None when no config is at
    hand, e.g. a hub model not yet downloaded)."""
    try:
        folder = suite.snapshot_folder(suite.snapshots[0])
    except Exception:  # noqa: BLE001 - no local copy: the checks that need it are skipped
        return None
    if folder is None or not (Path(folder) / "config.json").is_file():
        return None
    return json.loads((Path(folder) / "config.json").read_text())


def suite_n_layers(suite: CheckpointSuite) -> int | None:
    """The number of transformer blocks of ``suite``'s first snapshot, read from its config.json."""
    return config_int(suite_config(suite) or {}, LAYER_KEYS)


def suite_context(suite: CheckpointSuite) -> int | None:
    """The longest sequence ``suite``'s snapshots take (n_ctx / max_position_embeddings)."""
    return config_context(suite_config(suite) or {})


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The text of ``path`` decoded strictly with ``encoding``: a binary file, or a file in
    another encoding, is refused naming the file, the first bad byte and the ``--encoding`` fix."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CrosslensError(f"--encoding {encoding}: unknown encoding; use e.g. utf-8, latin-1 or cp1252") from None
    data = path.read_bytes()
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))  # these hold NUL bytes in text
    if not wide and b"\0" in data[:65536]:
        at = data.index(b"\0")
        raise CrosslensError(f"{path} looks binary (a NUL byte at offset {at}), not text; pass text files (--text)")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        hint = (
            "pass --encoding NAME (e.g. --encoding latin-1)" if encoding == "utf-8" else "pass the --encoding it is in"
        )
        raise CrosslensError(
            f"{path} is not valid {encoding} (byte 0x{data[error.start]:02x} at offset {error.start}); {hint}"
        ) from None


def unknown_share(tokenizer: Any, token_ids: Sequence[int] | torch.Tensor) -> float:
    """The share of ``token_ids`` that are the tokenizer's unknown token (0 when it has none)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = torch.as_tensor(token_ids).flatten()
    if unk is None or ids.numel() == 0:
        return 0.0
    return float((ids == unk).sum()) / ids.numel()


def check_known_tokens(tokenizer: Any, token_ids: Sequence[int] | torch.Tensor, source: str) -> None:
    """Refuse ``source`` when more than :data:`MAX_UNKNOWN_SHARE` of its tokens are unknown."""
    share = unknown_share(tokenizer, token_ids)
    if share > MAX_UNKNOWN_SHARE:
        raise CrosslensError(
            f"{source}: {share:.0%} of its tokens are unknown to the suite's tokenizer (at most "
            f"{MAX_UNKNOWN_SHARE:.0%} is accepted); is it in the model's language, and in the --encoding given?"
        )


def text_documents(paths: Sequence[str | Path], *, encoding: str = "utf-8", tokenizer: Any = None) -> Iterator[str]:
    """The documents of text files and folders of ``*.txt`` files, split as the pico build splits
    them: lazily, one file read at a time, so a token table that fills before the last file
    never reads the rest (a corpus folder may be far larger than memory).

    Each file is decoded strictly (:func:`read_text`); given the ``tokenizer``, a file whose
    text is mostly unknown tokens is refused (:func:`check_known_tokens`).
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


def check_output_folder(path: str | Path, flag: str = "--out", holds: str = "its results") -> None:
    """Refuse a folder path a command writes into when a file is there already, naming ``flag``."""
    if Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
        raise CrosslensError(f"{flag} {path} is a file, not a folder; pass a folder path for {holds}")


def check_output_file(
    path: str | Path, flag: str = "--out", example: str = "report.html", suffixes: Sequence[str] = (), kind: str = ""
) -> Path:
    """``path`` of a file a command writes when its work is done (a report, a table), with its
    folder made now: a folder that cannot be made or written is refused before the work starts,
    naming ``flag`` and the path. The check writes and removes a file there, as permission bits
    alone miss read-only and virtual file systems (and say yes to root). With ``suffixes``, a path
    ending otherwise is refused, saying ``kind`` (what the file is)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CrosslensError(f"{flag} {path} is a folder; pass a file path, e.g. {flag} {path / example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise CrosslensError(f"{flag} {path}: {kind}; pass e.g. {flag} {path.with_suffix(suffixes[0])}")
    fix = f"pass {flag} a path in a folder you can write"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CrosslensError(
            f"{flag} {path}: cannot create its folder {path.parent} ({error.strerror or error}); {fix}"
        ) from None
    try:
        handle, probe = tempfile.mkstemp(dir=path.parent, prefix=".crosslens-write-check-")
    except OSError as error:
        raise CrosslensError(
            f"{flag} {path}: cannot write in {path.parent} ({error.strerror or error}); {fix}"
        ) from None
    os.close(handle)
    os.unlink(probe)
    return path


def check_token_table_fits(n_tokens: int) -> None:
    """Refuse a token table of ``n_tokens`` (rows x seq_len, held-out rows included) that cannot be
    built in the memory available, before its text is read: one for every torchrun worker on this
    machine, each of which builds its own."""
    workers = local_world_size()
    table = n_tokens * TOKEN_TABLE_BYTES_PER_TOKEN * workers
    memory = available_memory("cpu")
    if memory is not None and table > memory:
        each = f", one for each of the {workers} workers on this machine," if workers > 1 else ""
        raise CrosslensError(
            f"--n-tokens: a table of {n_tokens:,} tokens{each} needs about {format_bytes(table)} of memory while it is "
            f"built, and {format_bytes(memory)} is available; lower --n-tokens (+ --heldout-tokens) to at most "
            f"about {memory // (TOKEN_TABLE_BYTES_PER_TOKEN * workers):,}"
        )


def check_harvest_fits(
    n_tokens: int, n_snapshots: int, widths: Sequence[int] | None, value_bytes: int, outs: Sequence[str | Path]
) -> int | None:
    """Refuse a harvest of ``n_tokens`` (token table rows x seq_len, held-out rows included) whose
    token table cannot fit in memory, or whose stores (``outs``) cannot fit on their disk, before
    anything is allocated or written. Returns the stores' bytes (None when ``widths``, the values
    per token of each hook, are unknown)."""
    check_token_table_fits(n_tokens)
    if widths is None:
        return None
    per_token = n_snapshots * sum(widths) * value_bytes
    # the token file holds each row (int64), and each kept token's id (int64) and position (2 x int64)
    store = n_tokens * (per_token + 32)
    needed = store - sum(folder_bytes(out) for out in outs)  # what is there is resumed or replaced
    free = free_disk(outs[0])
    if free is not None and needed > free:
        raise CrosslensError(
            f"--out {outs[0]}: the store needs about {format_bytes(store)} ({n_tokens:,} tokens x {n_snapshots} "
            f"snapshots x {sum(widths)} values x {value_bytes} B) and its disk has {format_bytes(free)} free; free "
            "space, lower --n-tokens or --n-snapshots, pass --store-dtype bfloat16, or harvest into another --out"
        )
    return store


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
