"""A stand-in OpenAI-compatible endpoint, from the standard library: for the tests, the tutorial
and the benchmark, and for trying ``crosslens explain`` with no model at hand.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` on 127.0.0.1 and answers
deterministically, as a careful but literal reader would:

* asked for an explanation (the :mod:`crosslens.explain.prompts` format), it names the text marked
  ``<< >>`` most often: ``Explanation: the text "dog"``;
* asked to judge passages, it says 1 for each passage holding the text the explanation quotes.

It counts requests, keeps a digest of each, and misbehaves on demand, one request at a time
(:meth:`StubEndpoint.fail_next`): ``429`` (with ``Retry-After: 0``), ``500``, ``slow`` (answers
after ``slow_seconds``), ``malformed`` (a body that is not JSON), ``empty`` (no choice), ``garbled``
(an answer in no format), ``401``, ``400`` (the refusal OpenAI gives every request to a model
that does not take one of its parameters). Given a ``key``, it refuses any other with 401,
repeating the key it was sent as careless servers do (the client must keep it out of its
messages); asked for a model other than its ``model``, it answers 404 as OpenAI does.

    with StubEndpoint(model="stub") as stub:
        crosslens explain RUN --endpoint {stub.url} --model stub
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "slow", "malformed", "empty", "garbled", "401", "400")

UNSUPPORTED = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
)
"""What the ``400`` fault answers (OpenAI's answer to a reasoning model asked with max_tokens)."""


class StubEndpoint:
    """A deterministic OpenAI-compatible chat-completions server on 127.0.0.1 (a free port)."""

    def __init__(self, model: str = "stub-model", *, key: str | None = None, delay: float = 0.0) -> None:
        self.model, self.key, self.delay = model, key, delay
        self.slow_seconds = 5.0
        self.lock = threading.Lock()
        self.faults: deque[str] = deque()
        self.requests = 0
        """Chat-completion requests received (every one, answered or refused)."""
        self.log: list[dict[str, Any]] = []
        """Per chat request: its kind (explain, detect or other), its messages' digest, the fault it met."""
        self.server = _Server(self)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> StubEndpoint:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StubEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail_next(self, *faults: str) -> None:
        """Misbehave on the next requests, one fault each, in order (see :data:`FAULTS`)."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; pick from {FAULTS}")
        with self.lock:
            self.faults.extend(faults)

    def digests(self, kind: str | None = None) -> list[str]:
        with self.lock:
            return [entry["digest"] for entry in self.log if kind is None or entry["kind"] == kind]

    # ------------------------------------------------------------------ answers
    def take(self, messages: list[dict[str, Any]]) -> tuple[str, str | None]:
        """Count a request; (its kind, the fault it meets)."""
        text = json.dumps(messages, sort_keys=True)
        kind = (
            "explain"
            if "Passages where the feature responds" in text
            else "detect"
            if "Explanation:" in text
            else "other"
        )
        with self.lock:
            self.requests += 1
            fault = self.faults.popleft() if self.faults else None
            self.log.append({"kind": kind, "digest": hashlib.sha256(text.encode()).hexdigest(), "fault": fault})
        return kind, fault

    def answer(self, kind: str, messages: list[dict[str, Any]]) -> str:
        user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        if kind == "explain":
            marked = Counter(" ".join(span.split()).lower() for span in re.findall(r"<<(.+?)>>", user))
            if not marked:
                return "I see no marked text."
            best = max(marked.items(), key=lambda item: (item[1], -len(item[0]), item[0]))[0]
            return f'The marked tokens are all the same.\nExplanation: the text "{best}"'
        if kind == "detect":
            return json.dumps(judge(user))
        return "Hello."


def judge(user: str) -> list[int]:
    """1 for each passage holding the text the explanation quotes (its longest word, if it quotes none)."""
    head, _, body = user.partition("\n\n")
    quoted = re.findall(r'"([^"]+)"', head)
    words = re.findall(r"\w+", head.removeprefix("Explanation:"))
    needle = (quoted[0] if quoted else max(words, key=len, default="")).lower()
    passages = re.findall(r"^Passage \d+: (.*)$", body, re.MULTILINE)
    return [int(bool(needle) and needle in p.lower()) for p in passages]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, stub: StubEndpoint) -> None:
        self.stub = stub
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow answer closed its end: nothing to report


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # headers and body leave in two writes; with Nagle's algorithm the body waits for the client's
    # delayed ACK of the headers (about 40 ms a request)
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # quiet: tests read the stub's own log

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        stub = self.server.stub
        if self.path.rstrip("/") != "/v1/models":
            return self._error(404, "no such path", "not_found")
        if not self._authorized():
            return self._refuse_key()
        models = [{"id": stub.model, "object": "model", "created": 0, "owned_by": "crosslens-stub"}]
        self._send(200, {"object": "list", "data": models})

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        stub = self.server.stub
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, "no such path", "not_found")
        request = json.loads(body or b"{}")
        messages = request.get("messages") or []
        kind, fault = stub.take(messages)
        if fault == "401" or not self._authorized():
            return self._refuse_key()
        if request.get("model") != stub.model:
            return self._error(404, f"The model `{request.get('model')}` does not exist.", "model_not_found")
        if fault == "400":
            return self._error(400, UNSUPPORTED, "unsupported_parameter")
        if fault in ("429", "500"):
            status, message = (429, "Rate limit reached.") if fault == "429" else (500, "The server had an error.")
            return self._error(status, message, "rate_limit_exceeded" if fault == "429" else "server_error")
        time.sleep(stub.slow_seconds if fault == "slow" else stub.delay)
        if fault == "malformed":
            return self._raw(200, b'{"id": "chatcmpl-stub", "choices": [', "application/json")
        content = "I am not sure what these have in common." if fault == "garbled" else stub.answer(kind, messages)
        choices = (
            []
            if fault == "empty"
            else [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
        )
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in messages) // 4
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        payload = {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": stub.model}
        self._send(200, payload | {"choices": choices, "usage": usage})

    def _authorized(self) -> bool:
        key = self.server.stub.key
        return key is None or self.headers.get("Authorization") == f"Bearer {key}"

    def _refuse_key(self) -> None:
        # as careless servers do, the refusal repeats the key it was sent: the client must not
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        self._error(401, f"Incorrect API key provided: {given}.", "invalid_api_key")

    def _error(self, status: int, message: str, code: str) -> None:
        headers = {"Retry-After": "0"} if status == 429 else {}
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        self._send(status, {"error": error}, headers)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
