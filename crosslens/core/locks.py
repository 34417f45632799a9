"""Cross-process locks on output folders (pico suite builds, activation stores).

One mechanism: an advisory ``flock`` on a small lock file. The OS drops the lock when its
holder exits, however it exits, so a crashed or killed job never blocks the next one.
The holder writes its pid (and host and start time) into the file, so whoever finds the
lock taken can say who holds it. Without ``fcntl`` (not POSIX) there is no lock.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _holder_text(fd: int) -> str:
    try:
        return os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def describe_holder(text: str) -> str:
    """``"process 1234 on host, since 12:00:00"`` from a lock file's contents."""
    return text if text else "another process (its pid is not written yet)"


@contextmanager
def exclusive_lock(path: str | os.PathLike, *, on_busy: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    When another process holds it, ``on_busy(holder)`` is called with a description of
    the holder (pid, host, since when); it may raise to give up, else this waits.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no truncation: the holder's pid stays readable
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_busy is not None:
                on_busy(describe_holder(_holder_text(fd)))
            fcntl.flock(fd, fcntl.LOCK_EX)
        stamp = f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock on ``path`` right now (None: nobody, or no such lock file)."""
    if fcntl is None or not Path(path).is_file():  # pragma: no cover
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe_holder(_holder_text(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
