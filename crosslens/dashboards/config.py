"""What ``crosslens dashboards RUN`` takes (:class:`DashboardsConfig`, one field per flag), the
budget it resolves to, and how large the feature database of a budget will be.

The database's size is set by what is kept per feature and reading (a snapshot, or the
crosscoder's own code): the top and quantile contexts with their windows dominate, then the
trigram index of the top contexts' text, then the per-snapshot rows (histogram and logit
effects). :func:`predict_database_bytes` counts each from the shape; :func:`resolve_budget`
picks the largest budget of :data:`BUDGET_LADDER` whose prediction stays under the config's
``max_database_gb``, so a wide crosscoder over many snapshots keeps fewer contexts per row
than a small one, and fields set by hand are kept as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from crosslens.core.bounds import whole_number
from crosslens.core.errors import CrosslensError
from crosslens.dashboards.schema import empty_database_bytes

DEFAULT_N_TOKENS = 10_000_000
"""Tokens read when ``n_tokens`` is unset (fewer when the store or token table holds fewer)."""

GE_SHAPE = (24_576, 32)
"""Ge et al.'s crosscoder: d_sae features over n_snapshots Pythia-160M snapshots."""

GE_VOCAB = 50_304
"""Pythia's unembedding width (its vocabulary rows in the database)."""

BUDGET_LADDER: tuple[tuple[int, int, int], ...] = (
    (20, 10, 10),
    (16, 8, 8),
    (12, 6, 8),
    (10, 5, 8),
    (8, 4, 6),
    (6, 3, 5),
    (4, 2, 4),
    (2, 1, 2),
)
"""(top_k, n_quantile, window) budgets, largest first: the default is the first whose predicted
database fits ``max_database_gb``."""

# Bytes per stored item, measured on databases crosslens wrote (B-tree pages about 90% full).
CONTEXT_ROW_BYTES = 40
"""A contexts row's keys, numbers and record headers, beside its two blobs."""
WINDOW_TOKEN_BYTES = 6
"""Each window token: its id (<i4) and its activation (<f2)."""
SEARCH_BYTES_PER_TOKEN = 16
"""A top context's window token in ``context_search``: its text (about 5 characters) and the
trigram index over it (an upper bound: windows that recur across readings are stored once)."""
FEATURE_SNAPSHOT_ROW_BYTES = 80
"""A feature_snapshots row's numbers and its three index entries."""
FEATURE_ROW_BYTES = 160
"""A features row and its six index entries."""
VOCAB_ROW_BYTES = 16
CAUSAL_ROW_BYTES = 60
PAGE_FILL = 0.9


class DashboardsError(CrosslensError):
    """The dashboards cannot be computed from (or read for) what was handed over; the message
    names the fix."""


