"""The feature database of ``crosslens dashboards``: every statistic against a brute-force
computation feature by feature on a tiny run, completeness, a stopped pass resumed to the same
bytes, the same database from a store and from streamed snapshot models, causal scores, and each
refusal in one line naming the fix."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import trust_fixtures as tf

from crosslens.activations import ActivationStore, harvest_activations
from crosslens.analysis.evolution_analysis import EvolutionAnalysis
from crosslens.analysis.probes import reads_normalized
from crosslens.checkpoints import CheckpointSuite
from crosslens.cli import main
from crosslens.core.errors import CrosslensError
from crosslens.core.paths import QUALITY_NAME, RUN_CONFIG_NAME
from crosslens.core.sealed import write_sealed
from crosslens.crosscoders.per_snapshot_sae import SnapshotCodec
from crosslens.crosscoders.saved import load_crosscoder_folder
from crosslens.dashboards import (
    DashboardsConfig,
    DashboardsError,
    DashboardsInterrupted,
    StaleDatabaseError,
    StreamSource,
    compute_dashboards,
    ge_prediction,
    open_database,
    predict_database_bytes,
    resolve_budget,
    schema,
)
from crosslens.dashboards import compute as compute_module
from crosslens.dashboards.accumulate import token_keys
from crosslens.dashboards.config import format_size
from crosslens.dashboards.record import RECORD_FORMAT, RECORD_KEY
from crosslens.training.runfolder import seal_run

CONFIG = dict(top_k=4, n_quantile=3, window=3, reservoir=6, batch_size=48, n_bins=12, n_logits=5)
"""Small enough that the first batch floods the kept contexts and later ones merge a few."""
ARCHITECTURES = {"jumprelu_crosscoder": {}, "crosscoder": {}, "topk_crosscoder": {"k": 4}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-snapshot suite, its store, and a 40-step run of each architecture (a few seconds)."""
    root = tmp_path_factory.mktemp("dashboards")
    tf.write_suite(root / "suite")
    tf.harvest(root / "suite", root / "store")
    for arch, extra in ARCHITECTURES.items():
        tf.train(root / "store", root / f"run-{arch}", architecture=arch, **extra)
    return root


def fresh_run(tiny: Path, tmp_path: Path, arch: str = "jumprelu_crosscoder") -> Path:
    """A copy of a trained run (the same bytes, so the same seal), to compute into."""
    return tf.copy_tree(tiny / f"run-{arch}", tmp_path / f"run-{arch}")


def compute(run: Path, **overrides):
    return compute_dashboards(run, config=DashboardsConfig(**{**CONFIG, **overrides}), device="cpu", progress=False)


def rows(db: sqlite3.Connection, sql: str, *args) -> list[tuple]:
    return db.execute(sql, args).fetchall()


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message, message
    return message


# ---------------------------------------------------------------- the brute force
def reference_codes(cc, store: ActivationStore) -> list[np.ndarray]:
    """Every reading's code ``[tokens, F]`` in store order: the crosscoder's own, then each
    snapshot's per-snapshot code (SnapshotCodec.encode_single), each on its own path."""
    hook = store.hooks[0]
    with torch.no_grad():
        own = cc.encode(store.read(hook, slice(None), normalize=reads_normalized(cc)))
        raw = store.read(hook, slice(None), normalize=False)
        per = [SnapshotCodec(cc, s).encode_single(raw[:, s]) for s in range(cc.cfg.n_snapshots)]
    return [c.float().numpy() for c in [own, *per]]


def window_reference(code_N: np.ndarray, where: dict, seq: int, first: int, last: int) -> np.ndarray:
    return np.array([code_N[where[(seq, p)]] if (seq, p) in where else 0.0 for p in range(first, last + 1)])


