"""Progress bars: every long loop's bar is made here, so that one switch silences them all.

A caller decides whether its bar may show (``show``: its ``progress=`` argument, or being
the main process of a ``torchrun`` team). Where it may, ``TQDM_DISABLE`` in the environment
still hides it, as it hides any tqdm bar. tqdm itself reads that variable once, when it is
imported, and an explicit ``disable=False`` overrides it; here it is read when the bar is
made, so a script that sets it after its imports (the planted grids, whose parallel runs
would fill their logs with bars) gets quiet logs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_OFF = ("", "0", "false", "no", "off")


def progress_bar(iterable: Iterable[T] | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one), hidden when ``show`` is false or
    ``TQDM_DISABLE`` is set to anything but ``0``/``false``/``no``/``off``; ``kwargs`` go to
    tqdm (``desc``, ``total``, ``unit``, ...)."""
    hidden = not show or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _OFF
    return tqdm(iterable, disable=hidden, **kwargs)
