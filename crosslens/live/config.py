"""How the live panels run a run's crosscoder and its suite's snapshot models: one dataclass, whose
fields are also ``crosslens browse``'s flags. Nothing here imports torch."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from crosslens.core.bounds import check_bounds, whole_number
from crosslens.core.errors import CrosslensError, LiveInputError

RETRY = "ask again: the next question loads it again"
"""How a refusal for a file that could not be read ends: the suite is not at fault, so no other is named."""

MODES = ("add", "clamp")
"""Steering modes: ``add`` puts ``strength`` times the feature's snapshot-s decoder direction on the
activation; ``clamp`` sets the feature's activation to ``strength`` (``x + (strength - f(x)) d_s``)."""

MAX_STRENGTH = 1e6
"""Largest ``|strength|`` a steering request may ask for (a finite number is required)."""

MAX_TEMPERATURE = 10.0

STEER_MODE = "add"
STEER_TOKENS = 20
STEER_TEMPERATURE = 0.0
STEER_SEED = 0
"""What a steering request takes where it does not say: the mode, new tokens per snapshot, sampling
temperature (0: greedy) and seed, for :meth:`crosslens.live.LiveModels.steer`, the browser's API and
its form (:func:`limits` hands them over)."""


@dataclass(frozen=True)
class LiveConfig:
    """Settings of the live panels of ``crosslens browse`` and of :class:`crosslens.live.LiveModels`."""

    live: bool = field(default=True, metadata={"flag": "--no-live"})
    """Serve the live panels (your text, and steering, at every snapshot); --no-live serves the stored pages only,
    without loading torch."""
    resident_models: int = field(default=16, metadata={"min": 1})
    """Snapshot models kept in memory between requests (loaded on first use). A request that needs more loads
    each of the others for itself and lets it go; 16 full Pythia-160M models in float32 take about 10.4 GB."""
    threads: int | None = field(default=1, metadata={"min": 1, "cli": False})
    """torch threads for a question on a CPU (None: torch's own count). A text's tensors are small, so one
    thread is fastest, and on a busy machine more threads mostly wait on each other."""
    max_text_chars: int = field(default=4000, metadata={"min": 1, "cli": False})
    """Longest text (in characters) a request may send."""
    max_text_tokens: int = field(default=512, metadata={"min": 1, "cli": False})
    """Most tokens of a text or prompt (also at most the model's context less one, for its first token)."""
    max_new_tokens: int = field(default=64, metadata={"min": 1, "cli": False})
    """Most tokens a steering request may generate per snapshot (and per continuation)."""
    cached_texts: int = field(default=4, metadata={"min": 0, "cli": False})
    """Texts whose activations are kept, so another feature's heatmap of one is not computed again."""

    def __post_init__(self) -> None:
        if self.resident_models < 1:
            raise CrosslensError(f"--resident-models {self.resident_models}: keep at least 1 snapshot model resident.")
        check_bounds(self)  # the rest: threads 0 and cached_texts -1 failed at the first question


def limits(config: LiveConfig) -> dict[str, object]:
    """What a live request may ask (JSON), for the browser's checks before any model loads."""
    return {
        "max_text_chars": config.max_text_chars,
        "max_text_tokens": config.max_text_tokens,
        "max_new_tokens": config.max_new_tokens,
        "max_strength": MAX_STRENGTH,
        "max_temperature": MAX_TEMPERATURE,
        "modes": list(MODES),
        "steer_defaults": {
            "mode": STEER_MODE,
            "tokens": STEER_TOKENS,
            "temperature": STEER_TEMPERATURE,
            "seed": STEER_SEED,
        },
    }


def steering_settings(
    config: LiveConfig, strength: Any, mode: Any, n_tokens: Any, temperature: Any, seed: Any
) -> tuple[float, int, float, int]:
    """Refuse settings a steering cannot run with, one line each; return the strength, length,
    temperature and seed as Python numbers (from NumPy or Python numbers alike, never a bool)."""
    if mode not in MODES:
        raise LiveInputError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    word = "clamp value" if mode == "clamp" else "strength"
    value = _real_number(strength)
    if value is None or not math.isfinite(value) or abs(value) > MAX_STRENGTH:
        raise LiveInputError(f"{word} {strength!r}: give a finite number of at most {MAX_STRENGTH:g} in size")
    length = whole_number(n_tokens)
    if length is None or not 1 <= length <= config.max_new_tokens:
        raise LiveInputError(f"length {n_tokens!r}: generate 1 to {config.max_new_tokens} tokens")
    heat = _real_number(temperature)
    if heat is None or not 0 <= heat <= MAX_TEMPERATURE:
        raise LiveInputError(f"temperature {temperature!r}: give 0 (greedy) to {MAX_TEMPERATURE:g}")
    number = whole_number(seed)
    if number is None or not 0 <= number < 2**63:
        raise LiveInputError(f"seed {seed!r}: give a whole number from 0 to 2^63 - 1")
    return value, length, heat, number


def snapshot_list(snapshots: Any) -> list[Any] | None:
    """The snapshots a steering asks for, as a list (from a list, tuple, range, array or tensor);
    None for every one. One snapshot on its own, a string or an empty list is refused."""
    if snapshots is None:
        return None
    try:
        listed = None if isinstance(snapshots, (str, bytes)) else list(snapshots)
    except TypeError:  # a number, or a 0-d array or tensor
        listed = None
    if listed is None:
        one = whole_number(snapshots)
        raise LiveInputError(f"snapshots {snapshots!r}: pass a list, e.g. [{one if one is not None else 0}]")
    if not listed:
        raise LiveInputError("snapshots []: name 1 snapshot or more, or leave it out for every one")
    return listed


def _real_number(value: Any) -> float | None:
    """``value`` as a float where it is a real number (a Python or NumPy int or float), never a bool;
    None for anything else, or a number past a float's range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return None
