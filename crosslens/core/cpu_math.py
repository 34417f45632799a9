"""torch's CPU math library started on one thread, before any call that runs on several.

With the torch CPU wheel this project installs, the first vectorised math call of a process
(``sqrt``, ``exp``, ``log``, ``tanh``) sometimes returns, on the part of its tensor that a
second thread computes, values a few thousand ulps off (about 1e-4 relative): one thread
still finishes the library's one-time start while the other computes; after a single-element
call on one thread it does not happen. So that the same seed gives the same
bytes in every process, importing this module makes that call; the core modules that import
torch for arithmetic (:mod:`~crosslens.core.tensors`, :mod:`~crosslens.core.seeding`,
:mod:`~crosslens.core.packing`) import it, and so does every other module whose arithmetic
can run before any of them is imported.
"""

from __future__ import annotations

import torch


def settle() -> None:
    """Start the library on this thread: one call on a single element, which no second
    thread shares."""
    torch.ones(1).sqrt()


settle()
