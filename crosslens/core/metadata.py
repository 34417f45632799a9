"""Reading one value from a crosscoder's metadata, whatever object holds it.

A crosscoder's ``cfg.metadata`` is a SAELens ``SAEMetadata`` once loaded through SAELens,
a plain dict when built by hand, and absent on duck-typed stand-ins; every stage that asks
"which hook?", "are the norm factors folded?" reads it through :func:`metadata_value`.
"""

from __future__ import annotations

from typing import Any


def metadata_value(crosscoder: Any, key: str) -> Any:
    """``crosscoder.cfg.metadata[key]``, or None when the crosscoder, its cfg or its metadata lacks it."""
    metadata = getattr(getattr(crosscoder, "cfg", None), "metadata", None)
    if metadata is None:
        return None
    if isinstance(metadata, dict):
        return metadata.get(key)
    getter = getattr(metadata, "get", None)
    return getter(key) if callable(getter) else getattr(metadata, key, None)
