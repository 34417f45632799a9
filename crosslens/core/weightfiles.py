"""A safetensors file's header, read without its data: tensor shapes, and whether the file is whole.

The header (8 bytes of length, then JSON) names every tensor's dtype, shape and byte range,
so a truncated or padded file, or one whose header is garbage, shows before any loader
touches it, and shapes can be compared with a config without reading a weight.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any


class UnreadableHeaderError(ValueError):
    """A file whose safetensors header cannot be read (the message says why)."""


def safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header of the safetensors file at ``path`` (tensor name -> dtype, shape,
    data_offsets; ``__metadata__`` when present), checked against the file's size."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise UnreadableHeaderError(f"{size} bytes, too short for a safetensors header")
            (header_bytes,) = struct.unpack("<Q", prefix)
            if header_bytes > size - 8:
                raise UnreadableHeaderError(f"header claims {header_bytes} bytes but the file holds {size}")
            header = json.loads(handle.read(header_bytes))
    except OSError as error:
        raise UnreadableHeaderError(f"unreadable ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnreadableHeaderError(f"unreadable header ({error})") from None
    if not isinstance(header, dict) or not all(
        isinstance(entry, dict) and "data_offsets" in entry for key, entry in header.items() if key != "__metadata__"
    ):
        raise UnreadableHeaderError("its header is JSON but not a safetensors header")
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_bytes + max(ends, default=0)
    if size != expected:
        raise UnreadableHeaderError(f"{size} bytes where its header needs {expected} (truncated or padded)")
    return header


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a whole safetensors file (None when its size matches its header)."""
    try:
        safetensors_header(path)
    except UnreadableHeaderError as error:
        return str(error)
    return None


def tensor_shapes(header: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a header :func:`safetensors_header` returned."""
    return {key: tuple(entry.get("shape", ())) for key, entry in header.items() if key != "__metadata__"}
