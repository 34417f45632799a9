"""The endpoint: an OpenAI-compatible chat-completions API, asked through the ``openai`` client.

What a user of a paid or shared endpoint needs, in one place:

* at most ``concurrency`` requests in flight, each with a deadline;
* a 429, a 5xx, a timeout, a dropped connection or an answer that is not JSON is sent again,
  waiting twice as long each time (from ``backoff`` seconds, or as long as ``Retry-After`` asks),
  up to ``retries`` times; then the request counts as failed and the run goes on;
* a refused key (401, 403), a model the endpoint does not serve, an endpoint that cannot be
  reached or one that stops answering altogether ends the run at once with one line naming the
  fix: those fail every request alike;
* so does, after :data:`LOST_AFTER` requests in a row, the same refusal of every request (a 4xx
  answered alike, such as a parameter the model does not take), and a deadline every request
  misses (a slow server, not a lost one: the line names ``--deadline`` and ``--concurrency``);
* the key is read from the environment variable the user names (one holding a space or a line
  break is refused, since the server would refuse it as a wrong key), handed to the client, and
  taken out of every message that could reach a log, the database or the terminal
  (:meth:`Endpoint.redact`).

``openai`` is imported here, where a request is made: ``crosslens --help`` and the browser never
load it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crosslens.core.errors import run_again
from crosslens.explain.config import ExplainConfig, ExplainError

LOST_AFTER = 8
"""Requests in a row that failed alike (each after its retries): unreached, timed out, or refused
with the same answer, before the run stops."""

MAX_WAIT = 60.0
"""The longest wait before a retry, whatever Retry-After asks."""


class EndpointError(ExplainError):
    """The endpoint refuses every request alike (its key, its model, its address): the run stops."""


class RequestFailed(Exception):
    """One request failed after its retries (the run goes on; the failure is recorded)."""


@dataclass(frozen=True)
class Answer:
    text: str | None
    """The first choice's message; None where the endpoint sent no choice."""
    prompt_tokens: int | None
    completion_tokens: int | None


def public_url(url: str) -> str:
    """``url`` without user name or password, as it may be stored and shown."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass
class Traffic:
    """What the endpoint was sent and answered, for the progress bar and the benchmark."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    in_flight_seconds: float = 0.0
    """The integral of requests in flight over time (its mean over the run is requests in flight on average)."""
    _since: float = 0.0

    def change(self, delta: int) -> None:
        now = time.perf_counter()
        if self._since:
            self.in_flight_seconds += self.in_flight * (now - self._since)
        self._since = now
        self.in_flight += delta


