"""Stopping training between two steps, so that a stop keeps its work.

A Ctrl-C (SIGINT) or SIGTERM that lands in the middle of an optimizer step leaves weights,
optimizer and counters out of step with each other: nothing consistent can be saved. So
while :func:`stop_between_steps` is active, the first signal only records the request; the
runner looks at it before reading the next batch, saves a checkpoint of the step reached and
raises :class:`TrainingInterrupted`, whose message says how to continue. A second signal
stops at once (the work since the last checkpoint is then lost).

Signal handlers belong to the main thread; elsewhere, and when ``enabled`` is False (a
torchrun job, whose ranks would have to agree on the step), signals act as usual.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal; the message says what was kept and how to continue."""

    def __init__(self, message: str, *, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


@dataclass
class StopRequest:
    signum: int | None = None
    """The signal that asked training to stop (None: none yet)."""

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextmanager
def stop_between_steps(*, enabled: bool = True) -> Iterator[StopRequest]:
    """Turn SIGINT and SIGTERM into a :class:`StopRequest` for the ``with`` block."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame: object) -> None:
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint of it "
            "(send it again to stop at once, losing the steps since the last checkpoint)",
            file=sys.stderr,
        )

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