def check_feature(db, f: int, j: int, code_N: np.ndarray, store, row_ids: np.ndarray, where: dict, edges) -> None:
    """One feature at one reading, computed alone from its column of the code."""
    snapshot, K, n = j - 1, CONFIG["top_k"], len(code_N)
    firing = np.nonzero(code_N > 0)[0]
    if j == 0:
        density, mean, peak = rows(
            db, "SELECT density, mean_activation, max_activation FROM features WHERE feature = ?", f
        )[0]
    else:
        density, mean, peak, hist = rows(
            db,
            "SELECT density, mean_activation, max_activation, histogram FROM feature_snapshots "
            "WHERE feature = ? AND snapshot = ?",
            f,
            snapshot,
        )[0]
        bins = np.searchsorted(np.asarray(edges[1:-1]), code_N[firing].astype(np.float64), side="right")
        assert np.frombuffer(hist, "<u4").tolist() == np.bincount(bins, minlength=len(edges) - 1).tolist()
    assert round(density * n) == len(firing)
    assert peak == pytest.approx(float(code_N.max(initial=0.0)), rel=1e-5)
    assert (mean is None) == (len(firing) == 0)
    if len(firing):
        assert mean == pytest.approx(float(code_N[firing].astype(np.float64).mean()), rel=1e-4)
    sequences = store.sequences.numpy()
    seq_len = sequences.shape[1]
    contexts = rows(
        db,
        "SELECT kind, rank, seq, pos, activation, quantile, first_pos, token_ids, activations FROM contexts "
        "WHERE feature = ? AND snapshot = ? ORDER BY kind DESC, rank",
        f,
        snapshot,
    )
    top = [c for c in contexts if c[0] == "top"]
    best = firing[np.lexsort((row_ids[firing], -code_N[firing]))][:K]  # ties: the earlier token
    assert [(c[2], c[3]) for c in top] == [divmod(int(row_ids[i]), seq_len) for i in best]
    assert [c[4] for c in top] == pytest.approx(code_N[best].tolist(), rel=1e-5)
    for _kind, _rank, seq, pos, _act, _quantile, first, ids, acts in contexts:
        last = first + len(np.frombuffer(ids, "<i4")) - 1
        assert first == max(0, pos - CONFIG["window"]) and last == min(seq_len - 1, pos + CONFIG["window"])
        assert np.frombuffer(ids, "<i4").tolist() == sequences[seq, first : last + 1].tolist()
        expected = window_reference(code_N, where, seq, first, last)
        assert np.frombuffer(acts, "<f2").astype(np.float64) == pytest.approx(expected, rel=2e-3, abs=1e-3)
    # the quantile contexts: the sample is each firing token's key, the largest `reservoir` kept
    keys = token_keys(torch.from_numpy(row_ids[firing]), j, 0).numpy()
    sample = firing[np.lexsort((row_ids[firing], -keys))][: CONFIG["reservoir"]]
    sample = sample[np.argsort(code_N[sample], kind="stable")]
    m, q = len(sample), CONFIG["n_quantile"]
    picks = sorted({int(np.rint((k + 0.5) / q * (m - 1))) for k in range(q)}, reverse=True) if m else []
    quantiles = [c for c in contexts if c[0] == "quantile"]
    assert [(c[2], c[3]) for c in quantiles] == [divmod(int(row_ids[sample[i]]), seq_len) for i in picks]
    assert [c[5] for c in quantiles] == pytest.approx([round((i + 0.5) / m, 4) for i in picks])


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_statistic_equals_the_feature_by_feature_computation(tiny, tmp_path, arch):
    run = fresh_run(tiny, tmp_path, arch)
    path = compute(run)
    db = open_database(run)
    cc = load_crosscoder_folder(run / "final").eval()
    store = ActivationStore.open(tiny / "store")
    codes = reference_codes(cc, store)
    positions = store.positions.long().numpy()
    seq_len = store.sequences.shape[1]
    row_ids = positions[:, 0] * seq_len + positions[:, 1]
    where = {(int(s), int(p)): i for i, (s, p) in enumerate(positions)}
    edges = json.loads(rows(db, "SELECT value FROM meta WHERE key = 'histogram_edges'")[0][0])
    F, S = cc.cfg.d_sae, cc.cfg.n_snapshots
    for j, code_NF in enumerate(codes):
        for f in range(F):
            check_feature(db, f, j, code_NF[:, f], store, row_ids, where, edges)
    # decoder norms, class and lifetime: the analysis of `crosslens analyze`, with the crosscoder's firing rate
    analysis = EvolutionAnalysis.from_crosscoder(cc, frequency=torch.from_numpy((codes[0] > 0).mean(0)).float())
    table = rows(
        db,
        "SELECT feature, class, emergence_step, peak_step, fade_step, dip_step, recovery_step FROM features ORDER BY feature",
    )
    assert table == [
        tuple(
            r[k] for k in ("feature", "class", "emergence_step", "peak_step", "fade_step", "dip_step", "recovery_step")
        )
        for r in analysis.feature_table()
    ]
    norms = np.array(rows(db, "SELECT decoder_norm, relative_norm FROM feature_snapshots ORDER BY feature, snapshot"))
    assert norms[:, 0] == pytest.approx(analysis.norms.flatten().double().numpy(), rel=1e-6)
    assert norms[:, 1] == pytest.approx(analysis.normalized.flatten().double().numpy(), rel=1e-6)
    # logit effects: the raw-scale decoder direction, centred (the folded LayerNorm), through W_U
    suite = CheckpointSuite.local(tiny / "suite")
    factors = torch.tensor(cc.cfg.metadata.activation_norm_factors)
    for s in range(S):
        model = suite.load(s)
        assert type(model.ln_final).__name__ == "LayerNormPre"
        d_FD = cc.W_dec[:, s].detach() / factors[s]
        logits_FV = (d_FD - d_FD.mean(-1, keepdim=True)) @ model.W_U.detach()
        got = rows(
            db,
            "SELECT logit_top_ids, logit_top_values, logit_bottom_ids, logit_bottom_values FROM feature_snapshots "
            "WHERE snapshot = ? ORDER BY feature",
            s,
        )
        top, bottom = (
            logits_FV.topk(CONFIG["n_logits"], dim=1),
            logits_FV.topk(CONFIG["n_logits"], dim=1, largest=False),
        )
        assert [np.frombuffer(g[0], "<i4").tolist() for g in got] == top.indices.tolist()
        assert np.stack([np.frombuffer(g[1], "<f4") for g in got]) == pytest.approx(
            top.values.numpy(), rel=1e-4, abs=1e-6
        )
        assert [np.frombuffer(g[2], "<i4").tolist() for g in got] == bottom.indices.tolist()
        assert np.stack([np.frombuffer(g[3], "<f4") for g in got]) == pytest.approx(
            bottom.values.numpy(), rel=1e-4, abs=1e-6
        )
    assert path == run / schema.DATABASE_NAME


