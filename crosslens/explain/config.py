"""What ``crosslens explain RUN`` takes: :class:`ExplainConfig`, one field per flag, and the error
it refuses bad input with."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from crosslens.core.bounds import bounds_problem, whole_number
from crosslens.core.errors import CrosslensError
from crosslens.dashboards.explanation_schema import PHASES

DEFAULT_KEY_VARIABLE = "OPENAI_API_KEY"


class ExplainError(CrosslensError):
    """The explanations cannot be asked for, stored or imported from what was handed over; the
    message names the fix."""


def feature_ranges(text: str) -> list[tuple[int, int]]:
    """``"3, 10-20"`` -> ``[(3, 3), (10, 20)]`` (the ``--features`` flag's parser)."""
    ranges = []
    for part in re.split(r"[,\s]+", str(text).strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ExplainError(f"{text!r}: write feature ids and ranges such as 3,10-20")
        low, high = int(match[1]), int(match[2] or match[1])
        ranges.append((min(low, high), max(low, high)))
    return ranges


def _feature_range(item: Any) -> tuple[int, int]:
    """A feature id, or a ``(low, high)`` pair of ids, as an inclusive range."""
    pair = tuple(item) if isinstance(item, (tuple, list)) else (item, item)
    ids = [whole_number(i) for i in pair] if len(pair) == 2 else [None]
    if any(i is None or i < 0 for i in ids) or ids[0] > ids[1]:
        raise ExplainError(f"features: {item!r} is not a feature id or a (low, high) range of ids; e.g. [3, (10, 20)]")
    return ids[0], ids[1]


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:  # out of range, or not a number
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0


def word_list(text: str) -> list[str]:
    """``"code,peak"`` -> ``["code", "peak"]``."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


@dataclass
class ExplainConfig:
    """Which features to explain, the endpoint that explains them, and how hard to push it."""

    endpoint: str | None = None
    """URL of an OpenAI-compatible chat-completions API, up to its /v1 (vLLM:
    http://127.0.0.1:8000/v1, llama.cpp's server: http://127.0.0.1:8080/v1, Ollama:
    http://127.0.0.1:11434/v1, or a hosted API's). Not needed for --dry-run or --import."""
    model: str | None = None
    """The model the endpoint serves that writes and judges the explanations."""
    api_key_env: str = DEFAULT_KEY_VARIABLE
    """The environment variable that holds the endpoint's key (a local server may need none). The key is
    read from it and never written anywhere."""
    features: list[tuple[int, int]] | None = field(default=None, metadata={"parse": feature_ranges})
    """Feature ids and ranges to explain, e.g. 3,10-20 (default: every live feature)."""
    classes: list[str] | None = field(default=None, metadata={"parse": word_list})
    """Explain only features of these classes, e.g. persistent,transient (default: every class but dead)."""
    max_features: int | None = field(default=None, metadata={"min": 1})
    """Explain at most this many of the selected features, lowest ids first (default: all of them)."""
    phases: list[str] = field(default_factory=lambda: list(PHASES), metadata={"parse": word_list})
    """What to explain each feature at: code (the crosscoder's own code), emergence, peak, last (its
    snapshots of that phase); a phase whose contexts equal an earlier one's shares its explanation."""
    drift: bool = field(default=True, metadata={"flag": "--no-drift"})
    """Score each phase's explanation on the other phases' contexts too, the drift matrix (--no-drift:
    each only on its own)."""
    n_examples: int = field(default=10, metadata={"min": 2})
    """Held-out activating contexts a detection score judges, and at most as many non-activating ones."""
    concurrency: int = field(default=8, metadata={"min": 1})
    """Requests in flight at once."""
    retries: int = field(default=5, metadata={"min": 0})
    """Times a request is sent again after a 429, a 5xx, a timeout or a dropped connection, waiting
    longer each time (twice as long, from 1 s, or as long as the endpoint's Retry-After asks)."""
    backoff: float = field(default=1.0, metadata={"min": 0.0})
    """Seconds before the first retry of a request (each further one waits twice as long)."""
    deadline: float = field(default=120.0, metadata={"min": 0.001})
    """Seconds one request may take before it counts as timed out."""
    max_tokens: int = field(default=512, metadata={"min": 1})
    """Most tokens an answer may have."""
    temperature: float = field(default=0.0, metadata={"min": 0.0})
    """Sampling temperature of every request."""
    seed: int = 0
    """Seed of the held-out contexts' order in a detection prompt."""
    drift_min_score: float = field(default=0.7, metadata={"min": 0.0})
    """A life phase's explanation counts towards drift where it scores at least this on its own contexts."""
    drift_min_drop: float = field(default=0.2, metadata={"min": 0.0})
    """A feature drifted where such an explanation scores at least this much less on another phase's contexts."""
    dry_run: bool = False
    """Print the requests and prompt tokens the run would send, and send none."""
    import_file: str | None = field(default=None, metadata={"flag": "--import", "metavar": "FILE"})
    """Read explanations made elsewhere instead of asking for them: a delphi run's output folder (or its
    explanations/ folder), or Neuronpedia's explanation export (JSON lines, .jsonl.gz, a JSON list, or a folder
    of them, as crosslens export --format neuronpedia also writes). Every explanation it holds is stored: it
    takes no --dry-run, --features, --classes or --max-features."""
    overwrite: bool = False
    """Start RUN/explanations.sqlite afresh, deleting the explanations and scores it holds."""
    progress: bool = field(default=True, metadata={"cli": False})
    """Show the progress bar."""

    def __post_init__(self) -> None:
        # Python callers write what the flags take: "3,10-20", "persistent", "code,peak"
        if isinstance(self.features, str):
            self.features = feature_ranges(self.features)
        elif self.features is not None:
            self.features = [_feature_range(item) for item in self.features]
        for name in ("classes", "phases"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, word_list(getattr(self, name)))
        problem = bounds_problem(next(f for f in fields(self) if f.name == "max_features"), self.max_features)
        if problem:  # 0 would read as no limit, and explain (and pay for) every feature
            raise ExplainError(f"--{problem.replace('_', '-')}; leave it unset to explain every selected feature")
        if self.endpoint is not None and not _is_http_url(self.endpoint):
            # the value is not repeated: a URL can carry a user name and password
            raise ExplainError(
                "--endpoint takes the http(s) URL of an OpenAI-compatible API with a port from 1 to 65535, "
                "e.g. http://127.0.0.1:8000/v1"
            )
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown or not self.phases:
            raise ExplainError(f"--phases {','.join(self.phases)}: pick from {','.join(PHASES)}")
        for name in ("n_examples", "concurrency", "max_tokens"):
            if int(getattr(self, name)) < (2 if name == "n_examples" else 1):
                raise ExplainError(
                    f"{name} must be at least {2 if name == 'n_examples' else 1}, got {getattr(self, name)}"
                )
        if self.retries < 0 or self.deadline <= 0 or self.temperature < 0:
            raise ExplainError("retries and temperature must be >= 0 and deadline > 0")
        for name in ("drift_min_score", "drift_min_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise ExplainError(
                    f"{flag} {getattr(self, name)}: a detection score is a balanced accuracy, in [0, 1]; "
                    f"pick {flag} there (default {getattr(type(self), name)})"
                )
        if not self.api_key_env or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # the value is not repeated: it may be the key itself, passed by mistake
            raise ExplainError(
                "--api-key-env takes the name of the environment variable that holds the key, "
                f"e.g. {DEFAULT_KEY_VARIABLE}, not the key itself"
            )