class StaleDatabaseError(DashboardsError):
    """The run folder holds a finished database that is not this call's (another run, other
    inputs, damaged or of an earlier crosslens), and the call may not replace it; ``problem``
    says which, without the fix."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}; pass --overwrite to replace it")
        self.problem = problem


class DashboardsInterrupted(KeyboardInterrupt):
    """The pass stopped on Ctrl-C (or a signal); what it had computed is saved and the message says
    how to continue."""

    def __init__(self, message: str, *, signum: int = 2):
        super().__init__(message)
        self.signum = signum


def path_list(text: str) -> list[str]:
    """``"a.json,b/"`` -> ``["a.json", "b/"]`` (the ``--attribution`` flag's parser)."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


@dataclass
class DashboardsConfig:
    """What the dashboards of a run keep per feature and snapshot, and over how many tokens."""

    n_tokens: int | None = field(default=None, metadata={"min": 1})
    """Tokens every statistic is computed over, whole sequences from the start of the store or
    token table (default: all of them, up to {DEFAULT_N_TOKENS:,}); with --stream also the tokens
    the snapshot models are streamed over, as train --stream's --n-tokens."""
    top_k: int | None = field(default=None, metadata={"min": 1})
    """Top-activating contexts kept per feature and snapshot, and for the crosscoder's own code
    (default: sized from the crosscoder's shape so the database stays under --max-database-gb:
    20 for the pico demo's 1,024 features x 12 snapshots, 8 at Ge et al.'s 24,576 x 32)."""
    n_quantile: int | None = field(default=None, metadata={"min": 0})
    """Contexts sampled across the firing activations' quantiles per feature and snapshot, as
    SAEDashboard shows beside the top ones (default: sized with top_k, half of it)."""
    window: int | None = field(default=None, metadata={"min": 0})
    """Tokens kept each side of a context's focus token, each with its activation (default: sized
    with top_k, 10 for the pico demo, 6 at Ge et al.'s shape)."""
    n_logits: int = field(default=10, metadata={"min": 1})
    """Tokens a feature's decoder direction promotes most, and suppresses most, kept per snapshot
    (through that snapshot's own final norm and unembedding)."""
    n_bins: int = field(default=40, metadata={"min": 2})
    """Bins of the activation histogram, log-spaced, the same edges for every feature and
    snapshot (meta.histogram_edges)."""
    reservoir: int | None = field(default=None, metadata={"min": 1})
    """Firing examples kept per feature and snapshot (a seeded uniform sample) that the quantile
    contexts are picked from at the end (default: 4 x n_quantile, at least 8)."""
    batch_size: int = field(default=4096, metadata={"min": 1})
    """Tokens encoded at a time (whole sequences; at least one sequence)."""
    max_database_gb: float = field(default=4.0, metadata={"min": 0, "strictly": True})
    """The default budget keeps the predicted database under this many GB (1e9 bytes); top_k,
    n_quantile and window set by hand are used as given."""
    seed: int = 0
    """Seed of the quantile contexts' sample: the same seed and inputs give the same database bytes."""
    attribution: list[str] | None = field(default=None, metadata={"parse": path_list})
    """Comma-separated IE tables of `crosslens attribute` (its --out .json file, or the folder holding
    ie_table.json, relie.json, ablation_curves.json) to read causal scores from (default: every
    ie_table.json under RUN)."""
    overwrite: bool = False
    """Compute RUN's feature database again, replacing the one there (or an unfinished pass): one of
    these inputs, one of other inputs or one that fails its checks. Without it an up-to-date database
    is kept, a stopped pass of these inputs goes on (and then replaces it), and any other is refused
    and left as it is."""

    def __post_init__(self) -> None:
        if isinstance(self.attribution, str):  # what --attribution takes, from Python
            self.attribution = path_list(self.attribution)
        for name in ("n_tokens", "top_k", "n_logits", "n_bins", "reservoir", "batch_size", "n_quantile", "window"):
            value = getattr(self, name)
            if value is not None and whole_number(value) is None:
                raise DashboardsError(f"{name} is a whole number, got {value!r}")
        for name in ("n_tokens", "top_k", "n_logits", "n_bins", "reservoir", "batch_size"):
            value = getattr(self, name)
            if value is not None and int(value) < (2 if name == "n_bins" else 1):
                raise DashboardsError(f"{name} must be at least {2 if name == 'n_bins' else 1}, got {value}")
        for name in ("n_quantile", "window"):
            value = getattr(self, name)
            if value is not None and int(value) < 0:
                raise DashboardsError(f"{name} must be at least 0, got {value}")
        if not self.max_database_gb > 0:
            raise DashboardsError(f"max_database_gb must be above 0, got {self.max_database_gb}")


@dataclass(frozen=True)
class Budget:
    """What is kept per feature and reading, resolved from a :class:`DashboardsConfig` and a shape."""

    top_k: int
    n_quantile: int
    window: int
    n_logits: int
    n_bins: int
    reservoir: int

    @property
    def width(self) -> int:
        """Tokens in a whole window (focus token included)."""
        return 2 * self.window + 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def predict_database_bytes(
    d_sae: int, n_snapshots: int, budget: Budget, *, vocab_size: int = GE_VOCAB, n_causal_rows: int = 0
) -> int:
    """Bytes of the feature database of a crosscoder of this shape at this budget, every feature
    firing (an upper bound: dead features have no contexts, and repeated windows are searched once),
    with the pages a database of no rows takes (:func:`~crosslens.dashboards.schema.empty_database_bytes`),
    which rule a small crosscoder's database."""
    readings = d_sae * (n_snapshots + 1)
    contexts = readings * (budget.top_k + budget.n_quantile)
    context_bytes = contexts * (CONTEXT_ROW_BYTES + WINDOW_TOKEN_BYTES * budget.width)
    search_bytes = readings * budget.top_k * budget.width * SEARCH_BYTES_PER_TOKEN
    per_snapshot = FEATURE_SNAPSHOT_ROW_BYTES + 4 * budget.n_bins + 16 * budget.n_logits
    rows_bytes = d_sae * n_snapshots * per_snapshot + d_sae * FEATURE_ROW_BYTES
    other = vocab_size * VOCAB_ROW_BYTES + n_causal_rows * CAUSAL_ROW_BYTES
    return int((context_bytes + search_bytes + rows_bytes + other) / PAGE_FILL) + empty_database_bytes()


def resolve_budget(config: DashboardsConfig, d_sae: int, n_snapshots: int, vocab_size: int = GE_VOCAB) -> Budget:
    """The budget ``config`` asks for at this shape: its own top_k, n_quantile and window where set,
    else the largest rung of :data:`BUDGET_LADDER` predicted to fit ``max_database_gb``."""
    limit = config.max_database_gb * 1e9
    chosen = BUDGET_LADDER[-1]
    for rung in BUDGET_LADDER:
        budget = _budget(config, *rung)
        if predict_database_bytes(d_sae, n_snapshots, budget, vocab_size=vocab_size) <= limit:
            chosen = rung
            break
    return _budget(config, *chosen)


def _budget(config: DashboardsConfig, top_k: int, n_quantile: int, window: int) -> Budget:
    top_k = int(config.top_k) if config.top_k is not None else top_k
    n_quantile = int(config.n_quantile) if config.n_quantile is not None else min(n_quantile, max(1, top_k // 2))
    window = int(config.window) if config.window is not None else window
    reservoir = int(config.reservoir) if config.reservoir is not None else max(8, 4 * n_quantile)
    return Budget(top_k, n_quantile, window, int(config.n_logits), int(config.n_bins), reservoir)


def ge_prediction(config: DashboardsConfig | None = None) -> tuple[Budget, int]:
    """The default budget at Ge et al.'s shape and its predicted database size in bytes."""
    config = config or DashboardsConfig()
    budget = resolve_budget(config, *GE_SHAPE)
    return budget, predict_database_bytes(*GE_SHAPE, budget)


def format_size(n_bytes: int) -> str:
    """``3.21 GB (2.99 GiB)``: decimal units first (the goals are stated in GB), binary beside."""
    from crosslens.core.units import format_bytes

    return (
        f"{n_bytes / 1e9:.2f} GB ({format_bytes(n_bytes)})"
        if n_bytes >= 1e8
        else f"{n_bytes / 1e6:.2f} MB ({format_bytes(n_bytes)})"
    )
