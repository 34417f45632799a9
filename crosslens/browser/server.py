"""``crosslens browse RUN``: the feature database as a local web app, served the way TensorBoard
is (one process, one port on 127.0.0.1, a URL printed, Ctrl-C to stop).

Pages (one static HTML page and vanilla JS from ``crosslens/browser/static``, whose plots are SVG
drawn by ``charts.js``, so nothing is fetched from the network and a new tab has no charting
library to start). The page shows two views and moves between them without reloading:

* ``/``: the feature list: search, filters, sort, pages (its state lives in the URL);
* ``/feature/ID?snapshot=S``: one feature through training (S = -1: the crosscoder's own code);
* ``/report``: the run's report.html, whose feature ids link to their pages (with a notice at the top
  where the lineage agreement it may show no longer holds).

JSON API, answered to GET. An error is ``{"error": "one line"}``: 400 for a bad parameter (or
parameters that are not UTF-8), 404 for an unknown feature or endpoint, 403 for a request from
another site's page, 409 and 503 from the live routes (:mod:`crosslens.browser.live` says when),
and 500 where answering failed in the server itself (the line names the path and the exception;
the server goes on). Two refusals are not JSON, on any path: a request addressed to a host name
other than this machine's is a plain-text 403 (``forbidden host``), and a method other than GET
is http.server's 501 page (HTML).


* ``/api/run``: the run: snapshots, classes and their counts, tasks, sortable columns, budget;
* ``/api/features?...``: a page of the feature list (parameters: :func:`~crosslens.browser.queries.parse_query`);
* ``/api/feature/ID``: one feature's facts, per-snapshot series, histograms, logit effects, causal scores;
* ``/api/feature/ID/contexts[?snapshot=S]``: its top and quantile contexts at every reading, or at S;
* ``/api/live/...``: your own text and steering at every snapshot (:mod:`crosslens.browser.live`),
  answered by the live backend handed to :func:`make_server`.
* ``/api/feature/ID/explanations``: its explanations per phase, their scores and its drift
  (:mod:`crosslens.browser.explained`; the list's ``meaning``, ``drifted`` and ``min_detection`` search them).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.resources
import json
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crosslens.browser.config import DEFAULT_PORT, HOST, PAGE_SIZE, BrowseConfig
from crosslens.browser.database import Database
from crosslens.browser.explained import EXPLAINED_SORTS, ExplainedQueryError, feature_explanations
from crosslens.browser.feature import (
    NoSuchFeature,
    checked_feature,
    checked_snapshot,
    feature_contexts,
    feature_detail,
)
from crosslens.browser.live import LiveBackend, PairedLive, live_answer
from crosslens.browser.queries import FEATURE_SORTS, SNAPSHOT_SORTS, STATES, QueryError, feature_page, parse_query
from crosslens.core.errors import CrosslensError
from crosslens.core.paths import REPORT_NAME

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
_PAGES = {"/": "app.html"}
CROSS_SITE = (
    "a request from another site's page is refused: the API answers this server's own pages; "
    "open the page at this address, or ask from a script (which sends no Sec-Fetch-Site)"
)


class Assets:
    """The static files, read once: each served under a content-hashed URL (``?v=``) and cached
    by the browser for good; the HTML pages, whose links carry those hashes, are never cached."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        """``files``: name -> bytes (default: the package's ``static/`` folder)."""
        if files is None:
            root = importlib.resources.files("crosslens.browser") / "static"
            files = {
                item.name: item.read_bytes()
                for item in root.iterdir()
                if item.is_file() and not item.name.startswith(".")
            }
        self.version = {name: hashlib.sha256(data).hexdigest()[:12] for name, data in files.items()}

        def stamp(match: re.Match[bytes]) -> bytes:
            version = self.version.get(match[2].decode(), "0").encode()
            return match[1] + b'="/static/' + match[2] + b"?v=" + version + b'"'

        self.files = {
            name: re.sub(rb'(src|href)="/static/([\w.-]+)"', stamp, data) if name.endswith(".html") else data
            for name, data in files.items()
        }


class BrowserServer(ThreadingHTTPServer):
    """The browser's HTTP server over one feature database."""

    daemon_threads = True

    def __init__(self, database: Database, config: BrowseConfig, report: Path, live: LiveBackend | None = None) -> None:
        self.database, self.config, self.report, self.assets = database, config, report, Assets()
        self.live = None if live is None else PairedLive(live, database.facts)
        try:
            super().__init__((HOST, config.port), BrowserHandler)
        except OSError as error:
            database.close()
            if error.errno == errno.EADDRINUSE:
                raise CrosslensError(
                    f"port {config.port} on {HOST} is in use (another crosslens browse or TensorBoard?): "
                    "pick another with --port, or --port 0 for any free port."
                ) from None
            if error.errno == errno.EACCES:
                raise CrosslensError(f"port {config.port} needs privileges: pick one above 1023 with --port.") from None
            raise

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def server_close(self) -> None:
        super().server_close()
        self.database.close()
        if self.live is not None:  # its requests still waiting are refused, not computed for no one
            self.live.close()

    def run_summary(self) -> dict[str, Any]:
        facts = self.database.facts
        return {
            "database": str(facts.path),
            "size_bytes": facts.path.stat().st_size,
            "complete": facts.complete,
            "n_features": facts.n_features,
            "n_snapshots": facts.n_snapshots,
            "snapshots": facts.snapshots,
            "classes": facts.classes,
            "tasks": facts.tasks,
            "relie_classes": facts.relie_classes,
            "sorts": {"feature": FEATURE_SORTS, "snapshot": ["at_" + c for c in SNAPSHOT_SORTS]},
            "states": list(STATES),
            "crosscoder": facts.meta.get("crosscoder"),
            "suite": facts.meta.get("suite"),
            "budget": facts.meta.get("budget"),
            "n_tokens": facts.meta.get("n_tokens"),
            "histogram_edges": facts.meta.get("histogram_edges"),
            "emergence": facts.emergence,
            "report": self.report.is_file(),
            "page_size": self.config.page_size,
            "live": self.live is not None,
            # the steering form's defaults, the backend's own (crosslens.live.config)
            "steer_defaults": self.live.status()["limits"]["steer_defaults"] if self.live is not None else None,
            "explained": facts.explained,  # crosslens explain's explanations (None: none)
            "explained_sorts": list(EXPLAINED_SORTS),
        }


class BrowserHandler(BaseHTTPRequestHandler):
    """Routes a GET to a page, a static file, the report or the JSON API."""

    server: BrowserServer
    protocol_version = "HTTP/1.1"  # keep-alive: a page's few requests share one connection
    # headers and body go out in separate writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK of the headers (40 ms on Linux) before it is sent
    disable_nagle_algorithm = True

    _ROUTES = (
        (re.compile(r"/api/run"), "_api_run"),
        (re.compile(r"/api/features"), "_api_features"),
        (re.compile(r"/api/feature/([^/]+)"), "_api_feature"),
        (re.compile(r"/api/feature/([^/]+)/contexts"), "_api_contexts"),
        (re.compile(r"/api/live/.*"), "_api_live"),
        (re.compile(r"/api/feature/([^/]+)/explanations"), "_api_explanations"),
        (re.compile(r"/feature/(\d+)/?"), "_feature_page"),
        (re.compile(r"/static/([\w.-]+)"), "_static"),
        (re.compile(r"/report"), "_report"),
        (re.compile(r"/favicon.ico"), "_favicon"),
    )

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if not self._host_allowed():
            return self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", "text/plain; charset=utf-8")
        url = urlsplit(self.path)
        try:
            query = parse_qs(url.query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            return self._json({"error": "the request's parameters are not valid UTF-8: send text as UTF-8"}, 400)
        self.params = {key: values[-1] for key, values in query.items()}
        if url.path.startswith("/api/") and not self._same_site():
            return self._json({"error": CROSS_SITE}, HTTPStatus.FORBIDDEN)
        if url.path in _PAGES:
            return self._static(_PAGES[url.path])
        for pattern, name in self._ROUTES:
            match = pattern.fullmatch(url.path)
            if match:
                try:
                    if url.path.startswith("/api/"):  # a crosslens explain run may be writing the explanations
                        self.server.database.follow_explanations()
                    return getattr(self, name)(*match.groups())
                except (QueryError, ExplainedQueryError, NoSuchFeature) as error:
                    status = HTTPStatus.NOT_FOUND if isinstance(error, LookupError) else HTTPStatus.BAD_REQUEST
                    return self._json({"error": str(error.args[0])}, status)
                except Exception as error:  # noqa: BLE001 - answered, so the page can say it and the server goes on
                    self.log_error("%s failed: %r", url.path, error)
                    problem = " ".join(f"{type(error).__name__}: {error}".split())[:300]
                    return self._json({"error": f"the server failed on {url.path} ({problem})"}, 500)
        if url.path.startswith("/api/"):
            return self._json({"error": f"no API endpoint {url.path}"}, HTTPStatus.NOT_FOUND)
        return self._send(HTTPStatus.NOT_FOUND, _not_found(url.path), _TYPES[".html"])

    def _host_allowed(self) -> bool:
        """Only requests addressed to this machine: a page elsewhere whose name resolves to
        127.0.0.1 (DNS rebinding) cannot read the database through the visitor's browser."""
        host = self.headers.get("Host")
        return host is None or host.rsplit(":", 1)[0] in (HOST, "localhost", "[::1]")

    def _same_site(self) -> bool:
        """Whether the request did not come from another site's page: a browser says where a request
        comes from (``Sec-Fetch-Site``); a script or ``curl`` sends nothing. The API is for the pages
        this server serves: a page elsewhere could not read its answers, but could make the server
        load the snapshot models and compute (an image whose address is a steering request)."""
        return self.headers.get("Sec-Fetch-Site") in (None, "same-origin", "none")

    # ----------------------------------------------------------------- API
    def _api_run(self) -> None:
        self._json(self.server.run_summary())

    def _api_features(self) -> None:
        facts = self.server.database.facts
        query = parse_query(self.params, facts, self.server.config.page_size)
        with self.server.database.connection() as connection:
            self._json(feature_page(connection, query, facts))

    def _api_feature(self, feature: str) -> None:
        facts = self.server.database.facts
        with self.server.database.connection() as connection:
            self._json(feature_detail(connection, checked_feature(feature, facts), facts))

    def _api_contexts(self, feature: str) -> None:
        facts = self.server.database.facts
        chosen, snapshot = checked_feature(feature, facts), checked_snapshot(self.params.get("snapshot"), facts)
        with self.server.database.connection() as connection:
            self._json(feature_contexts(connection, chosen, facts, snapshot))

    def _api_live(self) -> None:
        path = urlsplit(self.path).path
        status, payload = live_answer(self.server.live, self.server.database, path, self.params)
        self._json(payload, status)

    def _api_explanations(self, feature: str) -> None:
        with self.server.database.connection() as connection:
            facts = self.server.database.facts
            self._json(feature_explanations(connection, checked_feature(feature, facts), facts.explained))

    # ----------------------------------------------------------------- pages and files
    def _feature_page(self, feature: str) -> None:
        self._static("app.html")

    def _static(self, name: str) -> None:
        data = self.server.assets.files.get(name)
        if data is None:
            return self._send(HTTPStatus.NOT_FOUND, _not_found(f"/static/{name}"), _TYPES[".html"])
        cache = (
            "no-cache" if name.endswith(".html") or "v" not in self.params else "public, max-age=31536000, immutable"
        )
        self._send(HTTPStatus.OK, data, _TYPES.get(Path(name).suffix, "application/octet-stream"), cache)

    def _report(self) -> None:
        report = self.server.report
        if not report.is_file():
            page = _page(
                "No report yet",
                f"<p>{_escape(report)} does not exist: <code>crosslens report {_escape(report.parent)}</code> writes it.</p>",
            )
            return self._send(HTTPStatus.NOT_FOUND, page, _TYPES[".html"])
        page = report.read_bytes()
        dropped = self.server.database.facts.emergence.get("agreement_dropped")
        if dropped:  # a report written while the agreement held still shows it
            page = _with_notice(
                page,
                f"The lineage agreement no longer holds: {_escape(dropped)}. An agreement this report shows is out "
                f"of date; <code>crosslens report {_escape(report.parent)}</code> writes the report again without it.",
            )
        self._send(HTTPStatus.OK, page, _TYPES[".html"], "no-cache")

    def _favicon(self) -> None:
        self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", "public, max-age=86400")

    # ----------------------------------------------------------------- responses
    def _json(self, payload: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        started = time.perf_counter()
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(
            status, body, "application/json", "no-store", f"json;dur={1000 * (time.perf_counter() - started):.1f}"
        )

    def _send(self, status: HTTPStatus, body: bytes, kind: str, cache: str = "no-store", timing: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        if timing:
            self.send_header("Server-Timing", timing)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if self.server.config.log_requests:
            super().log_message(format, *args)


def _escape(value: object) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _with_notice(page: bytes, text: str) -> bytes:
    """``page`` with a one-line notice ``text`` (HTML) at the top of its body."""
    notice = f'<p class="notice" id="report-notice" style="border:1px solid #c60;padding:6px">{text}</p>'.encode()
    at = page.find(b">", page.find(b"<body")) + 1 if b"<body" in page else 0
    return page[:at] + notice + page[at:]


def _page(title: str, body: str) -> bytes:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_escape(title)}</title>'
        f'<link rel="stylesheet" href="/static/style.css"></head><body class="plain"><h1>{_escape(title)}</h1>{body}'
        '<p><a href="/">feature list</a></p></body></html>'
    ).encode()


def _not_found(path: str) -> bytes:
    return _page("Not found", f"<p>Nothing at <code>{_escape(path)}</code>.</p>")


def make_server(
    run_dir: str | Path, config: BrowseConfig = BrowseConfig(), live: LiveBackend | None = None
) -> BrowserServer:
    """The server over ``run_dir``'s feature database, bound (port 0: a free one) but not yet serving;
    ``live`` answers the live panels (:class:`crosslens.live.LiveAnswers`; None: stored pages only)."""
    database = Database(run_dir, config.database)
    return BrowserServer(database, config, database.path.parent / REPORT_NAME, live)


def browse(
    run_dir: str | Path,
    *,
    port: int = DEFAULT_PORT,
    database: str | Path | None = None,
    page_size: int = PAGE_SIZE,
    log_requests: bool = False,
    live: LiveBackend | None = None,
) -> None:
    """Serve ``run_dir``'s feature database at http://127.0.0.1:PORT/ until Ctrl-C (the fields of
    :class:`~crosslens.browser.config.BrowseConfig`), with the live panels ``live`` answers (its
    crosscoder loaded in the background from the start). A port in use, a run without a feature
    database or a file that is not one raises a one-line :class:`~crosslens.core.errors.CrosslensError`."""
    config = BrowseConfig(
        port=port, database=None if database is None else str(database), page_size=page_size, log_requests=log_requests
    )
    server = make_server(run_dir, config, live)
    facts = server.database.facts
    if not facts.complete:
        print(f"note: {facts.path} is read as it is: its sealed record was not checked (it was named with --database).")
    print(
        f"crosslens browse: {facts.n_features} features x {facts.n_snapshots} snapshots at {server.url} "
        "(Ctrl-C to stop)",
        flush=True,
    )
    if server.live is not None:  # paired with the database, so a crosscoder of another run is said at once
        threading.Thread(target=_warm_up, args=(server.live,), name="live-warm-up", daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped.")
    finally:
        server.server_close()


def _warm_up(live: LiveBackend) -> None:
    """Load the live panels' crosscoder (and their libraries) while the user reads the stored pages."""
    try:
        live.prepare()
    except CrosslensError as error:
        print(f"live panels unavailable (the stored pages work): {' '.join(str(error).split())}", flush=True)
    else:
        print("live panels: ready; the snapshot models load with the first text or steering request", flush=True)
