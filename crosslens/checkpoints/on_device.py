"""A checkpoint suite that loads its models on one device and dtype by default.

Stages that receive a suite and call ``suite.load(index)`` (the causal stage) then run
their models where the user asked without growing device arguments of their own:
:func:`on_device` wraps the suite once, where the device is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)
from crosslens.core.devices import resolve_dtype

if TYPE_CHECKING:
    from crosslens.checkpoints.suite import CheckpointSuite


class SuiteOnDevice:
    """A checkpoint suite whose ``load``/``iter_models`` default to one device and dtype.

    Stages that receive a suite and call ``suite.load(index)`` (the causal stage) then run
    their models where the user asked without growing device arguments of their own.
    Everything else is the wrapped suite's.
    """

    def __init__(
        self, suite: CheckpointSuite, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
    ):
        self._suite = suite
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)

    def load(self, snapshot: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("dtype", self.dtype)
        return self._suite.load(snapshot, **kwargs)

    def iter_models(self, **kwargs: Any) -> Any:
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("dtype", self.dtype)
        return self._suite.iter_models(**kwargs)

    def select(self, **kwargs: Any) -> "SuiteOnDevice":
        return SuiteOnDevice(self._suite.select(**kwargs), self.device, self.dtype)

    def __len__(self) -> int:
        return len(self._suite)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._suite, name)


def on_device(
    suite: CheckpointSuite, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> Any:
    """``suite`` itself on cpu/float32 (the default), else a :class:`SuiteOnDevice` view."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = resolve_dtype(dtype)
    if device.type == "cpu" and dtype == torch.float32:
        return suite
    return SuiteOnDevice(suite, device, dtype)
