"""The browser's live API: your own text and steering at every snapshot (``/api/live/...``).

The answers come from a *live backend* handed to :func:`~crosslens.browser.server.make_server`
(``crosslens browse`` hands it :class:`crosslens.live.LiveAnswers`, which loads the run's crosscoder
and snapshot models on demand); the browser itself imports no torch. Every parameter is checked here
before the backend is asked, so a bad request loads nothing:

* ``/api/live/status[?prepare=1]``: where the live models stand (``state``: off, idle, loading,
  ready, unavailable with the one-line ``problem``) and the requests' limits; ``prepare`` loads the
  crosscoder first (not the snapshot models);
* ``/api/live/text?text=T``: the features firing most on T in every reading, with their list rows;
* ``/api/live/feature/ID/text?text=T``: feature ID's activation on each token of T, every reading;
* ``/api/live/feature/ID/steer?prompt=P&strength=X&mode=add|clamp&tokens=N&temperature=T&seed=K``:
  each snapshot's continuation of P, without and with the feature steered.

Errors are ``{"error": "one line"}``: 400 for a bad parameter, 404 for an unknown feature or route,
503 where the live models cannot be loaded or made (a bad ``--device`` or ``--dtype`` too; the stored
pages keep working).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Protocol

from crosslens.browser.database import Database
from crosslens.browser.feature import NoSuchFeature, checked_feature
from crosslens.browser.queries import QueryError, feature_rows
from crosslens.core.errors import CrosslensError, LiveInputError

OFF = (
    "the live panels are off: this server was started without live models (crosslens browse without --no-live has them)"
)


class LiveBackend(Protocol):
    """What the live routes ask (:class:`crosslens.live.LiveAnswers` is one)."""

    def status(self) -> dict[str, Any]: ...

    def prepare(self) -> None: ...

    def text(self, text: str) -> dict[str, Any]: ...

    def heatmap(self, text: str, feature: int) -> dict[str, Any]: ...

    def steer(self, feature: int, prompt: str, **settings: Any) -> dict[str, Any]: ...


def live_answer(
    backend: LiveBackend | None, database: Database, path: str, params: Mapping[str, str]
) -> tuple[HTTPStatus, dict[str, Any]]:
    """The status and JSON payload of the live API request ``path`` with ``params``."""
    for pattern, route in _ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if backend is None:
            if route is _status:
                return HTTPStatus.OK, {"state": "off", "problem": OFF}
            return HTTPStatus.NOT_FOUND, {"error": OFF}
        try:
            return HTTPStatus.OK, route(backend, database, params, *match.groups())
        except NoSuchFeature as error:
            return HTTPStatus.NOT_FOUND, {"error": str(error.args[0])}
        except (QueryError, LiveInputError) as error:
            return HTTPStatus.BAD_REQUEST, {"error": _one_line(error)}
        except CrosslensError as error:  # the live models cannot be made or loaded: its line names the fix
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": _one_line(error)}
    return HTTPStatus.NOT_FOUND, {"error": f"no API endpoint {path}"}


def _one_line(error: Exception) -> str:
    return " ".join(str(error.args[0] if error.args else error).split())


# --------------------------------------------------------------------------- routes
def _status(backend: LiveBackend, database: Database, params: Mapping[str, str]) -> dict[str, Any]:
    if params.get("prepare"):  # a page about to offer the panels: load the crosscoder now, so they can say why not
        try:
            backend.prepare()
        except CrosslensError:
            pass  # the status says why
    return backend.status()


def _text(backend: LiveBackend, database: Database, params: Mapping[str, str]) -> dict[str, Any]:
    answer = backend.text(_text_param(backend.status()["limits"], params, "text"))
    features = sorted({row[0] for rows in answer["readings"].values() for row in rows})
    with database.connection() as connection:
        answer["rows"] = {str(row["feature"]): row for row in feature_rows(connection, features)}
    return answer


def _heatmap(backend: LiveBackend, database: Database, params: Mapping[str, str], feature: str) -> dict[str, Any]:
    chosen = checked_feature(feature, database.facts)
    return backend.heatmap(_text_param(backend.status()["limits"], params, "text"), chosen)


def _steer(backend: LiveBackend, database: Database, params: Mapping[str, str], feature: str) -> dict[str, Any]:
    chosen = checked_feature(feature, database.facts)
    limits = backend.status()["limits"]  # the backend's bounds and defaults (crosslens.live.config.limits)
    given = limits["steer_defaults"]
    prompt = _text_param(limits, params, "prompt")
    mode = params.get("mode") or given["mode"]
    if mode not in limits["modes"]:
        raise QueryError(f"mode={mode}: use add (add the feature's direction) or clamp (set its activation)")
    strength = _number(params, "strength", None, limits["max_strength"])
    return backend.steer(
        chosen,
        prompt,
        strength=strength,
        mode=mode,
        n_tokens=_whole(params, "tokens", given["tokens"], 1, int(limits["max_new_tokens"])),
        temperature=_number(params, "temperature", given["temperature"], limits["max_temperature"], low=0.0),
        seed=_whole(params, "seed", given["seed"], 0, 2**63 - 1),
    )


_ROUTES: tuple[tuple[re.Pattern[str], Callable[..., dict[str, Any]]], ...] = (
    (re.compile(r"/api/live/status"), _status),
    (re.compile(r"/api/live/text"), _text),
    (re.compile(r"/api/live/feature/([^/]+)/text"), _heatmap),
    (re.compile(r"/api/live/feature/([^/]+)/steer"), _steer),
)


# --------------------------------------------------------------------------- parameters
def _text_param(limits: Mapping[str, Any], params: Mapping[str, str], name: str) -> str:
    """The text or prompt ``name`` of a request, checked against the backend's ``limits``."""
    text = params.get(name, "")
    what = "the text" if name == "text" else "the prompt"
    if not text.strip():
        raise QueryError(f"{name}= is empty: type {what} to run through every snapshot")
    limit = int(limits["max_text_chars"])
    if len(text) > limit:
        raise QueryError(f"{name}= has {len(text):,} characters: at most {limit:,} are read at once; shorten {what}")
    return text


def _number(
    params: Mapping[str, str], name: str, default: float | None, limit: float, low: float | None = None
) -> float:
    text = (params.get(name) or "").strip()
    if not text:
        if default is None:
            raise QueryError(f"{name}= is missing: give a number")
        return default
    try:
        value = float(text)
    except ValueError:
        raise QueryError(f"{name}={text[:40]}: not a number") from None
    if not math.isfinite(value):
        raise QueryError(f"{name}={text[:40]}: give a finite number")
    bottom = -limit if low is None else low
    if not bottom <= value <= limit:
        raise QueryError(f"{name}={text[:40]}: give a number from {bottom:g} to {limit:g}")
    return value


def _whole(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = (params.get(name) or "").strip()
    if not text:
        return default
    if not re.fullmatch(r"-?\d{1,30}", text):
        raise QueryError(f"{name}={text[:40]}: not a whole number")
    value = int(text)
    if not low <= value <= high:
        raise QueryError(f"{name}={text[:40]}: give a whole number from {low} to {high}")
    return value
