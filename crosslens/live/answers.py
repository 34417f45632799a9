"""The live models' answers as JSON, for the browser's live panels (``crosslens browse``).

:class:`LiveAnswers` is what the browser's server is handed: it asks :class:`~crosslens.live.LiveModels`
and writes the arrays as the page reads them. Readings are keyed as the feature database keys them:
``"-1"`` for the crosscoder's own code, ``"s"`` for snapshot s's per-snapshot code. Activations are
rounded to 6 decimals (float32 carries about 7 significant digits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from crosslens.core.errors import LiveInputError
from crosslens.core.units import format_bytes
from crosslens.live.models import LiveModels
from crosslens.live.text import CROSSCODER, TOP_FEATURES


def _round(value: float) -> float:
    return round(float(value), 6)


class LiveAnswers:
    """JSON answers of ``models`` (the browser's live backend)."""

    def __init__(self, models: LiveModels, top: int = TOP_FEATURES, say: Callable[[str], None] | None = None) -> None:
        self.models = models
        self.top = int(top)
        self.say = say
        """Told one line when the resident budget is known (after the first snapshot model loads)."""
        self._said = False

    def _announce(self) -> None:
        budget = self.models.budget()
        if self.say is None or self._said or budget is None:
            return
        self._said = True
        status = self.models.status()
        resident = min(status["capacity"], len(status["loads"]))
        self.say(
            f"live panels: {resident} of {len(status['loads'])} snapshot models kept resident "
            f"({format_bytes(budget['model'])} each), the crosscoder {format_bytes(budget['crosscoder'])}: resident "
            f"budget {format_bytes(budget['limit'])} in all ({format_bytes(budget['base'])} before they loaded)"
        )

    def status(self) -> dict[str, Any]:
        return self.models.status()

    def prepare(self) -> None:
        self.models.prepare()

    def crosscoder(self) -> dict[str, Any]:
        return self.models.crosscoder()

    def close(self) -> None:
        self.models.close()

    def text(self, text: str, asker: str | None = None) -> dict[str, Any]:
        """The features firing most on ``text`` in every reading: ``[feature, activation, token]``
        each, strongest first. ``asker``: who asks (a page of the browser); a newer text question of
        the same asker replaces this one while it waits its turn."""
        started = time.perf_counter()
        acts = self.models.activations(text, kind=_kind("text", asker))
        self._announce()
        readings = {
            str(reading): [[f, _round(a), t] for f, a, t in acts.top(reading, self.top)]
            for reading in (CROSSCODER, *range(acts.n_snapshots))
        }
        return {
            "text": text,
            "tokens": acts.tokens,
            "readings": readings,
            "ms": round(1000 * (time.perf_counter() - started), 1),
        }

    def heatmap(self, text: str, feature: int, asker: str | None = None) -> dict[str, Any]:
        """One feature's activation on each token of ``text``: one row per reading, the crosscoder's
        code first (``rows`` names them). ``asker``: as :meth:`text`'s."""
        started = time.perf_counter()
        acts = self.models.activations(text, kind=_kind("heatmap", asker))
        self._announce()
        if not 0 <= feature < acts.crosscoder_NF.shape[1]:
            raise LiveInputError(
                f"feature {feature}: this crosscoder has features 0 to {acts.crosscoder_NF.shape[1] - 1}"
            )
        grid = acts.feature(feature)
        return {
            "feature": feature,
            "text": text,
            "tokens": acts.tokens,
            "rows": [CROSSCODER, *range(acts.n_snapshots)],
            "acts": [[_round(a) for a in row] for row in grid.tolist()],
            "max": _round(grid.max(initial=0.0)),
            "ms": round(1000 * (time.perf_counter() - started), 1),
        }

    def steer(self, feature: int, prompt: str, asker: str | None = None, **settings: Any) -> dict[str, Any]:
        """Each snapshot's continuation of ``prompt``, without and with ``feature`` steered (``settings``:
        :meth:`LiveModels.steer`'s keywords; ``asker``: as :meth:`text`'s)."""
        started = time.perf_counter()
        steering = self.models.steer(feature, prompt, **settings, kind=_kind("steer", asker))
        self._announce()
        return {
            "feature": steering.feature,
            "prompt": steering.prompt,
            "prompt_tokens": steering.prompt_tokens,
            "mode": steering.mode,
            "strength": steering.strength,
            "n_tokens": steering.n_tokens,
            "temperature": steering.temperature,
            "seed": steering.seed,
            "snapshots": [
                {
                    "snapshot": row.snapshot,
                    "step": row.step,
                    "plain": row.plain,
                    "steered": row.steered,
                    "direction_norm": _round(row.direction_norm),
                }
                for row in steering.snapshots
            ],
            "ms": round(1000 * (time.perf_counter() - started), 1),
        }


def _kind(question: str, asker: str | None) -> str | None:
    """The kind a question supersedes within: one asker's questions of one sort (another page's, or
    a script's, which names no asker, are each answered)."""
    return None if asker is None else f"{question}:{asker}"
