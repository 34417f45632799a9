"""What the ``crosslens`` subcommands do, one module per command, callable as a library.

Each function takes the namespace :mod:`crosslens.cli` parsed and raises
:class:`~crosslens.commands.common.CLIError` (one line naming the flag) for bad input.
Modules here import torch and the stages only inside the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CLIError": "crosslens.commands.common",
    "add_flags": "crosslens.commands.flags",
    "build": "crosslens.commands.flags",
    "explicit": "crosslens.commands.flags",
    "train_config": "crosslens.commands.train",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crosslens.commands' has no attribute {name!r}")
