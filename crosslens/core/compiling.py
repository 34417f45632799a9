"""``torch.compile`` that is safe when two threads run compiled code.

Dynamo refuses to enter a compiled function while FX traces anywhere in the process: it reads
one process-wide flag of ``torch.fx``, which AOTAutograd and Inductor set while they trace a
graph, in whichever thread compiles. crosslens runs compiled code in two threads at once: the
training step's elementwise chains in the main one and the snapshot models' trunk in the
streaming provider's background harvest. Whichever compiled first while the other entered a
compiled function made that call fail ("Detected that you are using FX to symbolically trace a
dynamo-optimized function").

So every function compiled here holds one process-wide lock for the length of each call (a
call launches its kernels and returns; the lock is not held while they run), and compiles its
backward together with its forward, inside that call, instead of lazily in the first
``backward()``, outside it. No compiled call then starts while another thread compiles.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch

import crosslens.core.cpu_math  # noqa: F401  (torch's CPU math started on one thread; see that module)

_CALLS = threading.RLock()
"""Held by each call of a function compiled here (re-entrant: a compiled function may call another)."""


def compile_function(
    function: Callable[..., Any], *, dynamic: bool | None = None, backend: str | Callable[..., Any] = "inductor"
) -> Callable[..., Any]:
    """``torch.compile(function, dynamic=dynamic, backend=backend)``, whose calls hold the lock
    that every function compiled here shares, and whose backward compiles with its forward."""
    compiled = torch.compile(function, dynamic=dynamic, backend=backend)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _CALLS, torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
            return compiled(*args, **kwargs)

    return call
