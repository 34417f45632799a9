"""A seeded synthetic feature database, written straight through ``schema.create_schema``.

It stands in for ``crosslens dashboards RUN`` wherever a database of a chosen shape is needed:
the browser tests (small) and ``benchmarks/browse.py`` (Ge et al.'s 24,576 features x 32
snapshots). Every row obeys the schema's contract: relative norms are norms over the peak,
classes agree with emergence and fade, a feature has contexts only where it fires, quantile
contexts carry their quantile, and ``context_search`` holds the text of the feature's windows.

Rows are generated with numpy in blocks of features and written with ``executemany`` in one
transaction, indexes last, so the benchmark's 11M context rows take about a minute.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crosslens.dashboards import schema

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "be", "fi", "ho", "ju")
_SPECIAL = ("<|endoftext|>", "\n", " <b>", " &amp;", ".", ",", " the", " of", " and", " a", " to", " is")


@dataclass(frozen=True)
class FeatureDbShape:
    """What the synthetic database holds."""

    n_features: int = 64
    n_snapshots: int = 6
    top_k: int = 5
    n_quantile: int = 3
    window: int = 4
    """Tokens each side of the focus token."""
    n_logits: int = 5
    n_bins: int = 24
    vocab_size: int = 400
    tasks: tuple[str, ...] = ("agreement",)
    causal_fraction: float = 0.25
    """Share of the live features the attribution selected (every snapshot of each task)."""
    pool: int = 12
    """Distinct windows per feature that its contexts are drawn from (contexts recur over snapshots)."""
    seed: int = 0


def vocabulary(size: int) -> list[str]:
    """Token texts: a few special and HTML-like tokens, then syllable words with and without a space."""
    words = list(_SPECIAL)
    k = 16  # every k >= 16 spells a distinct word of two or more syllables (its base-16 digits)
    while len(words) < size:
        digits, rest = [], k
        while rest:
            rest, digit = divmod(rest, 16)
            digits.append(_SYLLABLES[digit])
        words.append((" " if k % 3 else "") + "".join(digits))
        k += 1
    return words[:size]


def snapshot_steps(n_snapshots: int) -> list[int]:
    """Log-spaced steps from 0 to 143,000, as Pythia's suites are sampled."""
    steps = [0]
    for i in range(1, n_snapshots):
        steps.append(max(steps[-1] + 1, int(round(143000 ** (i / max(1, n_snapshots - 1))))))
    return steps


def write_feature_database(path: str | Path, shape: FeatureDbShape = FeatureDbShape()) -> Path:
    """Write a database of ``shape`` at ``path`` (replacing one there) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + "-journal")):
        stale.unlink(missing_ok=True)
    rng = np.random.default_rng(shape.seed)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("PRAGMA synchronous = OFF")
    try:
        with connection:
            schema.create_schema(connection)
            steps = snapshot_steps(shape.n_snapshots)
            words = vocabulary(shape.vocab_size)
            lives = _write_features(connection, shape, steps, rng)
            _write_meta(connection, shape, steps, lives["edges"])
            connection.executemany(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?)",
                [(s, f"step{step}", step, step * 2_097_152, f"step{step}") for s, step in enumerate(steps)],
            )
            connection.executemany("INSERT INTO vocabulary VALUES (?, ?)", list(enumerate(words)))
            _write_contexts(connection, shape, lives, words, rng)
            _write_causal(connection, shape, lives, rng)
            for sql in schema.INDEXES:
                connection.execute(sql)
    finally:
        connection.close()
    return path


def _write_meta(connection: sqlite3.Connection, shape: FeatureDbShape, steps: list[int], edges: np.ndarray) -> None:
    budget = {
        "n_tokens": 4096 * shape.n_features,
        "top_k": shape.top_k,
        "n_quantile": shape.n_quantile,
        "window": shape.window,
        "n_logits": shape.n_logits,
    }
    meta = {
        "format": schema.FORMAT,
        "crosslens_version": "synthetic",
        "run": "0" * 64,
        "crosscoder": {
            "architecture": "jumprelu_crosscoder",
            "d_sae": shape.n_features,
            "d_in": 768,
            "n_snapshots": shape.n_snapshots,
            "hook_name": "blocks.6.hook_resid_post",
            "weights_sha256": "0" * 64,
        },
        "suite": {"model_id": "synthetic/pythia-160m", "snapshots": [f"step{s}" for s in steps]},
        "tokens": {"synthetic": asdict(shape)},
        "n_tokens": budget["n_tokens"],
        "budget": budget,
        "histogram_edges": [float(e) for e in edges],
        "activation": "per-snapshot mode at snapshots 0..S-1, the crosscoder's code at -1",
    }
    connection.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])


def _lifetimes(shape: FeatureDbShape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Class, emergence, peak and fade snapshot (-1: none) of every feature, consistent with each other."""
    F, S = shape.n_features, shape.n_snapshots
    cls = rng.choice(4, size=F, p=[0.25, 0.45, 0.2, 0.1])  # initialization, persistent, transient, dead
    cls[:4] = [0, 1, 2, 3]  # every class present, even in a tiny database
    emergence = np.where(cls == 0, 0, rng.integers(1, max(2, S - 1), size=F))
    emergence = np.where(cls == 3, -1, emergence)
    fade = np.full(F, -1)
    transient = cls == 2
    fade[transient] = rng.integers(emergence[transient] + 1, S)
    end = np.where(fade >= 0, fade, S)
    peak = np.where(cls == 3, 0, emergence + (rng.random(F) * (end - emergence)).astype(int))
    return {"cls": cls, "emergence": emergence, "fade": fade, "peak": peak}


