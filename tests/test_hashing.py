"""A file hashed once per process while it is unchanged (``remembered_file_sha256``): the run's
weights that several checks of one command name are read once, and a changed file is read again; and
the names of a saved crosscoder's files, which are SAELens's."""

from __future__ import annotations

import hashlib
import os

from crosslens.core.hashing import file_sha256, remembered_file_sha256


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_file_is_hashed_again_only_when_its_size_or_time_changes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 100)
    stat = path.stat()
    assert remembered_file_sha256(path) == sha(b"a" * 100) == file_sha256(path)

    # rewritten in place with its size and time kept: not read again (what the size and time stand for)
    path.write_bytes(b"z" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert remembered_file_sha256(str(path)) == sha(b"a" * 100) != file_sha256(path)

    path.write_bytes(b"b" * 101)  # another size
    assert remembered_file_sha256(path) == sha(b"b" * 101)

    stat = path.stat()
    path.write_bytes(b"c" * 101)  # the same size, written at another time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert remembered_file_sha256(path) == sha(b"c" * 101)


def test_a_saved_crosscoder_s_file_names_are_saelens_s():
    """crosslens names a saved crosscoder's two files itself (its browser imports no torch, so no
    SAELens), and they must stay the names SAELens reads and writes."""
    from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

    from crosslens.core.metadata import CFG_NAME, WEIGHTS_NAME

    assert (CFG_NAME, WEIGHTS_NAME) == (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME)
