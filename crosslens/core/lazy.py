"""Package attributes imported on first use, so that importing a package stays cheap (no torch
for ``crosslens --help``) while its public names stay where users look for them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, sources: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``: each name in ``sources`` is imported from
    the module it maps to when first asked for (a name that maps to ``package.name`` is that
    submodule itself); any other name is an AttributeError, as for a plain module."""

    def __getattr__(name: str) -> Any:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(source)
        return module if source == f"{package}.{name}" else getattr(module, name)

    return __getattr__