def _write_features(connection: sqlite3.Connection, shape: FeatureDbShape, steps: list[int], rng) -> dict:
    """features and feature_snapshots; returns what the contexts and causal rows must agree with."""
    F, S = shape.n_features, shape.n_snapshots
    life = _lifetimes(shape, rng)
    cls, emergence, fade, peak = life["cls"], life["emergence"], life["fade"], life["peak"]
    s_S = np.arange(S)
    since = (s_S[None] - emergence[:, None]) / np.maximum(1, peak - emergence)[:, None]
    rise = np.where(since < 0, 0.05, 0.4 + 0.6 * np.clip(since, 0, 1))
    after = (s_S[None] - peak[:, None]) / np.maximum(1, fade - peak)[:, None]
    fall = np.where(
        fade[:, None] < 0,
        1 - 0.4 * (s_S[None] - peak[:, None]) / S,
        np.where(s_S[None] >= fade[:, None], 0.03, 1 - 0.5 * after),
    )
    relative = np.where(s_S[None] <= peak[:, None], rise, fall) * rng.uniform(0.95, 1.0, (F, S))
    relative[np.arange(F), peak] = 1.0
    relative[cls == 3] = rng.uniform(0.9, 1.0, (int((cls == 3).sum()), S))
    peak_norm = np.where(cls == 3, 0.01, rng.lognormal(0, 0.4, F))
    norms = relative * peak_norm[:, None]
    relative = norms / norms.max(axis=1, keepdims=True)
    fires = (relative >= 0.2) & (cls[:, None] != 3)
    density = np.where(fires, rng.lognormal(-7, 1.2, (F, S)).clip(max=0.5), 0.0)
    max_act = np.where(fires, rng.lognormal(1, 0.5, (F, S)), 0.0)
    mean_act = np.where(fires, max_act * rng.uniform(0.15, 0.4, (F, S)), np.nan)
    f_density = np.where(cls == 3, 0.0, density.mean(axis=1) * rng.uniform(0.8, 1.2, F))
    f_max = np.where(cls == 3, 0.0, max_act.max(axis=1) * rng.uniform(0.9, 1.1, F))
    edges = np.linspace(0.0, float(max(f_max.max(), max_act.max())) * 1.01, shape.n_bins + 1)
    dip = (cls == 1) & (rng.random(F) < 0.1) & (emergence + 2 < S)

    def step(index: np.ndarray, f: int) -> int | None:
        return None if index[f] < 0 else steps[index[f]]

    rows = []
    for f in range(F):
        e = int(emergence[f])
        rows.append(
            (
                f,
                _class_name(cls[f]),
                None if e < 0 else e,
                step(emergence, f),
                None if cls[f] == 3 else int(peak[f]),
                None if cls[f] == 3 else steps[peak[f]],
                None if fade[f] < 0 else int(fade[f]),
                step(fade, f),
                steps[e + 1] if dip[f] else None,
                steps[e + 2] if dip[f] else None,
                float(norms[f].max()),
                float(f_density[f]),
                None if cls[f] == 3 else float(mean_act[f][fires[f]].mean()),
                float(f_max[f]),
                None,
            )
        )
    connection.executemany(f"INSERT INTO features VALUES ({', '.join('?' * 15)})", rows)
    _write_feature_snapshots(connection, shape, rng, norms, relative, density, mean_act, max_act, edges)
    return {"cls": cls, "fires": fires, "max_act": max_act, "f_max": f_max, "edges": edges}


