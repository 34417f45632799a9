"""Count, on any device, the operations that make a GPU wait for its queue: those that read a
value back to the host, size their output by the data, or upload Python data.

On a CPU nothing waits, so a test there cannot time a sync; it can see which operations a
step dispatches. :class:`HostReads` records each operation that on CUDA copies device data to
the host before it returns (``aten.nonzero``, a boolean index, ``bincount``, ``.item()``...)
or copies a tensor made from Python data to the device, and
:func:`crosslens.core.tensors.host_ints`, the package's one deliberate read, is counted by
wrapping it where a module imported it. On CUDA,
:func:`crosslens.core.devices.counted_cuda_syncs` counts the syncs themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_ALWAYS = {
    aten._local_scalar_dense.default: "item",  # int(t), float(t), bool(t), t.item()
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.bincount.default: "bincount",  # CUDA reads the largest id to size its output
    aten._unique2.default: "unique",
    aten.unique_consecutive.default: "unique",
    # a tensor made from Python data (torch.tensor, new_tensor): CUDA copies it from pageable
    # host memory, which first waits for the stream
    aten.lift_fresh.default: "host data",
}


def _boolean_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class HostReads(TorchDispatchMode):
    """The syncing operations dispatched inside the ``with`` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _ALWAYS.get(func)
        if name is None and func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
            name = "boolean index" if _boolean_index(args[1]) else None
        if name is None and func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            name = "repeat_interleave"
        if name is not None:
            self.counts[name] += 1
        return func(*args, **kwargs)


@contextmanager
def counted(module: Any, name: str, calls: Counter[str]) -> Iterator[None]:
    """Count the calls of ``module.name`` (a crosslens function as that module imported it)."""
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return original(*args, **kwargs)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)