def test_every_feature_and_snapshot_has_its_rows(tiny, tmp_path):
    run = fresh_run(tiny, tmp_path)
    compute(run)
    db = open_database(run)
    F, S = 32, 3
    assert rows(db, "SELECT count(*) FROM features")[0][0] == F
    pairs = set(rows(db, "SELECT feature, snapshot FROM feature_snapshots"))
    assert pairs == {(f, s) for f in range(F) for s in range(S)}
    assert [r[0] for r in rows(db, "SELECT snapshot FROM snapshots ORDER BY snapshot")] == list(range(S))
    assert rows(db, "SELECT revision, step FROM snapshots ORDER BY snapshot") == [
        ("step0", 0),
        ("step10", 10),
        ("step20", 20),
    ]
    # a feature that fires at a reading has its top contexts there, and is searchable by them
    fired = set(rows(db, "SELECT feature, snapshot FROM feature_snapshots WHERE density > 0"))
    fired |= {(f, -1) for (f,) in rows(db, "SELECT feature FROM features WHERE density > 0")}
    assert set(rows(db, "SELECT DISTINCT feature, snapshot FROM contexts WHERE kind = 'top'")) == fired
    searchable = {f for (f,) in rows(db, "SELECT rowid FROM context_search")}
    assert searchable == {f for f, _ in fired}
    vocabulary = dict(rows(db, "SELECT token_id, text FROM vocabulary"))
    feature, ids = rows(
        db, "SELECT feature, token_ids FROM contexts WHERE kind = 'top' ORDER BY feature, snapshot LIMIT 1"
    )[0]
    text = "".join(vocabulary[t] for t in np.frombuffer(ids, "<i4").tolist())
    assert (feature,) in rows(db, "SELECT rowid FROM context_search WHERE text LIKE ?", f"%{text[-12:]}%")
    meta = {key: json.loads(value) for key, value in rows(db, "SELECT key, value FROM meta")}
    assert set(meta) >= set(schema.META_KEYS)
    assert meta["n_tokens"] == 360 and meta["tokens"]["seq_len"] == 16
    assert {k: meta["budget"][k] for k in ("top_k", "n_quantile", "window", "n_logits")} == {
        k: CONFIG[k] for k in ("top_k", "n_quantile", "window", "n_logits")
    }
    with pytest.raises(sqlite3.OperationalError):
        db.execute("DELETE FROM features")  # read-only


