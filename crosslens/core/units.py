"""Sizes as people read them, for the messages that say what fits where."""

from __future__ import annotations


def format_bytes(n: float | int | None) -> str:
    """``n`` bytes as a short human string in binary units (KiB, MiB, GiB, TiB, PiB)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} PiB"
