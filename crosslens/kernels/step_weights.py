"""What the trainer's optimizer writes beside the weights for the next step, asked for by argument.

Between steps the weights normally change only in the optimizer's pass, which reads and writes
every element anyway (any other in-place edit is caught by the weight's version counter, and
the step then makes what it needs itself). So the trainer's Adam can write each weight's copy
rounded to autocast's dtype as it updates it, and the decoder's row norms (the Triton pass sums
them as it writes each row), and the next step takes them where it would otherwise read the
float32 weight once more: the same bytes, one weight-sized float32 read fewer per weight and
step.

The exchange is one object, passed by argument. The trainer holds a :class:`StepWeights` and runs
each step inside its :meth:`~StepWeights.reading`, which hands it to the crosscoder for the length
of the step (``crosscoder.step_weights``); the crosscoder passes it to the kernels it calls
(``step_weights=``), whose :func:`written_copy` and :func:`handed_row_norms` ask it for what the
optimizer wrote and note what they read. :meth:`~StepWeights.writes` then says what the step read,
as a :class:`WeightWrites` the trainer passes to ``optimizer.step(writes=...)``, which returns what
it wrote (:class:`PreparedWeights`) for the next step (:meth:`~StepWeights.keep`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch


def parameter_of(W: torch.Tensor) -> torch.Tensor | None:
    """The tensor ``W`` is all of, laid out the same (a parameter reshaped to a matrix), or None."""
    root = W if W._base is None else W._base
    same = W.is_contiguous() and root.is_contiguous() and W.numel() == root.numel()
    return root if same and W.data_ptr() == root.data_ptr() else None


@dataclass(frozen=True)
class WeightWrites:
    """What the optimizer's next pass is asked to write beside the weights it updates: the
    rounded copies and row norms the step before read (:meth:`StepWeights.writes`), handed to
    ``optimizer.step(writes=...)`` by argument."""

    copies: tuple[torch.Tensor, ...]
    """Parameters whose copy rounded to :attr:`copy_dtype` the step read."""
    copy_dtype: torch.dtype | None
    """The dtype of those copies."""
    norms: tuple[torch.Tensor, ...]
    """Parameters whose row norms (along the last dimension, float32) the step read."""

    def copy_of(self, W: torch.Tensor) -> torch.Tensor | None:
        """Where ``W``'s rounded copy is to be written, or None where none is asked for."""
        if self.copy_dtype is None or not any(W is p for p in self.copies):
            return None
        return torch.empty_like(W, dtype=self.copy_dtype)

    def norms_of(self, W: torch.Tensor) -> torch.Tensor | None:
        """Where the norms of ``W``'s rows are to be written, or None where none are asked for."""
        if W.dim() < 2 or not any(W is p for p in self.norms):
            return None
        return torch.empty(W.shape[:-1], dtype=torch.float32, device=W.device)


@dataclass(eq=False)
class PreparedWeights:
    """What the optimizer's pass wrote beside the weights for the next step, which would
    otherwise read each float32 weight once more to make it (see the module docstring). Each
    is handed over once (:meth:`take`), and only while its weight's version counter says the
    weight is unchanged since: an in-place edit through ``.data`` escapes that counter (as it
    escapes autograd's own checks), so edit a parameter under ``torch.no_grad()`` instead."""

    made: dict[tuple[int, str], tuple[weakref.ref[torch.Tensor], int, torch.Tensor]] = field(default_factory=dict)
    """By the weight's ``id`` and what it is (``"copy"``, ``"norms"``): the weight (weakly, so
    that a new tensor given a freed one's ``id`` is not taken for it), its version when this was
    written, and the tensor written."""

    def put(self, W: torch.Tensor, copy: torch.Tensor | None, norms: torch.Tensor | None) -> None:
        """``copy`` and ``norms`` (None: not written) are those of ``W`` as it is now."""
        for what, value in (("copy", copy), ("norms", norms)):
            if value is not None:
                self.made[(id(W), what)] = (weakref.ref(W), W._version, value)

    def take(self, W: torch.Tensor, what: str) -> torch.Tensor | None:
        """``W``'s copy or norms (``what``), once, if written and ``W`` is unchanged since."""
        ref, version, value = self.made.pop((id(W), what), (None, None, None))
        return value if value is not None and ref() is W and version == W._version else None


