"""What the ``crosslens`` subcommands do, one module per command, callable as a library.

Each function takes the namespace :mod:`crosslens.cli` parsed and raises
:class:`~crosslens.commands.common.CLIError` (one line naming the flag) for bad input.
Modules here import torch and the stages only inside the functions that need them.
"""
