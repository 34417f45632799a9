"""How ``crosslens browse`` serves: its settings, one dataclass (the CLI's flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass

from crosslens.core.errors import CrosslensError

HOST = "127.0.0.1"
"""The only address the browser listens on: the feature database stays on this machine (reach it
from elsewhere through an SSH tunnel, ``ssh -L PORT:127.0.0.1:PORT host``)."""

DEFAULT_PORT = 6007
"""TensorBoard's port plus one, so the two can run side by side."""
PAGE_SIZE = 50
"""Features per page of the list, where neither --page-size nor the URL's ``limit`` says."""
MAX_PAGE_SIZE = 500
"""The most features one page (or API answer) lists."""


@dataclass(frozen=True)
class BrowseConfig:
    """Settings of the local feature browser (``crosslens browse RUN``)."""

    port: int = DEFAULT_PORT
    """Port on 127.0.0.1 to serve on (0: any free port; the printed URL names it). The browser
    listens on 127.0.0.1 only: from another machine, forward the port over SSH."""
    database: str | None = None
    """Feature database file to serve, taken as it is, without the seal check RUN's own gets
    (default: RUN/dashboards.sqlite, written by crosslens dashboards)."""
    page_size: int = PAGE_SIZE
    """Features per page of the feature list (the page's own selector changes it)."""
    log_requests: bool = False
    """Print one line per HTTP request, as http.server does."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise CrosslensError(f"--port {self.port}: use a port from 1 to 65535 (0: any free port).")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise CrosslensError(f"--page-size {self.page_size}: use 1 to {MAX_PAGE_SIZE} features per page.")