def _class_name(code: int) -> str:
    return ("initialization", "persistent", "transient", "dead")[int(code)]


def _write_feature_snapshots(connection, shape, rng, norms, relative, density, mean_act, max_act, edges) -> None:
    F, S, B, K = shape.n_features, shape.n_snapshots, shape.n_bins, shape.n_logits
    n = F * S
    # a decaying histogram up to the bin of the row's max activation
    last = np.searchsorted(edges, max_act.reshape(n), side="right").clip(1, B)
    counts = (rng.exponential(1.0, (n, B)) * 200 * np.exp(-np.arange(B) / 3.0)).astype("<u4") + 1
    counts[np.arange(B)[None] >= last[:, None]] = 0
    counts[density.reshape(n) == 0] = 0
    top_ids = rng.integers(0, shape.vocab_size, (n, K)).astype("<i4")
    bottom_ids = rng.integers(0, shape.vocab_size, (n, K)).astype("<i4")
    top_values = -np.sort(-rng.lognormal(-1, 0.5, (n, K)), axis=1).astype("<f4")
    bottom_values = np.sort(-rng.lognormal(-1, 0.5, (n, K)), axis=1).astype("<f4")
    blobs = [_split(a.tobytes(), n) for a in (counts, top_ids, top_values, bottom_ids, bottom_values)]
    feature_n, snapshot_n = np.divmod(np.arange(n), S)
    mean_list = [None if np.isnan(m) else float(m) for m in mean_act.reshape(n)]
    connection.executemany(
        f"INSERT INTO feature_snapshots VALUES ({', '.join('?' * 12)})",
        zip(
            feature_n.tolist(),
            snapshot_n.tolist(),
            norms.reshape(n).tolist(),
            relative.reshape(n).tolist(),
            density.reshape(n).tolist(),
            mean_list,
            max_act.reshape(n).tolist(),
            *blobs,
        ),
    )


def _split(data: bytes, n: int) -> list[bytes]:
    size = len(data) // n
    return [data[i * size : (i + 1) * size] for i in range(n)]


