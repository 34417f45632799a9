"""Ask a run's models about your own text and steer them, at every snapshot.

:class:`LiveModels` loads a run's crosscoder and, as questions need them, its suite's snapshot
models: :meth:`~LiveModels.activations` gives every feature's activation on each token of a text
for the crosscoder's own code and each snapshot's per-snapshot code (:class:`TextActivations`),
and :meth:`~LiveModels.steer` each snapshot's continuation of a prompt with and without a feature
written into its activation (:class:`Steering`). ``crosslens browse`` shows the same answers in its
live panels (:mod:`crosslens.live.answers` makes them JSON).
"""

from __future__ import annotations

from crosslens.core.lazy import lazy_attributes

_LAZY = {
    "LiveConfig": "crosslens.live.config",
    "LiveModels": "crosslens.live.models",
    "TextActivations": "crosslens.live.text",
    "Steering": "crosslens.live.steering",
    "SteeredSnapshot": "crosslens.live.steering",
    "LiveAnswers": "crosslens.live.answers",
}

__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