@contextlib.contextmanager
def stopping_at(monkeypatch: pytest.MonkeyPatch, n: int, how: str = "raise") -> Iterator[None]:
    """The pass's ``n``-th batch update stopped: by a signal (Ctrl-C: the pass stops after this
    batch, which is kept) or raised (a second Ctrl-C: it stops here, this batch lost)."""
    real = compute_module.apply_updates
    calls = {"n": 0}

    def apply(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(compute_module, "apply_updates", apply)
    try:
        yield
    finally:
        monkeypatch.setattr(compute_module, "apply_updates", real)


def test_a_stopped_pass_resumes_to_the_same_bytes(tiny, tmp_path, monkeypatch, capsys):
    whole = fresh_run(tiny, tmp_path / "whole")
    expected = tf.sha256(compute(whole))
    run = fresh_run(tiny, tmp_path / "stopped")
    for how, at in (("signal", 2), ("raise", 5)):
        with stopping_at(monkeypatch, at, how), pytest.raises(DashboardsInterrupted) as stopped:
            compute(run)
        assert "run the same `crosslens dashboards` command again" in one_line(stopped.value)
        assert not (run / schema.DATABASE_NAME).exists() and (run / "dashboards.partial").is_dir()
    assert tf.sha256(compute(run)) == expected
    assert not (run / "dashboards.partial").exists()
    assert tf.sha256(compute(run, overwrite=True)) == expected  # the same inputs, the same bytes

    # started over with --overwrite beside the database, and stopped: the command without it goes on
    with stopping_at(monkeypatch, 3, "signal"), pytest.raises(DashboardsInterrupted) as stopped:
        compute(run, overwrite=True)
    said = one_line(stopped.value)
    assert "run the same `crosslens dashboards` command again without --overwrite to continue it" in said
    assert (run / schema.DATABASE_NAME).exists() and (run / "dashboards.partial").is_dir()
    capsys.readouterr()
    assert tf.sha256(compute(run)) == expected and "continuing the saved pass at" in capsys.readouterr().out
    assert not (run / "dashboards.partial").exists()


def test_a_streamed_pass_equals_the_store_s(tiny, tmp_path):
    run = fresh_run(tiny, tmp_path)
    compute(run)
    from_store = sqlite3.connect(run / schema.DATABASE_NAME)
    streamed = fresh_run(tiny, tmp_path / "streamed")
    source = StreamSource(CheckpointSuite.local(tiny / "suite"), tf.token_table(), spec={"kind": "test"})
    compute_dashboards(streamed, stream=source, config=DashboardsConfig(**CONFIG), device="cpu", progress=False)
    db = open_database(streamed)
    for table in ("features", "feature_snapshots", "contexts", "vocabulary", "snapshots", "context_search"):
        assert rows(db, f"SELECT * FROM {table}") == rows(from_store, f"SELECT * FROM {table}"), table
    tokens = json.loads(rows(db, "SELECT value FROM meta WHERE key = 'tokens'")[0][0])
    assert tokens["stream"]["kind"] == "test" and tokens["seq_len"] == 16


def test_n_tokens_caps_a_store_from_the_command_line_as_from_python(tiny, tmp_path, capsys):
    """`dashboards RUN --n-tokens N` with the run's store reads its first whole sequences up to N
    tokens, as DashboardsConfig(n_tokens=N) does: the same database bytes."""
    run = fresh_run(tiny, tmp_path / "cli")
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in CONFIG.items()]
    assert main(["dashboards", str(run), "--n-tokens", "100", *flags, "--device", "cpu"]) == 0
    capsys.readouterr()
    meta = dict(rows(open_database(run), "SELECT key, value FROM meta"))
    assert json.loads(meta["n_tokens"]) == 90  # six whole sequences of the store's 15 tokens; 360 without the cap
    assert tf.sha256(run / schema.DATABASE_NAME) == tf.sha256(compute(fresh_run(tiny, tmp_path / "py"), n_tokens=100))


