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
409 for a request a newer one of its kind from the same ``asker=`` (a page) replaced while it waited its turn, 503 where the live models cannot be loaded or made (a bad ``--device`` or ``--dtype`` too; the stored
pages keep working) or where their crosscoder is not the one the feature database was computed for
(:class:`PairedLive` compares them before the first answer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Protocol

from crosslens.browser.database import Database, RunFacts
from crosslens.browser.feature import NoSuchFeature, checked_feature
from crosslens.browser.queries import QueryError, feature_rows
from crosslens.core.errors import CrosslensError, LiveInputError, LiveMismatchError, LiveSupersededError

OFF = (
    "the live panels are off: this server was started without live models (crosslens browse without --no-live has them)"
)


class LiveBackend(Protocol):
    """What the live routes ask (:class:`crosslens.live.LiveAnswers` is one)."""

    def status(self) -> dict[str, Any]: ...

    def prepare(self) -> None: ...

    def text(self, text: str, asker: str | None = None) -> dict[str, Any]: ...

    def heatmap(self, text: str, feature: int, asker: str | None = None) -> dict[str, Any]: ...

    def steer(self, feature: int, prompt: str, asker: str | None = None, **settings: Any) -> dict[str, Any]: ...

    def crosscoder(self) -> dict[str, Any]:
        """What identifies the crosscoder it answers with: ``run``, ``weights_sha256`` (of its weights
        file, as a feature database records it), ``d_sae`` and its snapshots' ``revisions``."""
        ...

    def close(self) -> None:
        """Refuse the requests waiting their turn and let the models go (the server stops)."""
        ...


class PairedLive:
    """``backend`` answering beside the feature database whose ``facts`` the pages show: the crosscoder
    it loads must be the one the database was computed for (its weights, features and snapshots), or
    its answers would be read against another crosscoder's labels, feature ids and snapshots
    (``crosslens browse RUN --database OTHER``). Compared before its first answer; where they differ,
    every live answer is refused (503) in one line naming the fix, and the stored pages keep working."""

    def __init__(self, backend: LiveBackend, facts: RunFacts) -> None:
        self.backend, self.facts = backend, facts
        self._paired = False
        self._problem: str | None = None

    def _check(self) -> None:
        if self._problem is not None:
            raise LiveMismatchError(self._problem)
        if self._paired:
            return
        problem = pairing_problem(self.backend.crosscoder(), self.facts)  # a failure to load: asked again next time
        if problem is not None:
            self._problem = problem
            raise LiveMismatchError(problem)
        self._paired = True

    def status(self) -> dict[str, Any]:
        status = self.backend.status()
        if self._problem is not None:
            status |= {"state": "unavailable", "problem": self._problem}
        return status

    def prepare(self) -> None:
        self.backend.prepare()
        self._check()

    def text(self, text: str, asker: str | None = None) -> dict[str, Any]:
        self._check()
        return self.backend.text(text, asker)

    def heatmap(self, text: str, feature: int, asker: str | None = None) -> dict[str, Any]:
        self._check()
        return self.backend.heatmap(text, feature, asker)

    def steer(self, feature: int, prompt: str, asker: str | None = None, **settings: Any) -> dict[str, Any]:
        self._check()
        return self.backend.steer(feature, prompt, asker, **settings)

    def crosscoder(self) -> dict[str, Any]:
        return self.backend.crosscoder()

    def close(self) -> None:
        self.backend.close()


def pairing_problem(crosscoder: Mapping[str, Any], facts: RunFacts) -> str | None:
    """Why the live ``crosscoder`` (:meth:`LiveBackend.crosscoder`) is not the one the feature
    database of ``facts`` was computed for (its ``meta`` records it: weights sha256 and features;
    its snapshots table, the snapshots), or None where it is."""
    recorded = facts.meta.get("crosscoder") or {}
    differences = []
    sha, live_sha = recorded.get("weights_sha256"), str(crosscoder["weights_sha256"])
    if sha and sha != live_sha:
        differences.append(f"other weights (sha256 {live_sha[:12]}... here, {str(sha)[:12]}... in the database)")
    features = int(recorded.get("d_sae") or facts.n_features)
    if int(crosscoder["d_sae"]) != features:
        differences.append(f"{int(crosscoder['d_sae'])} features here, {features} in the database")
    here, there = [str(r) for r in crosscoder["revisions"]], [str(s["revision"]) for s in facts.snapshots]
    if len(here) != len(there):
        differences.append(f"{len(here)} snapshots here, {len(there)} in the database")
    elif here != there:
        s = next(i for i, (a, b) in enumerate(zip(here, there)) if a != b)
        differences.append(f"snapshot {s} is {here[s]} here, {there[s]} in the database")
    if not differences:
        return None
    run = crosscoder["run"]
    return (
        f"the live crosscoder (of {run}) is not the one {facts.path} was computed for: {'; '.join(differences)}; "
        f"browse the run the database came from, or rebuild it with `crosslens dashboards {run} --overwrite`"
    )


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
        except LiveSupersededError as error:
            return HTTPStatus.CONFLICT, {"error": _one_line(error)}
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
    answer = backend.text(_text_param(backend.status()["limits"], params, "text"), _asker(params))
    features = sorted({row[0] for rows in answer["readings"].values() for row in rows})
    with database.connection() as connection:
        answer["rows"] = {str(row["feature"]): row for row in feature_rows(connection, features)}
    return answer


def _heatmap(backend: LiveBackend, database: Database, params: Mapping[str, str], feature: str) -> dict[str, Any]:
    chosen = checked_feature(feature, database.facts)
    return backend.heatmap(_text_param(backend.status()["limits"], params, "text"), chosen, _asker(params))


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
        _asker(params),
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
def _asker(params: Mapping[str, str]) -> str | None:
    """Who asks (``asker=``, a page names itself): a newer question of one asker replaces its older
    one of the same sort while that waits; None (a script's request) is always answered."""
    asker = params.get("asker")
    if asker is not None and not re.fullmatch(r"[\w:-]{1,64}", asker):
        raise QueryError(f"asker={asker[:40]}: name the asking page with 1 to 64 letters, digits, '_', '-' or ':'")
    return asker


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
