"""Bounds written on a config dataclass's fields (``field(metadata={"min": ..., "max": ...})``),
checked where the config is built; the command line's flags refuse numbers below ``min`` as they
parse (:mod:`crosslens.cli.flags`), and a config's message names the field, which the command
line rewrites as its flag.

- ``min``: the least value (``strictly``: values equal to it are refused too);
- ``max``: the greatest value (``max_strictly``: values equal to it are refused too).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any


def bounds_problem(f: dataclasses.Field, value: Any, label: str = "") -> str | None:
    """What is wrong with ``value`` for field ``f``'s bounds (``{label}{name} must be ..., got
    {value}``), or None; None values are not checked."""
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if value is None or (low is None and high is None) or isinstance(value, bool):
        return None
    strictly, max_strictly = f.metadata.get("strictly", False), f.metadata.get("max_strictly", False)
    nan = isinstance(value, float) and math.isnan(value)
    below = low is not None and (value < low or (strictly and value == low))
    above = high is not None and (value > high or (max_strictly and value == high))
    if not (nan or below or above):
        return None
    if low is not None and high is not None:
        wanted = f"in {'(' if strictly else '['}{low}, {high}{')' if max_strictly else ']'}"
    elif low is not None:
        wanted = f"{'>' if strictly else '>='} {low}"
    else:
        wanted = f"{'<' if max_strictly else '<='} {high}"
    return f"{label}{f.name} must be {wanted}, got {value}"


def whole_number(value: Any) -> int | None:
    """``value`` as an int where it is a whole number of any kind (an int, a NumPy integer, a
    one-element integer tensor), never a bool; None for anything else (a float such as 10.7, a
    string), which would otherwise be rounded or read letter by letter."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_bounds(config: Any, label: str = "") -> None:
    """Raise a ValueError naming the first field of dataclass ``config`` outside its bounds."""
    for f in dataclasses.fields(config):
        problem = bounds_problem(f, getattr(config, f.name), label)
        if problem:
            raise ValueError(problem)
