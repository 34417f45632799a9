"""The suite's snapshot models for the live panels: loaded on first use, checked against what the
crosscoder records before they answer anything, and kept resident up to a bound.

A run's readings go through every snapshot in order, again and again. Least-recently-used eviction
would then miss on every model once the suite is larger than the bound; so the first models loaded
stay, and a snapshot beyond the bound is loaded for the request that needs it and let go after it
(each request then loads ``n_snapshots - capacity`` models, never more).

The pool is not locked: :class:`~crosslens.live.models.LiveModels` runs one computation at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from crosslens.activations.forward import check_hooks
from crosslens.activations.harvest import load_snapshot
from crosslens.activations.partners import snapshot_problem
from crosslens.checkpoints.identity import identified, snapshot_identity
from crosslens.core.devices import release_model
from crosslens.core.errors import CrosslensError, LiveMismatchError, LiveUnavailableError
from crosslens.core.hooks import hook_width
from crosslens.live.config import RETRY


class ResidentModels:
    """Snapshot models of ``suite`` on ``device`` in ``dtype``, at most ``capacity`` kept resident.

    Args:
        suite: the crosscoder's suite (its snapshots in the crosscoder's order).
        recorded: the crosscoder's record of each snapshot (revision, step, identities).
        hook: the crosscoder's hook, which every model must have.
        d_in: the crosscoder's width, which the hook's activations must have.
        fix: what a refusal tells the user to do (e.g. which flag names another suite).
    """

    def __init__(
        self,
        suite: Any,
        recorded: Sequence[dict[str, Any]],
        hook: str,
        d_in: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
        capacity: int,
        fix: str,
    ) -> None:
        self.suite, self.recorded, self.hook, self.d_in = suite, list(recorded), hook, int(d_in)
        self.device, self.dtype, self.capacity, self.fix = device, dtype, int(capacity), fix
        self.tokenizer = suite.tokenizer()
        self.loads = [0] * len(recorded)
        """How many times each snapshot has been loaded (a resident one, once)."""
        self.model_bytes: int | None = None
        """Parameters and buffers of one loaded model."""
        self.n_ctx: int | None = None
        self._models: dict[int, Any] = {}

    @property
    def resident(self) -> list[int]:
        return sorted(self._models)

    def context(self) -> int:
        """The models' context length (``n_ctx``), from the first snapshot's model (loaded for it)."""
        if self.n_ctx is None:
            with self.use(0) as model:
                self.n_ctx = int(model.cfg.n_ctx)
        return self.n_ctx

    @contextmanager
    def use(self, s: int) -> Iterator[Any]:
        """Snapshot ``s``'s model for the ``with`` block: the resident one, else loaded (and kept
        while there is room, else released on leaving the block)."""
        model = self._models.get(s)
        if model is not None:
            yield model
            return
        model = self._load(s)
        kept = len(self._models) < self.capacity
        if kept:
            self._models[s] = model
        try:
            yield model
        finally:
            if not kept:
                release_model(model)

    def _load(self, s: int) -> Any:
        ref = self.suite.snapshots[s]
        try:
            identity = snapshot_identity(self.suite, ref)
            before = self._problem(s, identified(ref, identity))
            if before is not None:
                raise LiveMismatchError(before)
            record, model = load_snapshot(
                self.suite, ref, device=self.device, model_dtype=self.dtype, reference_tokenizer=self.tokenizer
            )
        except LiveUnavailableError:
            raise
        except (CrosslensError, FileNotFoundError) as error:
            raise LiveUnavailableError(
                f"snapshot {ref.revision} of {self.suite.model_id} cannot be loaded "
                f"({' '.join(str(error).split())}); {self.fix}"
            ) from None
        except OSError as error:  # a file that could not be read this time: the suite is not at fault
            raise LiveUnavailableError(
                f"snapshot {ref.revision} of {self.suite.model_id} could not be read "
                f"({' '.join(str(error).split())}); {RETRY}"
            ) from None
        self.loads[s] += 1
        problem = self._problem(s, {**record, "source": identity or {}}) or self._shape_problem(model)
        if problem is not None:
            release_model(model)
            raise LiveMismatchError(problem)
        if self.model_bytes is None:
            tensors = [*model.parameters(), *model.buffers()]
            self.model_bytes = sum(t.numel() * t.element_size() for t in tensors)
        return model

    def _problem(self, s: int, offered: dict[str, Any]) -> str | None:
        problem = snapshot_problem([self.recorded[s]], [offered], require_identity=False)
        if problem is None:
            return None
        return f"the suite {self.suite.model_id} is not the crosscoder's: {problem}; {self.fix}"

    def _shape_problem(self, model: Any) -> str | None:
        try:
            check_hooks(model, [self.hook])
        except ValueError as error:
            return (
                f"the suite {self.suite.model_id} does not fit the crosscoder: {str(error).split(';')[0]}; {self.fix}"
            )
        width = hook_width(self.hook, int(model.cfg.d_model), int(model.cfg.d_mlp or 0))
        if width != self.d_in:
            return (
                f"the suite {self.suite.model_id} does not fit the crosscoder: its models give {width} numbers at "
                f"{self.hook}, the crosscoder reads d_in {self.d_in}; {self.fix}"
            )
        return None

    def close(self) -> None:
        for model in self._models.values():
            release_model(model)
        self._models.clear()