def run_identity(run: Path) -> dict:
    """What an IE table of the run's crosscoder records it was computed with (task aside)."""
    from crosslens.causal.ie_table import crosscoder_identity

    return crosscoder_identity(load_crosscoder_folder(run / "final", dtype="float32"))


def write_attribution(folder: Path, d_sae: int = 32, identity: dict | None = None) -> dict:
    """An IE table of task `toy` over the tiny run's snapshots, with the stage's files beside it;
    ``identity``: the crosscoder and task it records (:func:`run_identity`, and a task's sha256)."""
    from crosslens.causal.ie_table import IETable

    generator = torch.Generator().manual_seed(1)
    ie = torch.randn(d_sae, 3, generator=generator) * (torch.rand(d_sae, 1, generator=generator) < 0.5)
    table = IETable(
        "toy",
        [0, 1, 2],
        ie,
        torch.zeros(3),
        torch.zeros(3),
        torch.zeros(3),
        ["step0", "step10", "step20"],
        config={"metric": "logit_diff", "n_examples": 8, "task_sha256": "0" * 64, **(identity or {})},
    )
    folder.mkdir(parents=True)
    table.save(folder / "ie_table.json")
    selected = [int(f) for f in torch.nonzero(ie.abs().amax(1) > 1).flatten()]
    classes = [["specific", "other", "shared"] for _ in selected]
    (folder / "relie.json").write_text(json.dumps({"features": selected, "classes": classes}))
    curves = [
        {"snapshot": s, "k": k, "selection": sel, "keep_only": False, "metric": 1.0 + k * (s + 1)}
        for s in range(3)
        for k, sel in ((0, "none"), (1, "top"))
    ]
    (folder / "ablation_curves.json").write_text(json.dumps(curves))
    (folder / "summary.json").write_text(json.dumps({"metric": "summed_logprob_diff", "n_examples": 12}))
    return {"ie": ie, "selected": selected}


def test_causal_scores_come_from_the_attribution_files(tiny, tmp_path):
    run = fresh_run(tiny, tmp_path)
    made = write_attribution(run / "attribution_causal", identity=run_identity(run))
    compute(run)
    db = open_database(run)
    ie = made["ie"]
    assert rows(db, "SELECT * FROM tasks") == [("toy", "summed_logprob_diff", 12, "attribution_causal/ie_table.json")]
    causal = rows(
        db, "SELECT feature, snapshot, ie, relie, relie_class, ablation FROM causal ORDER BY feature, snapshot"
    )
    live = [int(f) for f in torch.nonzero(ie.abs().amax(1) > 0).flatten()]
    assert sorted({c[0] for c in causal}) == live
    top = {s: int(torch.sort(ie[:, s].abs(), descending=True, stable=True).indices[0]) for s in range(3)}
    for feature, snapshot, value, relie, label, ablation in causal:
        assert value == pytest.approx(float(ie[feature, snapshot]))
        assert relie == pytest.approx(float(ie[feature, snapshot].abs() / ie[feature].abs().sum()))
        assert label == (["specific", "other", "shared"][snapshot] if feature in made["selected"] else None)
        assert ablation == (pytest.approx(float(snapshot + 1)) if top[snapshot] == feature else None)
    relevance = dict(rows(db, "SELECT feature, relevance FROM features"))
    assert relevance == {f: pytest.approx(float(ie[f].abs().max())) for f in range(32)}