class Endpoint:
    """Requests to one model at one OpenAI-compatible endpoint."""

    def __init__(self, config: ExplainConfig) -> None:
        if not config.endpoint or not config.model:
            raise ExplainError(
                "crosslens explain needs --endpoint URL (an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 "
                "for vLLM) and --model NAME; --dry-run counts the requests without them"
            )
        from openai import AsyncOpenAI

        self.config = config
        self.url = config.endpoint.rstrip("/")
        self.shown_url = public_url(self.url)
        self.model = config.model
        self.variable = config.api_key_env
        self._key = os.environ.get(self.variable) or ""
        if any(c.isspace() or not c.isprintable() for c in self._key):
            # httpx would refuse the header and openai report it as an unreachable server; the key
            # itself is never repeated
            raise EndpointError(
                f"${self.variable} holds a line break, spaces or another control character: strip it "
                f"(set {self.variable} to the key alone)"
            )
        # max_retries=0: retries are ours, so that each is counted, waited for and bounded by the run
        self.client = AsyncOpenAI(
            base_url=self.url, api_key=self._key or "EMPTY", max_retries=0, timeout=config.deadline
        )
        self.slots = asyncio.Semaphore(config.concurrency)
        self.traffic = Traffic()
        self._streak: tuple[tuple, int] = ((), 0)
        """(what the last failed requests met, how many in a row)."""

    @property
    def has_key(self) -> bool:
        return bool(self._key)

    def redact(self, text: str) -> str:
        """``text`` with the key, and any 8 characters of it in a row, replaced by ``***`` (some
        servers echo part of a refused key)."""
        key = self._key
        if not key:
            return text
        text = text.replace(key, "***")
        for start in range(0, max(0, len(key) - 7)):
            piece = key[start : start + 8]
            if piece in text:
                text = text.replace(piece, "***")
        return text

    async def close(self) -> None:
        await self.client.close()

    async def preflight(self) -> list[str]:
        """Check, before any paid request, that the endpoint answers, takes the key and serves the
        model (where it lists its models); returns the models it lists. Raises :class:`EndpointError`."""
        import openai

        try:
            listed = await self.client.models.list(timeout=min(self.config.deadline, 15.0))
            names = [m.id for m in listed.data]
        except openai.APIStatusError as error:
            if error.status_code in (404, 405, 501):
                return []  # a server without /models: the first request checks the model instead
            raise self.fatal(error) or EndpointError(self.describe(error)) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as error:
            raise EndpointError(self.unreachable(error)) from None
        except openai.OpenAIError as error:  # an answer that is not a model list
            raise EndpointError(
                f"{self.shown_url} did not answer as an OpenAI-compatible API ({self.describe(error)}): "
                "check --endpoint (it ends in /v1)"
            ) from None
        if names and self.model not in names:
            raise EndpointError(self.unknown_model(names))
        return names

    def unreachable(self, error: BaseException) -> str:
        return (
            f"cannot reach {self.shown_url} ({self.describe(error)}): start the server there, "
            "or fix --endpoint (e.g. http://127.0.0.1:8000/v1 for vLLM)"
        )

    def unknown_model(self, names: list[str]) -> str:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f"{self.shown_url} does not serve model {self.model!r}: pass --model with one it serves ({shown})"

    def describe(self, error: BaseException) -> str:
        """One line about a failed request, without the key."""
        status = getattr(error, "status_code", None)
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        text = re.sub(r"^Error code: \d+ - ", "", " ".join(str(message).split()))[:200]
        return self.redact(f"{status}: {text}" if status else f"{type(error).__name__}: {text}")

    def fatal(self, error: BaseException) -> EndpointError | None:
        """The :class:`EndpointError` a failed request means for every request, or None."""
        status = getattr(error, "status_code", None)
        if status in (401, 403):
            where = f"${self.variable}" if self.has_key else f"${self.variable}, which is not set,"
            return EndpointError(
                f"{self.shown_url} refused the key in {where} ({self.describe(error)}): "
                f"set {self.variable} to a valid key for it, or name another variable with --api-key-env"
            )
        if status == 404:
            text = self.describe(error).lower()
            if "model" in text:
                return EndpointError(
                    f"{self.shown_url} does not serve model {self.model!r} ({self.describe(error)}): pass --model "
                    f"with one it serves (GET {self.shown_url}/models lists them)"
                )
            return EndpointError(
                f"{self.shown_url} has no chat-completions API ({self.describe(error)}): check --endpoint (it ends in /v1)"
            )
        return None

    async def ask(self, messages: list[dict[str, str]]) -> Answer:
        """The model's answer to ``messages``, sent again on a transient failure (see the module)."""
        import openai

        wait = self.config.backoff
        for attempt in range(self.config.retries + 1):
            try:
                answer = await self._send(messages)
                self._streak = ((), 0)
                return answer
            except openai.APIStatusError as error:
                fatal = self.fatal(error)
                if fatal is not None:
                    raise fatal from None
                if error.status_code != 429 and error.status_code < 500:
                    self.traffic.failed += 1
                    self._count_failure(error)
                    raise RequestFailed(self.describe(error)) from None
                last: BaseException = error
                asked = retry_after(error)
            except (openai.APIConnectionError, openai.APITimeoutError, openai.APIResponseValidationError) as error:
                last, asked = error, None
            except ValueError as error:  # a body that is not JSON
                last, asked = error, None
            if attempt < self.config.retries:
                self.traffic.retried += 1
                await asyncio.sleep(min(MAX_WAIT, max(wait, asked or 0.0)))
                wait *= 2
        self.traffic.failed += 1
        self._count_failure(last)
        raise RequestFailed(f"after {self.config.retries + 1} tries: {self.describe(last)}")

    def _count_failure(self, error: BaseException) -> None:
        """Count a failed request; raise :class:`EndpointError` once :data:`LOST_AFTER` in a row met
        the same failure: an unreachable endpoint, a missed deadline, or one refusal of them all."""
        import openai

        if isinstance(error, openai.APITimeoutError):
            kind: tuple = ("timeout",)
        elif isinstance(error, openai.APIConnectionError):
            kind = ("unreached",)
        elif isinstance(error, openai.APIStatusError) and error.status_code < 500 and error.status_code != 429:
            kind = ("refused", self.describe(error))
        else:
            kind = ()
        seen, count = self._streak
        self._streak = (kind, count + 1 if kind and kind == seen else 1)
        if not kind or self._streak[1] < LOST_AFTER:
            return
        again = run_again(replacing="--overwrite" if self.config.overwrite else None)

        def stop(fix: str) -> str:
            return f"what was answered is stored: {fix} and {again} to go on"

        if kind[0] == "unreached":
            raise EndpointError(
                f"lost {self.shown_url}: {LOST_AFTER} requests in a row failed to reach it ({self.describe(error)}); "
                + stop("restart the server")
            )
        if kind[0] == "timeout":
            raise EndpointError(
                f"{self.shown_url} answered none of {LOST_AFTER} requests in a row within --deadline "
                f"{self.config.deadline:g} seconds ({self.describe(error)}): it answers, but slower than that; "
                + stop(
                    f"raise --deadline, or lower --concurrency (now {self.config.concurrency}) so it answers sooner,"
                )
            )
        raise EndpointError(
            f"{self.shown_url} refused {LOST_AFTER} requests in a row alike ({kind[1]}); "
            + stop(f"change what it names (--model {self.model}, --max-tokens, --temperature) so it takes them,")
        )

    async def _send(self, messages: list[dict[str, str]]) -> Answer:
        async with self.slots:
            self.traffic.sent += 1
            self.traffic.change(+1)
            try:
                response = await self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=self.config.max_tokens,
                    temperature=self.config.temperature,
                )
            finally:
                self.traffic.change(-1)
        usage = getattr(response, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        self.traffic.prompt_tokens += prompt or 0
        self.traffic.completion_tokens += completion or 0
        choices = getattr(response, "choices", None) or []
        text = choices[0].message.content if choices and choices[0].message is not None else None
        return Answer(text, prompt, completion)


def retry_after(error: Any) -> float | None:
    """Seconds the endpoint's Retry-After header asks for (None when it sets none)."""
    try:
        value = error.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None
