"""Minimums written on a config dataclass's fields (``field(metadata={"min": ...})``), checked
where the config is built; the command line's flags refuse the same numbers as they parse
(:mod:`crosslens.commands.flags`)."""

from __future__ import annotations

import dataclasses
from typing import Any


def check_minimums(config: Any, label: str = "") -> None:
    """Raise a ValueError naming the first field of dataclass ``config`` below its ``min``
    (``{label}{field} must be >= {min}, got {value}``); a field set to None is not checked."""
    for f in dataclasses.fields(config):
        minimum, value = f.metadata.get("min"), getattr(config, f.name)
        if minimum is not None and value is not None and value < minimum:
            raise ValueError(f"{label}{f.name} must be >= {minimum}, got {value}")
