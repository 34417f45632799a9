"""What the ``crosslens`` subcommands do, one module per command, callable as a library.

Each function takes the namespace :mod:`crosslens.cli` parsed and raises
:class:`~crosslens.commands.common.CLIError` (one line naming the flag) for bad input.
Modules here import torch and the stages only inside the functions that need them.
"""

from __future__ import annotations

from crosslens.core.lazy import lazy_attributes

_LAZY = {
    "CLIError": "crosslens.commands.common",
    "add_flags": "crosslens.commands.flags",
    "build": "crosslens.commands.flags",
    "explicit": "crosslens.commands.flags",
    "train_config": "crosslens.commands.train",
}

__all__ = list(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
