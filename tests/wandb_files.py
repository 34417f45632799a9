"""Reading what an offline W&B run wrote, for tests that check what training logged."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The protobuf records of an offline ``.wandb`` file, in order. The file is a LevelDB-style
    log: 32 KiB blocks after a 7-byte header, each record in fragments with a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos = run_file.read_bytes(), 32768, 7
    chunk = b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # block trailer too short for a header
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        chunk += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def item_values(items: Any) -> dict[str, str]:
    """key -> value_json of a record's summary or history items."""
    return {it.key or "/".join(it.nested_key): it.value_json for it in items}