def test_a_pass_stopped_before_attribute_finishes_with_the_ie_tables_found_then(tiny, tmp_path, monkeypatch):
    """The README's order: dashboards stopped, `crosslens attribute` writes an IE table into the run,
    the same dashboards command again. The tables are read as the database is written, not by the
    pass, so the saved pass goes on and its database holds the table, to the bytes of one computed
    with the table there from the start; a table gone since the stop is left out the same way."""
    whole = fresh_run(tiny, tmp_path / "whole")
    write_attribution(whole / "attribution_causal", identity=run_identity(whole))
    expected = tf.sha256(compute(whole))
    run = fresh_run(tiny, tmp_path / "stopped")
    with stopping_at(monkeypatch, 3), pytest.raises(DashboardsInterrupted):
        compute(run)
    write_attribution(run / "attribution_causal", identity=run_identity(run))
    assert tf.sha256(compute(run)) == expected
    assert not (run / "dashboards.partial").exists()
    record = json.loads((run / schema.RECORD_NAME).read_text())
    assert set(record["partners"]["attribution"]) == {
        f"attribution_causal/{name}" for name in ("ie_table.json", "relie.json", "ablation_curves.json", "summary.json")
    }
    assert rows(open_database(run), "SELECT task, n_examples FROM tasks") == [("toy", 12)]

    plain = tf.sha256(compute(fresh_run(tiny, tmp_path / "plain")))
    with stopping_at(monkeypatch, 3), pytest.raises(DashboardsInterrupted):
        compute(run, overwrite=True)
    shutil.rmtree(run / "attribution_causal")
    assert tf.sha256(compute(run)) == plain
    assert json.loads((run / schema.RECORD_NAME).read_text())["partners"]["attribution"] == {}
    assert rows(open_database(run), "SELECT * FROM tasks") == []


def test_the_relie_labels_the_database_declares_are_the_causal_stage_s():
    """The browser refuses a ``relie_class`` outside the column's labels, which it reads without torch
    from the schema: they are the stage's classes and its two labels for what it does not class."""
    from crosslens.causal.behaviour import NO_BEHAVIOUR
    from crosslens.causal.relative_ie import BELOW_FLOOR, RELIE_CLASSES
    from crosslens.dashboards.schema import RELIE_LABELS

    assert RELIE_LABELS == (*RELIE_CLASSES, BELOW_FLOOR, NO_BEHAVIOUR)


# ---------------------------------------------------------------- refusals
def test_bad_runs_stores_and_attributions_are_refused_in_one_line(tiny, tmp_path):
    run = fresh_run(tiny, tmp_path)
    unfinished = tf.copy_tree(run, tmp_path / "unfinished")
    shutil.rmtree(unfinished / "final")
    with pytest.raises(DashboardsError) as refused:
        compute(unfinished)
    assert "no final crosscoder" in one_line(refused.value) and "crosslens train --resume" in str(refused.value)
    suite = CheckpointSuite.local(tiny / "suite")
    other_suite = tf.write_suite(tmp_path / "other-suite", seeds=(5, 6, 7))
    stores = {
        "snapshots": lambda out: harvest_activations(
            suite.select(steps=[0, 10]), tf.HOOK, tf.token_table(), out, progress=False
        ),
        "hook": lambda out: tf.harvest(tiny / "suite", out, hooks=tf.OTHER_HOOK),
        "weights": lambda out: tf.harvest(other_suite, out),
    }
    for what, make in stores.items():
        make(tmp_path / what)
        with pytest.raises(CrosslensError) as refused:
            compute_dashboards(
                run, store=tmp_path / what, config=DashboardsConfig(**CONFIG), device="cpu", progress=False
            )
        message = one_line(refused.value)
        assert (
            "pass a store" in message
            and {"snapshots": "snapshots [", "hook": "--hook", "weights": "other weights"}[what] in message
        )
    moved = tf.copy_tree(tiny / "store", tmp_path / "moved-store")
    values = json.loads((run / "run.json").read_text())
    shutil.rmtree(tiny / "store")
    try:
        with pytest.raises(DashboardsError) as refused:
            compute(run)
        assert "names no store" in one_line(refused.value) and "--store" in str(refused.value)
    finally:
        tf.copy_tree(moved, Path(values["store_path"]))
    write_attribution(tmp_path / "wide", d_sae=7)
    with pytest.raises(DashboardsError) as refused:
        compute(run, attribution=[str(tmp_path / "wide")])
    assert "attributes another crosscoder" in one_line(refused.value)
    with pytest.raises(DashboardsError) as refused:  # one path, as the flag takes it: it was read letter by letter
        compute(run, attribution=str(tmp_path / "wide"))
    assert "attributes another crosscoder" in one_line(refused.value)
    # a table of another crosscoder's weights at the run's width and snapshots, or one that records none
    identity = run_identity(run)
    for what, recorded in {"other": {**identity, "crosscoder_sha256": "f" * 64}, "unverified": None}.items():
        write_attribution(tmp_path / what, identity=recorded)
        with pytest.raises(DashboardsError) as refused:
            compute(run, attribution=[str(tmp_path / what)])
        problem = {
            "other": "it was computed with another crosscoder (weights sha256 ffffffffffff..., this one's ",
            "unverified": "it records no crosscoder or task it was computed with",
        }[what]
        assert one_line(refused.value).startswith(
            f"{tmp_path / what / 'ie_table.json'} cannot be read as an attribution of this run's crosscoder: {problem}"
        )
        assert one_line(refused.value).endswith(f"pass the IE table `crosslens attribute --crosscoder {run}` writes")
    with pytest.raises(DashboardsError, match=r"^stream is str; pass a StreamSource"):
        compute_dashboards(run, stream=str(tiny / "suite"), config=DashboardsConfig(**CONFIG), device="cpu")
    with pytest.raises(DashboardsError, match=r"^top_k is a whole number, got 'ten'$"):
        DashboardsConfig(top_k="ten")
    assert not (run / schema.DATABASE_NAME).exists() and not (run / "dashboards.partial").exists()


