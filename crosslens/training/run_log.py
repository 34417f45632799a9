"""The run's own log: ``RUN/train_log.jsonl``, one JSON object a line, written by rank 0.

It holds what W&B would show of a run's scalars, without W&B, and says where the run's time
went (``benchmarks/user_run.py`` reads it). Each record has a ``kind``:

- ``start``: a fit began, at ``step`` 0 or at the checkpoint's step on a resume, with the run's
  ``total_steps`` and ``d_sae``;
- ``step``: every ``logger.wandb_log_frequency`` steps, the ``step``, ``n_tokens``, ``seconds``
  (wall time since this fit began, read after the step's loss came back from the device, so
  the step had finished; W&B's ``performance/tokens_per_second`` is the tokens over these
  seconds since the last record), ``loss``, ``l0``, ``lr`` and the loss ``coefficients``;
- ``checkpoint``: its ``step`` and the ``seconds`` writing it took;
- ``final``: the ``step`` and the ``seconds`` saving the trained crosscoder took;
- ``evaluation``: the ``seconds`` the quality table took (written by ``crosslens train``).

A resume drops what the interrupted run wrote after the checkpoint it continues from, so the
step records read as one run (a final save or evaluation before it is dropped too: the resume
writes its own), and its ``start`` record says where it picked up. The seconds
differ from one run to the next, so the log is not sealed with the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.errors import CrosslensError
from crosslens.core.paths import TRAIN_LOG_NAME


class RunLogError(CrosslensError):
    """A run log that cannot be read."""


_BEFORE_A_CHECKPOINT = ("start", "step", "checkpoint")
"""The records a run writes up to a checkpoint, each with its step."""


class RunLog:
    """Appends records to one run's log; with ``path`` None (a mesh's other ranks, a trainer
    without a run folder) it writes nothing."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        self.began = time.perf_counter()

    @classmethod
    def begin(cls, path: str | Path | None, *, step: int, **facts: Any) -> RunLog:
        """The log of a fit starting at ``step``: a fresh run's log starts empty; a resumed one
        keeps the starts, steps and checkpoints up to ``step`` (a final save or an evaluation
        came after it, of a crosscoder the resume replaces). Writes the ``start`` record."""
        log = cls(path)
        if log.path is not None:
            log.path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if step and log.path.is_file():
                kept = [r for r in read_run_log(log.path) if r["kind"] in _BEFORE_A_CHECKPOINT and r["step"] <= step]
            log.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        log.write("start", step=step, **facts)
        return log

    def write(self, kind: str, **fields: Any) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"kind": kind, **fields}) + "\n")

    def seconds(self) -> float:
        """Wall seconds since this fit began."""
        return round(time.perf_counter() - self.began, 4)

    @contextmanager
    def timed(self, kind: str, device: str | torch.device, **fields: Any) -> Iterator[None]:
        """Write a ``kind`` record with the ``seconds`` the block took; the device's queue is
        drained first, so the steps before it are not counted in."""
        if self.path is None:
            yield
            return
        _synchronize(device)
        began = time.perf_counter()
        yield
        _synchronize(device)
        self.write(kind, seconds=round(time.perf_counter() - began, 4), **fields)


def read_run_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run log, refusing a line that is not one JSON object with a ``kind``."""
    if Path(path).is_dir():
        raise RunLogError(f"{path} is a folder; a run's log is the file {Path(path) / TRAIN_LOG_NAME}")
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunLogError(
                f"{path}:{number}: not JSON ({err.msg}); the run log is written by crosslens train alone"
            ) from None
        if not isinstance(record, dict) or "kind" not in record:
            raise RunLogError(f"{path}:{number}: a record must be a JSON object with a 'kind'")
        records.append(record)
    return records


def append_record(run_dir: str | Path, kind: str, **fields: Any) -> None:
    """Add one record to ``run_dir``'s log (what happens after training: the evaluation)."""
    RunLog(Path(run_dir) / TRAIN_LOG_NAME).write(kind, **fields)


def _synchronize(device: str | torch.device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