@dataclass(eq=False)
class StepWeights:
    """A trainer's exchange with its optimizer across steps. Inside :meth:`reading` (one step's
    forward and backward), the kernels handed this object take what the optimizer
    :attr:`prepared` rather than reading the weight again (:func:`written_copy`,
    :func:`handed_row_norms`), and it notes what they read; :meth:`writes` then says, by argument
    to the optimizer's next pass, what to write, and :meth:`keep` takes what that pass wrote."""

    copy_dtype: torch.dtype | None = None
    """The dtype of the rounded copies the optimizer writes (autocast's); None: none."""
    norms: bool = False
    """Whether the optimizer writes row norms."""
    norms_of: Callable[[torch.Tensor], torch.Tensor] | None = None
    """How the optimizer sums the norms it writes, for a step to compute them the same way where
    none were written (its first, after a resume or an in-place edit), so that the run's bytes do
    not depend on which it took; None: ``torch.linalg.vector_norm``, the eager pass's."""
    prepared: PreparedWeights | None = None
    """What the optimizer's latest pass wrote, for the next step."""
    read_copies: list[torch.Tensor] = field(default_factory=list)
    read_norms: list[torch.Tensor] = field(default_factory=list)
    open: bool = False
    """Inside :meth:`reading`: outside it the kernels take nothing and note nothing."""

    @property
    def active(self) -> bool:
        """Whether the optimizer writes anything at all."""
        return self.copy_dtype is not None or self.norms

    @contextmanager
    def reading(self, crosscoder: Any) -> Iterator[None]:
        """One step's forward and backward by ``crosscoder``, which holds this object for its
        length (``crosscoder.step_weights``) and hands it to its kernels; what was prepared and
        not taken is let go at the end (the optimizer's next pass would make it stale). Not
        reentrant."""
        if self.open or getattr(crosscoder, "step_weights", None) is not None:
            raise RuntimeError("StepWeights.reading blocks do not nest")
        self.read_copies, self.read_norms = [], []
        self.open, crosscoder.step_weights = True, self
        try:
            yield
        finally:
            self.open, crosscoder.step_weights = False, None
            self.prepared = None

    def writes(self) -> WeightWrites | None:
        """What the step just read, for the optimizer's next pass to write; None where nothing."""
        if not self.active:
            return None
        return WeightWrites(tuple(self.read_copies), self.copy_dtype, tuple(self.read_norms))

    def keep(self, prepared: PreparedWeights | None) -> None:
        """What the optimizer's pass wrote (None: nothing, or what it wrote no longer holds: the
        weights were rewritten since), for the next step to take."""
        self.prepared = prepared

    def take_copy(self, root: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        if not self.open or self.copy_dtype != dtype:
            return None
        _note(self.read_copies, root)
        return None if self.prepared is None else self.prepared.take(root, "copy")

    def take_norms(self, W: torch.Tensor) -> torch.Tensor | None:
        _note(self.read_norms, W)
        written = None if self.prepared is None else self.prepared.take(W, "norms")
        if written is None and self.norms_of is not None:
            return self.norms_of(W.detach())
        return written


def _note(read: list[torch.Tensor], W: torch.Tensor) -> None:
    if not any(W is seen for seen in read):
        read.append(W)


def written_copy(step_weights: StepWeights | None, root: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """Inside :meth:`StepWeights.reading` of ``step_weights``, for a parameter ``root``: its copy
    rounded to ``dtype`` as the optimizer wrote it for this step (``root`` unchanged since); None
    elsewhere (then the caller rounds it)."""
    if step_weights is None or root.dtype == dtype:
        return None
    return step_weights.take_copy(root, dtype)


def handed_row_norms(step_weights: StepWeights | None, W: torch.Tensor) -> torch.Tensor | None:
    """Inside :meth:`StepWeights.reading` of ``step_weights`` whose optimizer writes row norms, for
    a parameter ``W``: the norms of its rows as the optimizer wrote them for this step (``W``
    unchanged since), else computed as it computes them (:attr:`StepWeights.norms_of`); None
    elsewhere: then they are computed as a step computes them."""
    if step_weights is None or not step_weights.open or not step_weights.norms:
        return None
    if W.dim() < 2 or parameter_of(W) is not W:
        return None
    return step_weights.take_norms(W)