def _write_contexts(connection, shape: FeatureDbShape, lives: dict, words: list[str], rng) -> None:
    """Top and quantile contexts of every firing (feature, snapshot) and of the crosscoder's code,
    and each feature's search text, in blocks of features."""
    block = max(1, 200_000 // ((shape.n_snapshots + 1) * (shape.top_k + shape.n_quantile)))
    for start in range(0, shape.n_features, block):
        features = np.arange(start, min(start + block, shape.n_features))
        rows, texts = _context_block(shape, lives, features, words, rng)
        connection.executemany(f"INSERT INTO contexts VALUES ({', '.join('?' * 11)})", rows)
        connection.executemany("INSERT INTO context_search (rowid, text) VALUES (?, ?)", texts)


def _context_block(shape: FeatureDbShape, lives: dict, features: np.ndarray, words: list[str], rng):
    W, P = 2 * shape.window + 1, shape.pool
    F = len(features)
    # each feature's pool of windows; its contexts at every snapshot are drawn from it
    pool_FPW = rng.integers(0, shape.vocab_size, (F, P, W)).astype("<i4")
    fires_FR = np.concatenate([lives["f_max"][features, None] > 0, lives["fires"][features]], axis=1)  # R = -1, 0..S-1
    max_FR = np.concatenate([lives["f_max"][features, None], lives["max_act"][features]], axis=1)
    kinds = ["top"] * shape.top_k + ["quantile"] * shape.n_quantile
    ranks = list(range(shape.top_k)) + list(range(shape.n_quantile))
    quantiles = [None] * shape.top_k + [round((q + 1) / (shape.n_quantile + 1), 3) for q in range(shape.n_quantile)]
    scale = np.array([0.98**r for r in range(shape.top_k)] + [0.1 + 0.6 * q for q in quantiles[shape.top_k :]])
    f_idx, r_idx = np.nonzero(fires_FR)
    n_pairs, C = len(f_idx), len(kinds)
    n = n_pairs * C
    window_n = rng.integers(0, P, n)
    ids_nW = pool_FPW[np.repeat(f_idx, C), window_n]
    act_n = (np.repeat(max_FR[f_idx, r_idx], C) * np.tile(scale, n_pairs)).astype(np.float32)
    acts_nW = (rng.random((n, W)) < 0.3) * rng.uniform(0, 0.5, (n, W)) * act_n[:, None]
    acts_nW[:, shape.window] = act_n
    pos_n = np.where(rng.random(n) < 0.1, rng.integers(0, shape.window + 1, n), rng.integers(shape.window, 120, n))
    cut_n = np.maximum(0, shape.window - pos_n)  # a window at a sequence's start is shorter
    ids_blob, acts_blob = ids_nW.astype("<i4").tobytes(), acts_nW.astype("<f2").tobytes()
    id_blobs = [ids_blob[(k * W + c) * 4 : (k + 1) * W * 4] for k, c in enumerate(cut_n.tolist())]
    act_blobs = [acts_blob[(k * W + c) * 2 : (k + 1) * W * 2] for k, c in enumerate(cut_n.tolist())]
    feature_n = (features[np.repeat(f_idx, C)]).tolist()
    snapshot_n = (np.repeat(r_idx, C) - 1).tolist()
    act_n = acts_nW[:, shape.window].astype("<f2").astype(float)  # the focus activation as stored
    rows = zip(
        feature_n,
        snapshot_n,
        kinds * n_pairs,
        ranks * n_pairs,
        rng.integers(0, 10_000, n).tolist(),
        pos_n.tolist(),
        act_n.tolist(),
        quantiles * n_pairs,
        (pos_n - shape.window + cut_n).tolist(),
        id_blobs,
        act_blobs,
    )
    live = np.unique(f_idx)
    texts = [(int(features[f]), "\n".join("".join(words[t] for t in window) for window in pool_FPW[f])) for f in live]
    return rows, texts


def _write_causal(connection, shape: FeatureDbShape, lives: dict, rng) -> None:
    """Attribution of a random share of the live features, at every snapshot of every task."""
    S = shape.n_snapshots
    live = np.nonzero(lives["cls"] != 3)[0]
    chosen = np.sort(rng.choice(live, size=max(1, int(len(live) * shape.causal_fraction)), replace=False))
    relevance = np.zeros(shape.n_features)
    for task in shape.tasks:
        connection.execute(
            "INSERT INTO tasks VALUES (?, ?, ?, ?)", (task, "summed_logprob_diff", 64, f"sections/{task}.json")
        )
        ie_FS = rng.normal(0, 0.05, (len(chosen), S)) * rng.lognormal(0, 1, (len(chosen), 1))
        share_FS = np.abs(ie_FS) / np.abs(ie_FS).sum(axis=1, keepdims=True)
        below = rng.random(len(chosen)) < 0.2
        rows = []
        for k, f in enumerate(chosen.tolist()):
            peak = share_FS[k].max()
            label = "below_floor" if below[k] else "specific" if peak > 0.7 else "shared" if peak > 0.35 else "other"
            for s in range(S):
                ablation = None if s % 3 == 2 else float(ie_FS[k, s] * 0.8)
                rows.append((task, f, s, float(ie_FS[k, s]), float(share_FS[k, s]), label, ablation))
            relevance[f] = max(relevance[f], float(np.abs(ie_FS[k]).max()))
        connection.executemany("INSERT INTO causal VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    if shape.tasks:
        connection.executemany(
            "UPDATE features SET relevance = ? WHERE feature = ?", [(float(relevance[f]), int(f)) for f in chosen]
        )