def test_a_damaged_or_foreign_database_is_refused_and_kept(tiny, tmp_path):
    run = fresh_run(tiny, tmp_path)
    database = compute(run)
    good = database.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    database.write_bytes(bytes(damaged))
    with pytest.raises(DashboardsError) as refused:
        open_database(run)
    assert "damaged or edited" in one_line(refused.value) and "--overwrite" in str(refused.value)
    with pytest.raises(DashboardsError) as refused:
        compute(run)
    assert "--overwrite" in one_line(refused.value)
    assert database.read_bytes() == bytes(damaged)  # nothing written over
    assert compute(run, overwrite=True).read_bytes() == good
    # a foreign SQLite file where the database was: refused by the record's hash, and by its layout
    record = (run / schema.RECORD_NAME).read_text()
    database.unlink()
    foreign = sqlite3.connect(database)
    foreign.execute("CREATE TABLE notes (x)")
    foreign.commit()
    foreign.close()
    with pytest.raises(DashboardsError) as refused:
        open_database(run)
    assert "--overwrite" in one_line(refused.value)
    with pytest.raises(DashboardsError) as refused:
        open_database(run, verify="none")
    assert "not a crosslens feature database" in one_line(refused.value)
    (run / schema.RECORD_NAME).unlink()
    with pytest.raises(DashboardsError) as refused:
        compute(run)
    assert "not written by a finished `crosslens dashboards`" in one_line(refused.value)
    with pytest.raises(DashboardsError) as refused:
        open_database(run)
    assert "no sealed record" in one_line(refused.value)
    assert rows(sqlite3.connect(database), "SELECT name FROM sqlite_master") == [("notes",)]
    (run / schema.RECORD_NAME).write_text(record.replace('"n_tokens": 360', '"n_tokens": 361'))
    with pytest.raises(DashboardsError) as refused:
        open_database(run)
    assert "damaged" in one_line(refused.value)


def test_a_database_outlives_a_new_quality_table_not_a_new_training(tiny, tmp_path):
    run = fresh_run(tiny, tmp_path)
    database = compute(run)
    good = database.read_bytes()
    # the quality table measured again (train --resume --eval-store, the demo) reseals the same crosscoder
    (run / QUALITY_NAME).write_text(json.dumps({"rows": [], "spliced_loss": None}))
    seal_run(run)
    open_database(run).close()
    assert compute(run) == database and database.read_bytes() == good
    # another run sealed into the folder: a database of the earlier one
    config = json.loads((run / RUN_CONFIG_NAME).read_text())
    (run / RUN_CONFIG_NAME).write_text(json.dumps({**config, "seed": config.get("seed", 0) + 1}))
    seal_run(run)
    with pytest.raises(DashboardsError) as refused:
        open_database(run)
    assert "computed for an earlier run" in one_line(refused.value) and "--overwrite" in str(refused.value)
    with pytest.raises(StaleDatabaseError) as refused:
        compute(run)
    assert "computed for an earlier run" in refused.value.problem and "--overwrite" not in refused.value.problem
    assert database.read_bytes() == good


