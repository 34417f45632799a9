"""Text files as documents: which files a list of paths names (:func:`text_files`), each decoded
strictly (:func:`read_text`) and split into documents (:func:`split_documents`). The pico build
reads a user's corpus this way, and a harvest its ``--text``; both then tokenize the documents
and pack them into rows (:mod:`crosslens.core.packing`)."""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from pathlib import Path

from crosslens.core.errors import CrosslensError

DOCUMENT_CHARS = 2000
"""About how long a document is when a text has no blank lines to split it at."""


def split_documents(text: str, max_chars: int = DOCUMENT_CHARS) -> list[str]:
    """Documents of a text file: its blank-line-separated blocks, with any block longer than
    ``2 * max_chars`` (a file with no blank lines, one line per sentence or hard-wrapped)
    cut at line ends into pieces of about ``max_chars`` characters."""
    documents: list[str] = []
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        block = block.strip()
        if len(block) <= 2 * max_chars:
            if block:
                documents.append(block)
            continue
        piece: list[str] = []
        size = 0
        for line in block.split("\n"):
            piece.append(line)
            size += len(line) + 1
            if size >= max_chars:
                documents.append("\n".join(piece).strip())
                piece, size = [], 0
        if "\n".join(piece).strip():
            documents.append("\n".join(piece).strip())
    return documents


def text_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The text files named by ``paths``: files as given, folders expanded to their ``*.txt``
    files (recursively, sorted), so the same folder always gives the same order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise ValueError(f"the folder {str(path)!r} holds no .txt files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{str(path)!r} does not exist; pass text files or folders of .txt files")
    return files


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
