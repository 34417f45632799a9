"""``crosslens browse RUN``: a local web app over the feature database that ``crosslens
dashboards RUN`` writes (:mod:`crosslens.dashboards.schema`).

It runs on the standard library alone (``http.server`` and ``sqlite3``; no torch), listens on
127.0.0.1 only, and draws its plots as SVG itself (``static/charts.js``), so it works with no
network. Its live panels are answered by a backend handed to it
(:mod:`crosslens.browser.live`; ``crosslens browse`` hands it :class:`crosslens.live.LiveAnswers`).
:func:`browse` serves until Ctrl-C; :func:`make_server` returns the bound server (tests and
notebooks serve it from a thread).
"""

from __future__ import annotations

from crosslens.browser.config import DEFAULT_PORT, HOST, BrowseConfig
from crosslens.browser.database import DatabaseProblem
from crosslens.browser.server import BrowserServer, browse, make_server

__all__ = ["DEFAULT_PORT", "HOST", "BrowseConfig", "BrowserServer", "DatabaseProblem", "browse", "make_server"]