def test_a_record_of_an_earlier_crosslens_is_refused_naming_the_rebuild(tiny, tmp_path):
    run = fresh_run(tiny, tmp_path)
    compute(run)
    path = run / schema.RECORD_NAME
    record = json.loads(path.read_text())
    write_sealed(path, {**record, "format": "crosslens.dashboards.record/1"}, RECORD_KEY)
    with pytest.raises(DashboardsError) as refused:
        open_database(run)
    assert "written by an earlier crosslens" in one_line(refused.value) and "--overwrite" in str(refused.value)
    with pytest.raises(StaleDatabaseError) as refused:
        compute(run)
    assert "written by an earlier crosslens" in refused.value.problem
    # a record of an earlier layout of the database: replaced, not kept as current
    write_sealed(path, {**record, "layout": "crosslens.dashboards/3"}, RECORD_KEY)
    with pytest.raises(StaleDatabaseError) as refused:
        compute(run)
    assert "written by an earlier crosslens (crosslens.dashboards/3)" in refused.value.problem
    again = json.loads(compute(run, overwrite=True).with_name(schema.RECORD_NAME).read_text())
    assert (again["format"], again["layout"]) == (RECORD_FORMAT, schema.FORMAT)


def test_other_inputs_and_a_damaged_saved_pass_are_refused(tiny, tmp_path, monkeypatch):
    run = fresh_run(tiny, tmp_path)
    with stopping_at(monkeypatch, 3), pytest.raises(DashboardsInterrupted):
        compute(run)
    with pytest.raises(DashboardsError) as refused:
        compute(run, top_k=5)
    assert "other inputs (settings.top_k differ)" in one_line(refused.value) and "--overwrite" in str(refused.value)
    state = next((run / "dashboards.partial").glob("state_*.pt"))
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(DashboardsError) as refused:
        compute(run)
    assert "damaged unfinished pass" in one_line(refused.value) and state.exists()
    database = compute(run, overwrite=True)
    with pytest.raises(DashboardsError) as refused:
        compute(run, window=2)
    assert "other inputs (settings.window differ)" in one_line(refused.value)
    stamp = database.stat().st_mtime_ns
    compute(run)  # the same inputs: up to date, left as it is
    assert database.stat().st_mtime_ns == stamp
    before = database.read_bytes()
    compute(run, overwrite=True)  # asked for: computed again, to the same bytes
    assert database.stat().st_mtime_ns != stamp and database.read_bytes() == before


def test_default_budget_keeps_ge_et_al_s_database_under_5_gb():
    budget, predicted = ge_prediction()
    assert predicted < 5e9
    assert budget.top_k >= 8 and budget.window >= 6
    small = DashboardsConfig()
    from crosslens.dashboards import resolve_budget

    assert resolve_budget(small, 1024, 12).top_k == 20  # a small crosscoder keeps the most


def test_the_predicted_size_bounds_a_small_database(tiny, tmp_path, capsys):
    """A small crosscoder's database, mostly the pages of a database with no rows, outgrew the size
    predicted as its upper bound (0.33 MB against at most 0.27 MB on notebook 05's runs)."""
    assert (
        schema.empty_database_bytes() == 36 * schema.PAGE_SIZE
    )  # the schema's page, 35 B-trees (FTS5's own tables among them)
    run = fresh_run(tiny, tmp_path)
    database = compute(run)
    db = open_database(run)
    vocab_size = rows(db, "SELECT count(*) FROM vocabulary")[0][0]
    budget = resolve_budget(DashboardsConfig(**CONFIG), 32, 3, vocab_size)
    predicted = predict_database_bytes(32, 3, budget, vocab_size=vocab_size)
    size = database.stat().st_size
    assert size <= predicted < 2 * size
    assert f"(predicted at most {format_size(predicted)})" in capsys.readouterr().out
